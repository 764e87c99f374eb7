"""The measuring process: build a candidate, check it against ONNX Runtime, time it.

It runs apart from the tuner so that a kernel that crashes, hangs or exhausts memory costs
one failed trial. Protocol (measure/protocol.py), one JSON object per line: first the thread
count and timing settings, answered {"ready": true}; then {"workload": FILE, "key", "seed"}
(the workload pickled to a file once, since weights can be large; answered {"ok": true}) and
{"measure": KEY, "impl", "config", "built"} (a kernel directory compiled ahead of time, or
null to build here), answered {"result": ...}.
"""

from __future__ import annotations

import dataclasses
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from woodpecker.compile.pool import ENTRY, Compiled, short_error
from woodpecker.kernels.base import Kernel
from woodpecker.kernels.workload import Workload
from woodpecker.measure.protocol import answer, requests
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
    from woodpecker.runtime.kernel_library import KernelLibrary

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


def main() -> None:
    incoming = requests()
    setup = next(incoming)
    start_measuring_process(setup["threads"])
    settings = TimingSettings(**setup["settings"])
    workloads: dict[str, Prepared] = {}
    answer({"ready": True})
    for request in incoming:
        if "workload" in request:
            with open(request["workload"], "rb") as f:
                workloads[request["key"]] = prepare(pickle.load(f), request["seed"])
            answer({"ok": True})
            continue
        built = request.get("built")
        compiled = Compiled(Path(built["directory"]), None, built["compile_s"]) if built else None
        result = measure_prepared(workloads[request["measure"]], request["impl"], request["config"], settings, compiled)
        answer({"result": dataclasses.asdict(result)})


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


if __name__ == "__main__":
    main()
