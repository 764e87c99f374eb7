"""RayRunner: the same measurements as LocalRunner, spread over a Ray cluster of identical machines.

Each trial is a Ray task that needs the custom resource `wpk_measure`, of which every node
offers exactly one (`ray start ... --resources '{"wpk_measure": 1}'`; `--ray local` starts a
one-node cluster with it), so no machine ever times two candidates at once. A batch is
submitted at once and spreads over the nodes; results and failures come back as
MeasureResult like the local runner's, and the driver writes them to the same records.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator
from typing import Any

from woodpecker.errors import WoodpeckerError
from woodpecker.kernels.workload import Workload
from woodpecker.measure.result import MeasureResult
from woodpecker.measure.runner import DEFAULT_TIMEOUT_S
from woodpecker.measure.timing import TimingSettings

RESOURCE = "wpk_measure"
CONNECT_TIMEOUT_S = 5.0
_prepared: dict = {}  # per Ray worker process: workload key -> inputs and reference outputs


def _measure_task(
    workload: Workload, impl: str, config: dict, settings: TimingSettings, seed: int, threads: int | None
) -> MeasureResult:
    import tempfile

    from woodpecker.compile.pool import compile_candidate
    from woodpecker.compile.toolchain import compiler_available
    from woodpecker.kernels import registry
    from woodpecker.measure.worker import measure_prepared, prepare, start_measuring_process

    if not _prepared:
        start_measuring_process(threads)
    key = workload.key()
    if key not in _prepared:
        _prepared[key] = prepare(workload, seed)
    if not (registry.capabilities(impl).compiled and compiler_available()):
        return measure_prepared(_prepared[key], impl, config, settings)
    # Compiled ahead of time as LocalRunner's batches are, so the trial runs on the plan's native runtime;
    # here, before the timing: a node runs one task at a time.
    with tempfile.TemporaryDirectory(prefix="wpk-ray-") as tmp:
        built = compile_candidate(workload, impl, config, f"{tmp}/kernel")
        if built.error:
            return MeasureResult(impl, config, error=built.error, compile_s=built.compile_s)
        return measure_prepared(_prepared[key], impl, config, settings, built)


def reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise a one-line error unless something accepts connections at `address` (host:port, or
    ray://host:port): Ray itself keeps retrying an address nobody answers for a minute or more."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else getattr(exc, "strerror", None) or str(exc)
        raise WoodpeckerError(f"--ray: cannot reach a Ray cluster at {address} ({reason})") from None


@contextlib.contextmanager
def _stderr_kept_back() -> Iterator[None]:
    """Standard error (file descriptor 2, which native libraries write to) discarded meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class RayRunner:
    def __init__(
        self,
        address: str = "local",
        threads: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        settings: TimingSettings | None = None,
        seed: int = 0,
    ):
        try:
            import ray
        except ImportError:
            raise WoodpeckerError("--ray needs the 'ray' package (pip install ray)") from None
        self.ray, self.threads, self.timeout_s, self.seed = ray, threads, timeout_s, seed
        self.settings = settings or TimingSettings()
        self._owns_cluster = not ray.is_initialized()
        if self._owns_cluster:
            if address not in ("local", "auto"):
                reachable(address)
                # Something answers there; if it is no Ray cluster, give up after a few seconds, quietly.
                os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(int(CONNECT_TIMEOUT_S)))
                os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
            try:
                if address == "local":
                    ray.init(resources={RESOURCE: 1}, include_dashboard=False, log_to_driver=False)
                else:
                    with _stderr_kept_back():  # Ray's C++ client logs every failed attempt
                        ray.init(address=address, log_to_driver=False)
            except Exception as exc:
                raise WoodpeckerError(f"cannot join Ray cluster at {address}: {exc}") from None
        if not ray.cluster_resources().get(RESOURCE):
            raise WoodpeckerError(
                f"the Ray cluster offers no '{RESOURCE}' resource: start each node with "
                f"--resources '{{\"{RESOURCE}\": 1}}'"
            )
        self._task = ray.remote(resources={RESOURCE: 1}, max_retries=0, num_cpus=0)(_measure_task)
        self._workloads: dict[str, Any] = {}

    def measure(self, workload: Workload, impl: str, config: dict[str, Any]) -> MeasureResult:
        return self.measure_batch(workload, impl, [config])[0]

    def measure_batch(self, workload: Workload, impl: str, configs: list[dict[str, Any]]) -> list[MeasureResult]:
        ray = self.ray
        key = workload.key()
        if key not in self._workloads:  # weights travel once per workload, through the object store
            self._workloads[key] = ray.put(workload)
        refs = [
            self._task.remote(self._workloads[key], impl, c, self.settings, self.seed, self.threads) for c in configs
        ]
        return [self._result(ref, impl, config) for ref, config in zip(refs, configs)]

    def _result(self, ref, impl: str, config: dict[str, Any]) -> MeasureResult:
        ray = self.ray
        try:
            return ray.get(ref, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            return MeasureResult(impl, config, error=f"timeout after {self.timeout_s:.0f}s")
        except ray.exceptions.RayError as exc:
            return MeasureResult(impl, config, error=f"crashed ({type(exc).__name__})")

    def close(self) -> None:
        if self._owns_cluster and self.ray.is_initialized():
            self.ray.shutdown()

    def __enter__(self) -> RayRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
