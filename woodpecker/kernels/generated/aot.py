"""Ahead-of-time Halide kernels: compile a definition to a shared library, load it with ctypes.

Why: a candidate can be compiled in one process and timed in another (the tuner compiles
in parallel while timing stays serialized), and a saved plan loads without any JIT.
Tuning candidates link against one shared Halide runtime per target, loaded once per
process with RTLD_GLOBAL, so they share one thread pool (the runtime honours
HL_NUM_THREADS); a plan's library carries its own copy of the runtime.

A kernel library directory holds `kernels.so`, `kernels.npz` (packed weights, no pickle)
and `kernels.json` (target, entry points, argument counts).
"""

from __future__ import annotations

import _ctypes
import ctypes
import fcntl
import importlib.metadata
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import halide as hl
import numpy as np
from tqdm import tqdm

from woodpecker.errors import WoodpeckerError
from woodpecker.kernels.generated.common import Definition, as_views, jit_target

LIBRARY, CONSTANTS, INDEX = "kernels.so", "kernels.npz", "kernels.json"
_loaded_runtimes: dict[str, ctypes.CDLL] = {}


def aot_target() -> hl.Target:
    """The JIT target without its JIT feature (same ISA, so AOT and JIT kernels agree)."""
    return jit_target().without_feature(hl.TargetFeature.JIT)


def missing_features(target: str) -> list[str]:
    """What a library compiled for `target` needs that this CPU lacks (arch, OS or ISA features)."""

    def parts(text: str) -> tuple[list[str], set[str]]:
        fields = text.split("-")
        return fields[:3], {f for f in fields[3:] if not f.startswith("tune_")}

    (want_base, want), (have_base, have) = parts(target), parts(str(aot_target()))
    base = [f"{'-'.join(want_base)} (this machine: {'-'.join(have_base)})"] if want_base != have_base else []
    return base + sorted(want - have)


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    version = importlib.metadata.version("halide")
    return base / "woodpecker" / "halide-runtime" / f"halide-{version}" / str(aot_target())


def _cached(name: str, make) -> Path:
    """Build cache_dir()/name once with `make(path)`; several compile workers may ask at once."""
    path = cache_dir() / name
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                make(Path(tmp) / name)
                os.replace(Path(tmp) / name, path)
    return path


def runtime_object() -> Path:
    """The Halide runtime (thread pool, error reporting) for this target, compiled once (about 1 s)."""
    return _cached("runtime.o", lambda path: hl.compile_standalone_runtime(str(path), aot_target()))


