"""What the native runtime buys a plan on generated kernels: the same compiled plan run three ways.

Usage: .venv/bin/python benchmarks/native.py out/bench/mobilenet_v2.onnx [--budget 6] [--records FILE] [--rounds 20]

The model is explored as `wpk optimize` explores it (same budget and records), every node is put
on its fastest correct generated kernel, and the plan is compiled ahead of time and loaded. Then,
in interleaved rounds in this one process (same input, same kernels):
- "python + halide pool": each kernel called from Python through ctypes, parallel loops on
  Halide's own thread pool (how plans ran before the native runtime);
- "python + native pool": the same calls, loops on the native spinning pool;
- "native run": the executor as it is: runs of compiled kernels called from C (wpk_run).
Ratios are the median over rounds of (first mode's round median / this mode's round median).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable

import numpy as np

from woodpecker.measure.rounds import round_medians
from woodpecker.measure.threads import configure_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--budget", type=int, default=6)
    parser.add_argument("--records", default="out/native-records.sqlite")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runs", type=int, default=20, help="runs per mode and round")
    args = parser.parse_args()
    configure_threads()

    import woodpecker
    from woodpecker.api import graph_variants
    from woodpecker.explore.nodes import explore
    from woodpecker.explore.select import on_generated
    from woodpecker.explore.verify import random_feeds
    from woodpecker.graph.onnx_import import import_model
    from woodpecker.measure.runner import LocalRunner
    from woodpecker.options import SearchOptions
    from woodpecker.plan.plan import Plan
    from woodpecker.records.database import Records
    from woodpecker.runtime.kernel_library import start_native

    graph, _ = graph_variants(import_model(args.model, 1), "blocked")
    with LocalRunner() as runner:
        explored = explore(
            graph, SearchOptions(budget=args.budget, libraries=("numpy",), progress=True), runner, Records(args.records)
        )
    tmp = tempfile.TemporaryDirectory()  # the loaded plan reads its weights from there while it builds
    Plan(graph, [on_generated(c) for c in explored]).save(f"{tmp.name}/plan")
    plan = woodpecker.load(f"{tmp.name}/plan")
    executor = plan.executor()
    feeds = random_feeds(plan.input_specs, seed=1)
    executor.run(feeds)
    library = plan.library.handle

    def per_step() -> None:  # Executor.run with each kernel called from Python
        for name, array in feeds.items():  # the arena reuses the input's memory once it is read
            np.copyto(executor.buffers[name], array)
        for step in executor.steps:
            step.kernel(step.inputs, step.outputs)

    def native() -> None:
        executor.run(feeds)

    def use_halide_pool() -> None:
        library.wpk_pool_stop()

    def use_native_pool() -> None:
        start_native(library)  # as the library was loaded: HL_NUM_THREADS threads, SPIN_US

    modes: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
        "python + halide pool": (use_halide_pool, per_step),
        "python + native pool": (use_native_pool, per_step),
        "native run": (use_native_pool, native),
    }
    print(f"{len(executor.steps)} steps in {len(executor.calls)} calls; {args.rounds} interleaved rounds", flush=True)
    medians = round_medians(
        {name: run for name, (_, run) in modes.items()},
        args.rounds,
        args.runs,
        setups={name: setup for name, (setup, _) in modes.items()},
    )
    first = medians["python + halide pool"]
    for name, values in medians.items():
        ratio = statistics.median(a / b for a, b in zip(first, values))
        print(f"{name:<22} {statistics.median(values) * 1e3:8.3f} ms   {ratio:.2f}x")


if __name__ == "__main__":
    main()
