"""Whole-plan effect of the pool and depthwise fusions: the generated plan with and without them.

Usage: .venv/bin/python benchmarks/fusion.py out/bench/mobilenet_v2.onnx [--budget 6] [--records FILE]

Both graphs are explored as `wpk optimize` explores them (same budget and records), every node is
put on its fastest correct generated kernel, and the two plans are timed in interleaved rounds in
this one process (same threads, same input; their outputs are compared first). Isolated kernel
times miss what fusion saves between kernels (an intermediate map written and read back), so
this times whole runs. Ratio = unfused median / fused median (above 1: fusion pays).
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial

import numpy as np
from interleaved import round_medians

from woodpecker.measure.threads import configure_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--budget", type=int, default=6)
    parser.add_argument("--records", default="out/fusion-records.sqlite")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    configure_threads()

    from woodpecker.api import graph_variants
    from woodpecker.graph.onnx_import import import_model
    from woodpecker.measure.runner import LocalRunner
    from woodpecker.plan.explore import ExploreOptions, explore
    from woodpecker.plan.select import on_generated
    from woodpecker.plan.verify import random_feeds
    from woodpecker.records.database import Records
    from woodpecker.runtime.executor import Executor

    graph = import_model(args.model, 1)
    fused, others = graph_variants(graph, "blocked")
    unfused = others.get("unfused")
    if unfused is None:
        raise SystemExit(f"{args.model}: no pool or depthwise stage to fuse")
    options = ExploreOptions(budget=args.budget, libraries=("numpy",))
    plans = {}
    records = Records(args.records)
    for name, variant in (("fused", fused), ("unfused", unfused)):
        with LocalRunner() as runner:
            choices = [on_generated(c) for c in explore(variant, options, runner, records)]
        plans[name] = Executor(variant, choices)
        isolated = sum(c.median_s or 0.0 for c in choices) * 1e3
        print(f"{name}: {len(variant.nodes)} nodes, isolated kernel times sum to {isolated:.2f} ms", flush=True)

    feeds = random_feeds({n: (graph.values[n].shape, graph.values[n].dtype) for n in graph.inputs}, seed=1)
    fused_out, unfused_out = (plans[n].run(feeds) for n in ("fused", "unfused"))
    for output, expected in unfused_out.items():
        error = float(np.abs(fused_out[output] - expected).max() / np.abs(expected).max())
        assert error <= 1e-4, f"fused and unfused plans differ on {output}: {error:.2e}"

    runs = {name: partial(executor.run, feeds) for name, executor in plans.items()}
    medians = round_medians(runs, args.rounds, repeats=40, warmup=5)
    fused, unfused = (statistics.median(medians[n]) * 1e3 for n in ("fused", "unfused"))
    print(f"whole plan, median of {args.rounds} interleaved rounds: fused {fused:.3f} ms, unfused {unfused:.3f} ms")
    print(f"ratio unfused / fused: {unfused / fused:.2f}x")


if __name__ == "__main__":
    main()