def load_runtime() -> None:
    """Load the shared runtime that libraries built `with_runtime=False` link against."""
    runtime = runtime_object()  # built before the library's lock is taken: _cached's lock is not re-entrant
    path = str(_cached("libhalide_runtime.so", lambda out: _link(out, [runtime])))
    if path not in _loaded_runtimes:
        _loaded_runtimes[path] = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def compile_library(
    definitions: dict[str, Definition], directory: str | Path, with_runtime: bool = False, progress: bool = False
) -> Path:
    """Compile each definition (entry point = its key) into one shared library in `directory`.

    `with_runtime` puts the Halide runtime inside (a self-contained plan); without it the
    library needs `load_runtime()` first (tuning candidates, which share one runtime).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = aot_target()
    objects, index, constants = [], {}, {}
    bar = tqdm(definitions.items(), desc="compile kernels", unit="kernel", leave=False, disable=not progress)
    for entry, definition in bar:
        obj = directory / f"{entry}.o"
        pipeline = hl.Pipeline(definition.output)
        pipeline.compile_to_object(
            str(obj), definition.arguments(), entry, target.with_feature(hl.TargetFeature.NoRuntime)
        )
        objects.append(obj)
        index[entry] = {"constants": len(definition.constants), "flatten": int(definition.flatten)}
        constants.update({f"{entry}.{i}": np.ascontiguousarray(c) for i, c in enumerate(definition.constants)})
    _link(directory / LIBRARY, objects + ([runtime_object()] if with_runtime else []))
    for obj in objects:
        obj.unlink()
    np.savez(directory / CONSTANTS, **constants)
    meta = {"target": str(target), "with_runtime": with_runtime, "kernels": index}
    (directory / INDEX).write_text(json.dumps(meta, indent=1))
    return directory


def compiler() -> str:
    return os.environ.get("CC", "cc")


def compiler_available() -> bool:
    """Linking needs a C compiler; without one, kernels are JIT-compiled where they run."""
    return shutil.which(compiler()) is not None


def _link(output: Path, objects: list[Path]) -> None:
    compiler_ = compiler()
    command = [compiler_, "-shared", "-o", str(output), *map(str, objects), "-lpthread", "-ldl", "-lm"]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise WoodpeckerError(f"ahead-of-time kernels need a C compiler to link; {compiler_!r} was not found") from None
    except subprocess.CalledProcessError as exc:
        raise WoodpeckerError(f"linking {output.name} failed: {exc.stderr.strip()[-500:]}") from None


class _Dimension(ctypes.Structure):
    _fields_ = [
        ("min", ctypes.c_int32),
        ("extent", ctypes.c_int32),
        ("stride", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
    ]


class _Type(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _Buffer(ctypes.Structure):
    """halide_buffer_t (HalideRuntime.h)."""

    _fields_ = [
        ("device", ctypes.c_uint64),
        ("device_interface", ctypes.c_void_p),
        ("host", ctypes.c_void_p),
        ("flags", ctypes.c_uint64),
        ("type", _Type),
        ("dimensions", ctypes.c_int32),
        ("dim", ctypes.POINTER(_Dimension)),
        ("padding", ctypes.c_void_p),
    ]


_TYPE_CODES = {"i": 0, "u": 1, "f": 2, "b": 1}


def _buffer(array: np.ndarray) -> _Buffer:
    """A halide_buffer_t viewing `array`, axes reversed as hl.Buffer does (innermost first)."""
    itemsize = array.itemsize
    dims = (_Dimension * array.ndim)(
        *[
            _Dimension(0, extent, stride // itemsize, 0)
            for extent, stride in zip(array.shape[::-1], array.strides[::-1])
        ]
    )
    bits = 1 if array.dtype == np.bool_ else 8 * itemsize
    buffer = _Buffer(0, None, array.ctypes.data, 0, _Type(_TYPE_CODES[array.dtype.kind], bits, 1), array.ndim, dims)
    buffer._keep = dims  # the dimension array must outlive the struct
    return buffer


class KernelLibrary:
    """A library written by `compile_library`, loaded; refuses one built for another CPU."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        meta = json.loads((directory / INDEX).read_text())
        missing = missing_features(meta["target"])
        if missing:
            raise WoodpeckerError(
                f"{directory}: kernels compiled for {meta['target']}; this CPU lacks {', '.join(missing)}. "
                "Optimize the model again on this machine."
            )
        if not meta["with_runtime"]:
            load_runtime()
        self.handle: ctypes.CDLL | None = ctypes.CDLL(str(directory / LIBRARY))
        self.entries: dict[str, dict] = meta["kernels"]
        with np.load(directory / CONSTANTS, allow_pickle=False) as data:
            self._constants = {name: data[name] for name in data.files}

    def kernel(self, entry: str) -> AotKernel:
        info = self.entries[entry]
        constants = [self._constants[f"{entry}.{i}"] for i in range(info["constants"])]
        return AotKernel(self, getattr(self.handle, entry), constants, info["flatten"])

    def close(self) -> None:
        """Unload the library; none of its kernels may be called afterwards."""
        if self.handle is not None:
            _ctypes.dlclose(self.handle._handle)
            self.handle = None


class AotKernel:
    """One entry point of a loaded KernelLibrary, with its constant buffers bound."""

    def __init__(self, library: KernelLibrary, function, constants: list[np.ndarray], flatten: int):
        self.library = library  # keeps the library loaded
        self._function = function
        self._function.restype = ctypes.c_int
        self._flatten = int(flatten)
        self._constants = constants
        self._constant_buffers = [_buffer(c) for c in constants]
        self._cache: dict[tuple, _Buffer] = {}

    def _view(self, array: np.ndarray) -> _Buffer:
        # Same address, shape and strides give an identical struct, so a cached one is always right.
        key = (array.ctypes.data, array.shape, array.strides, array.dtype.str)
        buffer = self._cache.get(key)
        if buffer is None:
            if len(self._cache) > 64:
                self._cache.clear()
            buffer = self._cache[key] = _buffer(array)
        return buffer

    def __call__(self, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> None:
        inputs, outputs = as_views(inputs, self._flatten), as_views(outputs, self._flatten)
        buffers = [*map(self._view, inputs), *self._constant_buffers, *map(self._view, outputs)]
        code = self._function(*[ctypes.byref(b) for b in buffers])
        if code != 0:
            raise WoodpeckerError(f"Halide kernel returned error code {code}")
