"""Builds one candidate plan in a process of its own and times it on request. Used by plan/select.py.

Each candidate gets a fresh process so that no thread pool left by another library (or by
an earlier candidate) slows it down: timed side by side in the optimizing process, the
per-node plan and the all-ONNX-Runtime plan were picked over a faster all-OpenVINO plan.
Protocol (one JSON object per line after PREFIX, since libraries may print to stdout too): the
worker prints {"ready": true, "resident_mib": ..., "peak_mib": ...} or {"error": ...} once built
and run once, then answers every "time" line on stdin with {"median_s": ...}, until stdin closes.
The optimizer interleaves the candidates' rounds, so a slow spell of the machine hits all.
"""

from __future__ import annotations

import ctypes
import gc
import json
import signal
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from woodpecker.measure.threads import configure_threads

PREFIX = "wpk-candidate: "


def answer(message: dict) -> None:
    print(PREFIX + json.dumps(message), flush=True)


def time_executor(executor, feeds: dict[str, np.ndarray], warmup: int, runs: int, max_seconds: float) -> float:
    """Median seconds of whole-plan runs after a warm-up (at most `runs`, within `max_seconds`)."""
    for _ in range(warmup):
        executor.run(feeds)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs and time.perf_counter() - start < max_seconds:
        t0 = time.perf_counter()
        executor.run(feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the optimizer stops this process and says so
    directory, graph_file, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    threads, seed = int(sys.argv[4]), int(sys.argv[5])
    configure_threads(threads)
    from woodpecker.bench_worker import import_runtime, peak_rss_mib, reset_peak, rss_mib

    plan = json.loads((directory / f"{name}.json").read_text())
    for library in ("onnxruntime", "openvino", "halide"):  # those the plan runs, before the memory baseline
        if library == "halide" or any(c["impl"] == library for c in plan["choices"]):
            import_runtime(library)
    import_runtime("woodpecker-runtime")
    baseline = rss_mib()
    peak_reset = reset_peak()
    from woodpecker.errors import WoodpeckerError
    from woodpecker.kernels.generated.aot import KernelLibrary
    from woodpecker.plan.choice import Choice
    from woodpecker.plan.compiled import generated_kernels, save_library_models
    from woodpecker.plan.serialize import CONSTANTS, SavedConstants, graph_from_data
    from woodpecker.plan.verify import random_feeds
    from woodpecker.runtime.executor import Executor

    data = json.loads((directory / graph_file).read_text())
    graph = graph_from_data(data, SavedConstants(directory / CONSTANTS, data["constants"]))
    choices = [Choice.from_json(c) for c in plan["choices"]]
    feeds = random_feeds({n: (graph.values[n].shape, graph.values[n].dtype) for n in graph.inputs}, seed)
    try:
        # Library segments read their weights from the file, as they will in the saved plan.
        models = save_library_models(graph, choices, directory / CONSTANTS, data["constants"], prefix=f"{name}-library")
        library = KernelLibrary(directory / f"{name}-kernels") if plan["kernels"] else None
        executor = Executor(
            graph,
            choices,
            library=library,
            kernels=plan["kernels"],
            library_models={label: directory / m for label, m in models.items()},
        )
        executor.run(feeds)
    except WoodpeckerError as exc:  # e.g. a library that cannot compile the whole graph
        answer({"error": str(exc)[:300]})
        return
    # The peak counts where the build is what loading the saved plan does: kernels compiled ahead
    # of time and library sessions from files (a JIT build makes passing copies loading never makes).
    as_loaded = peak_reset and (plan["kernels"] or not generated_kernels(graph, choices))
    peak = peak_rss_mib() - baseline if as_loaded else None
    # Resident after building and one run, with the heap that passing copies left free handed back
    # first, so that only what the plan holds counts.
    gc.collect()
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    answer({"ready": True, "resident_mib": rss_mib() - baseline, "peak_mib": peak})
    for line in sys.stdin:
        if line.strip() == "time":
            answer({"median_s": time_executor(executor, feeds, warmup=3, runs=10, max_seconds=5.0)})


if __name__ == "__main__":
    main()
