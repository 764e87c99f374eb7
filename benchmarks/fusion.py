"""Whole-plan effect of a fusion: the generated plan with and without it.

Usage: .venv/bin/python benchmarks/fusion.py out/bench/mobilenet_v2.onnx [--variant fused|expanded]
       [--budget 6] [--records FILE] [--batch 1]

`--variant fused` (default): the pool and depthwise -> 1x1 fusions; `expanded`: the 1x1 expansions
fused into the depthwise convolutions after them (`wpk optimize`'s "expanded" graph). Either is
compared with the "unfused" graph.

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

from woodpecker.measure.rounds import round_medians
from woodpecker.measure.threads import configure_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--budget", type=int, default=6)
    parser.add_argument("--records", default="out/fusion-records.sqlite")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--variant", choices=("fused", "expanded"), default="fused")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    configure_threads()

    from woodpecker.api import graph_variants
    from woodpecker.explore.nodes import explore
    from woodpecker.explore.select import on_generated
    from woodpecker.explore.verify import random_feeds
    from woodpecker.graph.onnx_import import import_model
    from woodpecker.measure.runner import LocalRunner
    from woodpecker.options import SearchOptions
    from woodpecker.records.database import Records
    from woodpecker.runtime.executor import Executor

    graph = import_model(args.model, args.batch)
    fused, others = graph_variants(graph, "blocked")
    variants = {"fused": fused} | others
    if args.variant not in variants or "unfused" not in variants:
        raise SystemExit(f"{args.model}: nothing to fuse for --variant {args.variant}")
    options = SearchOptions(budget=args.budget, libraries=("numpy",), progress=True)
    plans = {}
    records = Records(args.records)
    for name in (args.variant, "unfused"):
        variant = variants[name]
        with LocalRunner() as runner:
            choices = [on_generated(c) for c in explore(variant, options, runner, records)]
        plans[name] = Executor(variant, choices)
        isolated = sum(c.median_s or 0.0 for c in choices) * 1e3
        print(f"{name}: {len(variant.nodes)} nodes, isolated kernel times sum to {isolated:.2f} ms", flush=True)

    feeds = random_feeds({n: (graph.values[n].shape, graph.values[n].dtype) for n in graph.inputs}, seed=1)
    fused_out, unfused_out = (plans[n].run(feeds) for n in (args.variant, "unfused"))
    for output, expected in unfused_out.items():
        error = float(np.abs(fused_out[output] - expected).max() / np.abs(expected).max())
        assert error <= 1e-4, f"fused and unfused plans differ on {output}: {error:.2e}"

    runs = {name: partial(executor.run, feeds) for name, executor in plans.items()}
    medians = round_medians(runs, args.rounds, repeats=40, warmup=5)
    fused, unfused = (statistics.median(medians[n]) * 1e3 for n in (args.variant, "unfused"))
    print(f"whole plan, median of {args.rounds} rounds, ms: {args.variant} {fused:.3f}, unfused {unfused:.3f}")
    print(f"ratio unfused / {args.variant}: {unfused / fused:.2f}x")


if __name__ == "__main__":
    main()
