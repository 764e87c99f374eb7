"""Compile candidates ahead of time in parallel processes; the measuring worker then only times.

Compiling (LLVM, one core per candidate) and timing (every core) must not overlap, or the
times are wrong: a batch is first compiled in parallel, and only when every compile has
finished does the measuring worker time the candidates one by one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from woodpecker.kernels.workload import Workload
from woodpecker.measure.processes import WorkerDied, WorkerPool

ENTRY = "wpk_candidate"


@dataclass(frozen=True)
class Compiled:
    """One candidate's compile: the kernel directory, or why there is none."""

    directory: Path | None
    error: str | None
    compile_s: float


def default_processes() -> int:
    return max(1, min(4, len(os.sched_getaffinity(0))))


def _start_compile_process() -> None:
    os.environ["HL_NUM_THREADS"] = "1"  # a compile process never runs a kernel


def compile_candidate(workload: Workload, impl_name: str, config: dict, directory: str) -> Compiled:
    from woodpecker.compile.toolchain import compile_library
    from woodpecker.kernels import registry

    start = time.perf_counter()
    try:
        compile_library({ENTRY: registry.get(impl_name).define(workload, config)}, directory)
    except Exception as exc:
        return Compiled(None, f"compile: {short_error(exc)}", time.perf_counter() - start)
    return Compiled(Path(directory), None, time.perf_counter() - start)


def compile_objects(
    jobs: dict[Path, tuple[Workload, str, dict, str]], progress: bool = False, timeout_s: float = 600.0
) -> None:
    """Compile each (workload, implementation, config, function name) to the object file it is keyed by,
    in parallel processes; a file appears only once complete. A kernel that fails to compile (it did
    compile when it was measured) or a worker that dies raises an error naming the node."""
    if not jobs:
        return
    from woodpecker.errors import WoodpeckerError

    items = list(jobs.items())
    bar = tqdm(total=len(items), desc="compile kernels", unit="kernel", leave=False, disable=not progress)
    pool = WorkerPool(min(default_processes(), len(items)), "compile", _start_compile_process)
    try:
        pending = [(item, pool.submit(_compile_object, item)) for item in items]
        deadline = time.monotonic() + timeout_s
        for (_, (workload, impl_name, _, _)), job in pending:
            try:
                pool.result(job, max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise WoodpeckerError(
                    f"{workload.node.name} ({workload.op}): compiling {impl_name} did not finish in {timeout_s:.0f} s"
                ) from None
            bar.update()
    finally:
        bar.close()
        pool.terminate()


def _compile_object(item: tuple[Path, tuple[Workload, str, dict, str]]) -> None:
    from woodpecker.compile.toolchain import compile_object
    from woodpecker.errors import WoodpeckerError
    from woodpecker.kernels import registry

    path, (workload, impl_name, config, function) = item
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        try:
            compile_object(registry.get(impl_name).define(workload, config), function, Path(tmp) / path.name)
        except Exception as exc:
            raise WoodpeckerError(
                f"{workload.node.name} ({workload.op}): compiling {impl_name} failed: {short_error(exc)}"
            ) from None
        os.replace(Path(tmp) / path.name, path)


class CompilePool:
    """`processes` compile workers and a scratch directory for their libraries."""

    def __init__(self, processes: int | None = None, timeout_s: float = 120.0):
        self.processes = processes or default_processes()
        self.timeout_s = timeout_s
        self._pool: WorkerPool | None = None
        self._proven = False  # whether the current pool has finished a compile (so it can start workers)
        self._scratch: Path | None = None
        self._count = 0

    def compile(self, workload: Workload, impl_name: str, configs: list[dict]) -> list[Compiled]:
        """Compile every config in parallel and wait for all of them (at most `timeout_s` in all). A
        compile that hangs or kills its worker costs the batch's unfinished candidates one failed trial
        each and the pool is replaced; a new pool whose workers die before any compile is an error."""
        if self._pool is None:
            self._pool, self._proven = WorkerPool(self.processes, "compile", _start_compile_process), False
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="wpk-compile-"))
        pool = self._pool
        pending = []
        for config in configs:
            self._count += 1
            directory = self._scratch / f"k{self._count}"
            pending.append(pool.submit(compile_candidate, workload, impl_name, config, str(directory)))
        deadline = time.monotonic() + self.timeout_s
        results: list[Compiled] = []
        lost = None  # why the rest of the batch was lost
        for job in pending:
            if lost:
                results.append(Compiled(None, lost, 0.0))
                continue
            try:
                results.append(pool.result(job, max(0.0, deadline - time.monotonic())))
                self._proven = True
            except TimeoutError:
                lost = f"compile timeout after {self.timeout_s:.0f}s"
                results.append(Compiled(None, lost, self.timeout_s))
                self._terminate()
            except WorkerDied as exc:
                if not self._proven:
                    self._terminate()
                    raise
                lost = f"compile: {exc}"
                results.append(Compiled(None, lost, 0.0))
                self._terminate()
        return results

    def release(self, compiled: Compiled) -> None:
        """Delete a candidate's files once it has been loaded (a loaded library stays mapped)."""
        if compiled.directory is not None:
            shutil.rmtree(compiled.directory, ignore_errors=True)

    def _terminate(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


def short_error(exc: BaseException) -> str:
    """The last line of an error message, which for Halide and LLVM is the one that says what failed."""
    text = str(exc).strip().splitlines()
    line = text[-1] if text else "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return line[:300]
