"""LocalRunner: owns one measuring process, restarts it after a crash or a timeout."""

from __future__ import annotations

import dataclasses
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

from woodpecker.compile.pool import Compiled, CompilePool
from woodpecker.compile.toolchain import compiler_available
from woodpecker.errors import WoodpeckerError
from woodpecker.kernels import registry
from woodpecker.kernels.workload import Workload
from woodpecker.measure.protocol import WorkerProcess
from woodpecker.measure.result import MeasureResult
from woodpecker.measure.timing import TimingSettings

DEFAULT_TIMEOUT_S = 120.0
STARTUP_TIMEOUT_S = 120.0


class Runner(Protocol):
    """Builds, checks and times candidates somewhere else; failures come back as results."""

    def measure(self, workload: Workload, impl: str, config: dict[str, Any]) -> MeasureResult: ...

    def measure_batch(self, workload: Workload, impl: str, configs: list[dict[str, Any]]) -> list[MeasureResult]: ...


class LocalRunner:
    """Sends (workload, implementation, config) to a worker process (measure/worker.py) and waits
    at most `timeout_s` for each answer."""

    def __init__(
        self,
        threads: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        settings: TimingSettings | None = None,
        seed: int = 0,
        compile_processes: int | None = None,
    ):
        """`compile_processes`: 0 JIT-compiles inside the measuring worker (also the case without a
        C compiler to link with); otherwise generated candidates are compiled ahead of time by that
        many processes (default: one per core, at most 4) before any of the batch is timed."""
        self.threads, self.timeout_s, self.seed = threads, timeout_s, seed
        self.settings = settings or TimingSettings()
        parallel = compile_processes != 0 and compiler_available()
        self._compiler = CompilePool(compile_processes, timeout_s) if parallel else None
        self._worker: WorkerProcess | None = None
        self._scratch: Path | None = None  # the worker's log and the workloads sent to it
        self._sent: set[str] = set()

    def measure(self, workload: Workload, impl: str, config: dict[str, Any]) -> MeasureResult:
        return self.measure_batch(workload, impl, [config])[0]

    def measure_batch(self, workload: Workload, impl: str, configs: list[dict[str, Any]]) -> list[MeasureResult]:
        """Compile the batch ahead of time in parallel (Halide families, whatever the batch's size: a
        candidate is timed on the native runtime its plan will use), then time one candidate at a time."""
        if self._compiler is None or not registry.capabilities(impl).compiled:
            return [self._measure(workload, impl, config) for config in configs]
        results = []
        for config, compiled in zip(configs, self._compiler.compile(workload, impl, configs)):
            if compiled.error:
                results.append(MeasureResult(impl, config, error=compiled.error, compile_s=compiled.compile_s))
            else:
                results.append(self._measure(workload, impl, config, compiled))
            self._compiler.release(compiled)
        return results

    def _measure(
        self, workload: Workload, impl: str, config: dict[str, Any], built: Compiled | None = None
    ) -> MeasureResult:
        """Build (or load `built`), check and time one candidate in the worker."""
        key = workload.key()
        self._ensure_started()
        reply: dict = {"ok": True}
        if key not in self._sent:
            path = self._scratch / "workload.pickle"
            with open(path, "wb") as f:
                pickle.dump(workload, f, protocol=pickle.HIGHEST_PROTOCOL)
            reply = self._worker.ask({"workload": str(path), "key": key, "seed": self.seed}, self.timeout_s)
            path.unlink()
            self._sent.add(key)
        if "error" not in reply:
            built_json = {"directory": str(built.directory), "compile_s": built.compile_s} if built else None
            message = {"measure": key, "impl": impl, "config": config, "built": built_json}
            reply = self._worker.ask(message, self.timeout_s)
        if "result" in reply:
            result = reply["result"]
            return MeasureResult(**(result | {"times_s": tuple(result["times_s"])}))
        self._stop_worker()  # the next measurement starts a fresh worker
        if reply.get("timed_out"):
            return MeasureResult(impl, config, error=f"timeout after {self.timeout_s:.0f}s")
        return MeasureResult(impl, config, error=f"crashed (worker exit code {reply.get('exit_code')})")

    def _ensure_started(self) -> None:
        if self._worker is not None and self._worker.process.poll() is None:
            return
        self._stop_worker()
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="wpk-measure-"))
        self._worker = WorkerProcess("woodpecker.measure.worker", self._scratch / "worker.stderr")
        self._worker.send({"threads": self.threads, "settings": dataclasses.asdict(self.settings)})
        # A worker that cannot even start is the environment's fault, not a candidate's.
        ready = self._worker.read(STARTUP_TIMEOUT_S)
        if not ready.get("ready"):
            self._stop_worker()
            raise WoodpeckerError(f"the measuring worker process failed to start ({ready.get('error')})")

    def close(self) -> None:
        self._stop_worker()
        if self._compiler is not None:
            self._compiler.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.close(timeout_s=2)
        self._worker = None
        self._sent.clear()

    def __enter__(self) -> LocalRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
