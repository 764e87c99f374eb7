"""The measuring process: build a candidate, check it against ONNX Runtime, time it.

It runs apart from the tuner so that a kernel that crashes, hangs or exhausts memory costs
one failed trial. Workloads are sent once and cached here, since weights can be large.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from multiprocessing.connection import Connection

import numpy as np

from woodpecker.kernels.base import Kernel
from woodpecker.kernels.workload import Workload
from woodpecker.measure.compile_pool import ENTRY, Compiled, short_error
from woodpecker.measure.processes import ignore_interrupts
from woodpecker.measure.result import MeasureResult
from woodpecker.measure.threads import configure_threads
from woodpecker.measure.timing import (
    REL_TOLERANCE,
    ColdCaches,
    TimingSettings,
    check,
    check_nonfinite,
    empty_outputs,
    nan_may_spread,
    nonfinite_inputs,
    random_inputs,
    time_kernel,
)


def start_measuring_process(threads: int | None) -> None:
    """Thread settings for a process that measures; call before any library starts its pool."""
    threads = configure_threads(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


@dataclass
class Prepared:
    """A workload's check data: random inputs and ONNX Runtime's outputs for them, the same with NaN
    and +-Inf among the inputs, or why the reference could not run."""

    workload: Workload
    inputs: list[np.ndarray]
    reference: list[np.ndarray]
    nonfinite_inputs: list[np.ndarray]
    nonfinite_reference: list[np.ndarray]
    error: str | None = None


def prepare(workload: Workload, seed: int) -> Prepared:
    """What every candidate of `workload` is checked against."""
    from woodpecker.kernels.library.onnxruntime import OnnxRuntimeImplementation

    inputs, special = random_inputs(workload, seed), nonfinite_inputs(workload, seed)
    reference, special_reference = empty_outputs(workload), empty_outputs(workload)
    prepared = Prepared(workload, inputs, reference, special, special_reference)
    try:
        kernel = OnnxRuntimeImplementation().build(workload, {})
        kernel(inputs, reference)
        kernel(special, special_reference)
    except Exception as exc:
        prepared.error = f"reference failed: {exc}"
    return prepared


def measure_prepared(
    entry: Prepared, impl_name: str, config, settings: TimingSettings, built: Compiled | None = None
) -> MeasureResult:
    """Build (JIT) or load (`built`: compiled ahead of time elsewhere), check and time one candidate."""
    from woodpecker.kernels import registry

    if built is None:
        return _measure(
            entry, impl_name, config, settings, lambda: registry.get(impl_name).build(entry.workload, config)
        )
    from woodpecker.kernels.generated.aot import KernelLibrary

    loaded: list[KernelLibrary] = []

    def load():  # inside _measure, so a library that fails to load is a failed trial, not a dead worker
        loaded.append(KernelLibrary(built.directory))
        return loaded[0].kernel(ENTRY)

    try:
        return _measure(entry, impl_name, config, settings, load, built.compile_s)
    finally:
        for library in loaded:
            library.close()  # a worker loads thousands of candidate libraries


@cache
def _cold_caches() -> ColdCaches:
    return ColdCaches()  # one scratch buffer per process


def worker_main(conn: Connection, threads: int | None, settings: TimingSettings) -> None:
    ignore_interrupts()
    start_measuring_process(threads)
    workloads: dict = {}
    conn.send(("ready",))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        kind = message[0]
        if kind == "stop":
            return
        if kind == "workload":
            _, key, workload, seed = message
            workloads[key] = prepare(workload, seed)
            conn.send(("ok",))
            continue
        _, key, impl_name, config, built = message
        conn.send(("result", measure_prepared(workloads[key], impl_name, config, settings, built)))


def _measure(
    entry: Prepared,
    impl_name: str,
    config,
    settings: TimingSettings,
    build: Callable[[], Kernel],
    compile_s: float = 0.0,
) -> MeasureResult:
    if entry.error:
        return MeasureResult(impl_name, config, error=entry.error)
    start = time.perf_counter()
    try:
        kernel = build()
    except Exception as exc:
        return MeasureResult(impl_name, config, error=f"compile: {short_error(exc)}")
    compile_s += time.perf_counter() - start
    node = entry.workload.node
    try:
        error = check(kernel, entry.inputs, entry.reference)
        special = check_nonfinite(
            kernel, entry.nonfinite_inputs, entry.nonfinite_reference, nan_may_spread(node.op, node.attrs)
        )
    except Exception as exc:
        return MeasureResult(impl_name, config, error=f"run: {short_error(exc)}", compile_s=compile_s)
    if not error <= REL_TOLERANCE:
        return MeasureResult(
            impl_name,
            config,
            error=f"wrong result: max relative error {error:.2e}",
            compile_s=compile_s,
            max_rel_error=error,
        )
    if special:
        return MeasureResult(impl_name, config, error=f"wrong result on NaN/Inf input: {special}", compile_s=compile_s)
    weights = sum(a.nbytes for a in entry.workload.constants.values())
    cold = _cold_caches() if weights > settings.flush_above_bytes else None
    times = time_kernel(kernel, entry.inputs, empty_outputs(entry.workload), settings, cold)
    return MeasureResult(impl_name, config, compile_s=compile_s, times_s=times, max_rel_error=error)
