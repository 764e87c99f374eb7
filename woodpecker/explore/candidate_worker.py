"""Builds one candidate plan in a process of its own and times it on request. Used by explore/select.py.

Each candidate gets a fresh process so that no thread pool left by another library (or by
an earlier candidate) slows it down: timed side by side in the optimizing process, the
per-node plan and the all-ONNX-Runtime plan were picked over a faster all-OpenVINO plan.
Protocol (measure/protocol.py): the first request names the candidate; the worker answers
{"ready": true, "resident_mib": ..., "peak_mib": ...} or {"error": ...} once built and run once,
then every {"time": true} with {"median_s": ...}, until its input closes. The optimizer
interleaves the candidates' rounds, so a slow spell of the machine hits all.
"""

from __future__ import annotations

import ctypes
import gc
import json
import sys
from pathlib import Path

from woodpecker.measure.protocol import answer, requests
from woodpecker.measure.rounds import MemoryProbe, median_of_runs
from woodpecker.measure.threads import configure_threads


def main() -> None:
    incoming = requests()
    request = next(incoming)
    directory, graph_file, name = Path(request["directory"]), request["graph_file"], request["name"]
    configure_threads(request["threads"])
    from woodpecker.bench_worker import import_modules, import_plan_runtime

    plan = json.loads((directory / f"{name}.json").read_text())
    # The packages the plan runs on, before the memory baseline; Halide for compiling its kernels.
    import_modules(["halide"])
    import_plan_runtime({c["impl"] for c in plan["choices"]})
    memory = MemoryProbe()
    from woodpecker.compile.objects import kernel_entries
    from woodpecker.errors import WoodpeckerError
    from woodpecker.explore.verify import index_bounds, random_feeds
    from woodpecker.plan.choice import Choice
    from woodpecker.plan.library_models import save_library_models
    from woodpecker.plan.serialize import CONSTANTS, SavedConstants, graph_from_data
    from woodpecker.runtime.executor import Executor
    from woodpecker.runtime.kernel_library import KernelLibrary

    data = json.loads((directory / graph_file).read_text())
    graph = graph_from_data(data, SavedConstants(directory / CONSTANTS, data["constants"]))
    choices = [Choice.from_json(c) for c in plan["choices"]]
    specs = {n: (graph.values[n].shape, graph.values[n].dtype) for n in graph.inputs}
    feeds = random_feeds(specs, request["seed"], index_bounds(graph))
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
        answer({"error": (str(exc) or type(exc).__name__)[:300]})
        return
    # The peak counts where the build is what loading the saved plan does: kernels compiled ahead
    # of time and library sessions from files (a JIT build makes passing copies loading never makes).
    as_loaded = memory.peak_reset and (plan["kernels"] or not kernel_entries(graph, choices))
    peak = memory.peak_mib() if as_loaded else None
    # Resident after building and one run, with the heap that passing copies left free handed back
    # first, so that only what the plan holds counts.
    gc.collect()
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    answer({"ready": True, "resident_mib": memory.resident_mib(), "peak_mib": peak})
    for request in incoming:
        if request.get("time"):
            answer({"median_s": median_of_runs(lambda: executor.run(feeds), warmup=3, runs=10, max_seconds=5.0)})


if __name__ == "__main__":
    main()
