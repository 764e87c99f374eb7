"""Ahead-of-time Halide kernels: compile definitions to objects and link them into a shared library.

Why: a candidate can be compiled in one process and timed in another (the tuner compiles
in parallel while timing stays serialized), and a saved plan loads without any JIT.
Tuning candidates link against one shared Halide runtime per target, loaded once per
process with RTLD_GLOBAL, so they share one thread pool; a plan's library carries its own
copy of the runtime. Both carry Woodpecker's native runtime (runtime/native/native_runtime.c).
runtime/kernel_library.py loads what this module links.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import halide as hl
import numpy as np

from woodpecker.errors import WoodpeckerError
from woodpecker.kernels.halide.common import Definition, jit_target
from woodpecker.runtime.kernel_library import CONSTANTS, INDEX, LIBRARY, start_native

NATIVE_SOURCE = Path(__file__).resolve().parent.parent / "runtime" / "native" / "native_runtime.c"
_loaded_runtimes: dict[str, ctypes.CDLL] = {}


def aot_target() -> hl.Target:
    """The JIT target without its JIT feature (same ISA, so AOT and JIT kernels agree)."""
    return jit_target().without_feature(hl.TargetFeature.JIT)


def cache_dir() -> Path:
    import importlib.metadata  # here: 30 ms that most commands do not need

    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    version = importlib.metadata.version("halide")
    return base / "woodpecker" / "halide-runtime" / f"halide-{version}" / str(aot_target())


def cached(name: str, make) -> Path:
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
    return cached("runtime.o", lambda path: hl.compile_standalone_runtime(str(path), aot_target()))


def native_object() -> Path:
    """native_runtime.c compiled once per version of its source."""
    digest = hashlib.sha256(NATIVE_SOURCE.read_bytes()).hexdigest()[:12]
    return cached(f"native-{digest}.o", lambda path: _compile_c(NATIVE_SOURCE, path))


def runtime_objects() -> list[Path]:
    """What a self-contained kernel library links beside its kernels."""
    return [runtime_object(), native_object()]


def load_runtime() -> ctypes.CDLL:
    """Load the shared runtime that libraries built `with_runtime=False` link against, and start its pool."""
    objects = runtime_objects()  # built before the library's lock is taken: cached's lock is not re-entrant
    name = f"libhalide_runtime-{objects[1].stem}.so"
    path = str(cached(name, lambda out: _link(out, objects)))
    if path not in _loaded_runtimes:
        _loaded_runtimes[path] = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        start_native(_loaded_runtimes[path])
    return _loaded_runtimes[path]


def compile_object(definition: Definition, function: str, path: Path) -> None:
    """One pipeline as an object file whose entry point is `function` (and `function`_argv)."""
    pipeline = hl.Pipeline(definition.output)
    target = aot_target().with_feature(hl.TargetFeature.NoRuntime)
    pipeline.compile_to_object(str(path), definition.arguments(), function, target)


def compile_library(
    definitions: dict[str, Definition], directory: str | Path, with_runtime: bool = False, progress: bool = False
) -> Path:
    """Compile each definition (entry point = its key) into one shared library in `directory`.

    `with_runtime` puts the Halide and native runtimes inside (a self-contained plan); without
    them the library needs `load_runtime()` first (tuning candidates, which share one runtime).
    """
    from tqdm import tqdm

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    objects = []
    for entry, definition in tqdm(
        definitions.items(), desc="compile kernels", unit="kernel", leave=False, disable=not progress
    ):
        objects.append(directory / f"{entry}.o")
        compile_object(definition, entry, objects[-1])
    entries = {
        entry: LibraryEntry(entry, definition.constants, definition.flatten)
        for entry, definition in definitions.items()
    }
    link_library(directory, objects, entries, with_runtime)
    for obj in objects:
        obj.unlink()
    return directory


@dataclass(frozen=True)
class LibraryEntry:
    """An entry point of a kernel library: the compiled function it calls, with its constant buffers."""

    function: str
    constants: list[np.ndarray]
    flatten: int


def link_library(directory: Path, objects: list[Path], entries: dict[str, LibraryEntry], with_runtime: bool) -> None:
    """Link `objects` into `directory`/kernels.so and write the entries' constants and index beside it."""
    _link(directory / LIBRARY, list(dict.fromkeys(objects)) + (runtime_objects() if with_runtime else []))
    constants = {
        f"{name}.{i}": np.ascontiguousarray(c) for name, entry in entries.items() for i, c in enumerate(entry.constants)
    }
    np.savez(directory / CONSTANTS, **constants)
    index = {
        name: {"function": e.function, "constants": len(e.constants), "flatten": int(e.flatten)}
        for name, e in entries.items()
    }
    meta = {"target": str(aot_target()), "with_runtime": with_runtime, "kernels": index}
    (directory / INDEX).write_text(json.dumps(meta, indent=1))


def compiler() -> str:
    return os.environ.get("CC", "cc")


def compiler_available() -> bool:
    """Linking needs a C compiler; without one, kernels are JIT-compiled where they run."""
    return shutil.which(compiler()) is not None


def _link(output: Path, objects: list[Path]) -> None:
    _run_compiler(
        ["-shared", "-o", str(output), *map(str, objects), "-lpthread", "-ldl", "-lm"], f"linking {output.name}"
    )


def _compile_c(source: Path, output: Path) -> None:
    _run_compiler(["-O2", "-fPIC", "-c", str(source), "-o", str(output)], f"compiling {source.name}")


def _run_compiler(arguments: list[str], what: str) -> None:
    compiler_ = compiler()
    try:
        subprocess.run([compiler_, *arguments], check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise WoodpeckerError(f"ahead-of-time kernels need a C compiler; {compiler_!r} was not found") from None
    except subprocess.CalledProcessError as exc:
        raise WoodpeckerError(f"{what} failed: {exc.stderr.strip()[-500:]}") from None
