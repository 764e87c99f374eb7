"""LocalRunner: owns one measuring process, restarts it after a crash or a timeout."""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

from woodpecker.errors import WoodpeckerError
from woodpecker.kernels import registry
from woodpecker.kernels.generated.aot import compiler_available
from woodpecker.kernels.workload import Workload
from woodpecker.measure.compile_pool import Compiled, CompilePool
from woodpecker.measure.processes import SpawnContext
from woodpecker.measure.result import MeasureResult
from woodpecker.measure.timing import TimingSettings
from woodpecker.measure.worker import worker_main

DEFAULT_TIMEOUT_S = 120.0
STARTUP_TIMEOUT_S = 120.0


class Runner(Protocol):
    """Builds, checks and times candidates somewhere else; failures come back as results."""

    def measure(self, workload: Workload, impl: str, config: dict[str, Any]) -> MeasureResult: ...

    def measure_batch(self, workload: Workload, impl: str, configs: list[dict[str, Any]]) -> list[MeasureResult]: ...


class LocalRunner:
    """Sends (workload, implementation, config) to a worker and waits at most `timeout_s`."""

    def __init__(
        self,
        threads: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        settings: TimingSettings | None = None,
        seed: int = 0,
        compile_processes: int | None = None,
    ):
        """`compile_processes`: 0 JIT-compiles inside the measuring worker (also the case without a
        C compiler to link with); otherwise batches of generated candidates are compiled ahead of
        time by that many processes (default: one per core, at most 4) before any of them is timed."""
        self.threads, self.timeout_s, self.seed = threads, timeout_s, seed
        self.settings = settings or TimingSettings()
        parallel = compile_processes != 0 and compiler_available()
        self._compiler = CompilePool(compile_processes, timeout_s) if parallel else None
        self._context = SpawnContext()  # no inherited thread pools or JIT state
        self._process = None
        self._conn = None
        self._sent: set[str] = set()

    def measure(
        self, workload: Workload, impl: str, config: dict[str, Any], built: Compiled | None = None
    ) -> MeasureResult:
        """Build (or load `built`), check and time one candidate in the worker."""
        key = workload.key()
        try:
            self._ensure_started()
            if key not in self._sent:
                self._call(("workload", key, workload, self.seed), self.timeout_s)
                self._sent.add(key)
            reply = self._call(("measure", key, impl, config, built), self.timeout_s)
            return reply[1]
        except TimeoutError:
            self._stop_worker()  # the next measurement starts a fresh worker
            return MeasureResult(impl, config, error=f"timeout after {self.timeout_s:.0f}s")
        except (EOFError, BrokenPipeError, ConnectionResetError):
            code = self._process.exitcode if self._process else None
            self._stop_worker()  # the next measurement starts a fresh worker
            return MeasureResult(impl, config, error=f"crashed (worker exit code {code})")

    def measure_batch(self, workload: Workload, impl: str, configs: list[dict[str, Any]]) -> list[MeasureResult]:
        """Compile the batch in parallel (generated kernels), then time one candidate at a time."""
        if self._compiler is None or len(configs) < 2 or registry.get(impl).kind != "generated":
            return [self.measure(workload, impl, config) for config in configs]
        results = []
        for config, compiled in zip(configs, self._compiler.compile(workload, impl, configs)):
            if compiled.error:
                results.append(MeasureResult(impl, config, error=compiled.error, compile_s=compiled.compile_s))
            else:
                results.append(self.measure(workload, impl, config, compiled))
            self._compiler.release(compiled)
        return results

    def _call(self, message: tuple, timeout_s: float):
        self._conn.send(message)
        if not self._conn.poll(timeout_s):
            raise TimeoutError
        return self._conn.recv()

    def _ensure_started(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        parent, child = self._context.Pipe()
        self._process = self._context.Process(
            target=worker_main, args=(child, self.threads, self.settings), daemon=True, name="wpk-measure"
        )
        self._process.start()
        child.close()
        self._conn = parent
        self._sent.clear()
        # A worker that cannot even start is the environment's fault, not a candidate's.
        try:
            ready = parent.poll(STARTUP_TIMEOUT_S) and parent.recv() == ("ready",)
        except EOFError:
            ready = False
        if not ready:
            code = self._process.exitcode
            self._stop_worker()
            raise WoodpeckerError(f"the measuring worker process failed to start (exit code {code})")

    def close(self) -> None:
        self._stop_worker()
        if self._compiler is not None:
            self._compiler.close()

    def _stop_worker(self) -> None:
        if self._process is not None and self._process.is_alive():
            with contextlib.suppress(BrokenPipeError, OSError):
                self._conn.send(("stop",))
            self._process.join(timeout=2)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        if self._conn is not None:
            self._conn.close()
        self._process = None
        self._conn = None
        self._sent.clear()

    def __enter__(self) -> LocalRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
