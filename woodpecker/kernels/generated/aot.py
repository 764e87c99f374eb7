"""Ahead-of-time Halide kernels: compile a definition to a shared library, load it with ctypes.

Why: a compiled candidate can then be built in one process and timed in another (the
tuner compiles in parallel while timing stays serialized), and nothing needs a JIT at
load time. Every kernel library is linked against one shared Halide runtime per target,
loaded once per process with RTLD_GLOBAL, so all kernels share one thread pool (the
runtime honours HL_NUM_THREADS) instead of each bringing its own.

A kernel directory holds `kernel.so`, `constants.npz` (packed weights, no pickle) and
`kernel.json` (entry point, target, argument counts).
"""

from __future__ import annotations

import _ctypes
import ctypes
import fcntl
import importlib.metadata
import json
import os
import subprocess
import tempfile
from pathlib import Path

import halide as hl
import numpy as np

from woodpecker.errors import WoodpeckerError
from woodpecker.kernels.generated.common import Definition, jit_target

ENTRY = "wpk_kernel"
_loaded_runtimes: dict[str, ctypes.CDLL] = {}


def aot_target() -> hl.Target:
    """The JIT target without its JIT feature (same ISA, so AOT and JIT kernels agree)."""
    return jit_target().without_feature(hl.TargetFeature.JIT)


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "woodpecker" / "halide-runtime" / f"halide-{importlib.metadata.version('halide')}"


def runtime_library(target: hl.Target | None = None) -> Path:
    """The shared Halide runtime for `target`, built once (about 1 s) and cached on disk."""
    target = target or aot_target()
    name = str(target).replace(",", "_")
    path = cache_dir() / name / "libhalide_runtime.so"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".lock", "w") as lock:  # several compile workers may ask at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                obj = Path(tmp) / "runtime.o"
                hl.compile_standalone_runtime(str(obj), target)
                _link(Path(tmp) / path.name, [obj])
                os.replace(Path(tmp) / path.name, path)
    return path


def load_runtime(target: hl.Target | None = None) -> None:
    path = str(runtime_library(target))
    if path not in _loaded_runtimes:
        _loaded_runtimes[path] = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def compile_library(definition: Definition, directory: str | Path) -> Path:
    """Compile `definition` into `directory` (created), without a runtime of its own."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = aot_target()
    runtime_library(target)  # built before any kernel needs it
    obj = directory / "kernel.o"
    pipeline = hl.Pipeline(definition.output)
    pipeline.compile_to_object(str(obj), definition.arguments(), ENTRY, target.with_feature(hl.TargetFeature.NoRuntime))
    _link(directory / "kernel.so", [obj])
    obj.unlink()
    np.savez(directory / "constants.npz", *[np.ascontiguousarray(c) for c in definition.constants])
    inputs = len(definition.params) - len(definition.constants)
    meta = {"entry": ENTRY, "target": str(target), "inputs": inputs, "flatten": definition.flatten}
    (directory / "kernel.json").write_text(json.dumps(meta))
    return directory


def _link(output: Path, objects: list[Path]) -> None:
    compiler = os.environ.get("CC", "cc")
    command = [compiler, "-shared", "-o", str(output), *map(str, objects), "-lpthread", "-ldl", "-lm"]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise WoodpeckerError(f"ahead-of-time kernels need a C compiler to link; {compiler!r} was not found") from None
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


class AotKernel:
    """A kernel library loaded from a directory written by `compile_library`."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        meta = json.loads((directory / "kernel.json").read_text())
        if meta["target"] != str(aot_target()):
            raise WoodpeckerError(f"{directory}: kernel compiled for {meta['target']}, this machine is {aot_target()}")
        load_runtime()
        self._library = ctypes.CDLL(str(directory / "kernel.so"))
        self._entry = getattr(self._library, meta["entry"])
        self._entry.restype = ctypes.c_int
        self._flatten = meta["flatten"]
        with np.load(directory / "constants.npz", allow_pickle=False) as data:
            self._constants = [data[f"arr_{i}"] for i in range(len(data.files))]
        self._constant_buffers = [_buffer(c) for c in self._constants]
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

    def close(self) -> None:
        """Unload the library; the kernel must not be called afterwards."""
        if self._library is not None:
            _ctypes.dlclose(self._library._handle)
            self._library = self._entry = None

    def __call__(self, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> None:
        if self._flatten:
            inputs, outputs = [a.reshape(-1) for a in inputs], [o.reshape(-1) for o in outputs]
        buffers = [*map(self._view, inputs), *self._constant_buffers, *map(self._view, outputs)]
        code = self._entry(*[ctypes.byref(b) for b in buffers])
        if code != 0:
            raise WoodpeckerError(f"Halide kernel returned error code {code}")
