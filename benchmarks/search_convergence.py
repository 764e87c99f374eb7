"""Best kernel found vs trials, per search strategy, on real conv layers of a model.

Usage: .venv/bin/python benchmarks/search_convergence.py out/bench/resnet50.onnx \\
           [--layers 4] [--trials 64] [--seeds 2] [--strategies random,ga,rl,anneal] [--out out/convergence]

Each trial is a real build + check + timing in the measuring worker (the same path as
`wpk optimize`), batches of 8 between strategy updates. Writes convergence.json (the
best-so-far GFLOPS after every trial) and convergence.png, and prints, per layer and
strategy, the lower median over seeds of the best GFLOPS at a few trial counts, and how
many trials each strategy needed to reach random search's final best.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from woodpecker.measure.threads import configure_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--layers", type=int, default=4, help="distinct conv layers, spread over the model")
    parser.add_argument("--depthwise", action="store_true", help="take depthwise layers only")
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--strategies", default="random,ga,rl,anneal")
    parser.add_argument("--out", default="out/convergence")
    parser.add_argument("--from-json", action="store_true", help="print the summary of a finished run, run nothing")
    args = parser.parse_args()
    if args.from_json:
        curves = json.loads((Path(args.out) / "convergence.json").read_text())["curves"]
        _plot(curves, Path(args.out) / "convergence.png")
        _print_summary(curves)
        return
    configure_threads()

    from woodpecker.graph.onnx_import import import_model
    from woodpecker.graph.passes import optimize_graph
    from woodpecker.kernels.generated.conv2d import HalideConv2d
    from woodpecker.kernels.workload import Workload
    from woodpecker.measure.runner import LocalRunner
    from woodpecker.search.strategies import STRATEGIES

    graph = optimize_graph(import_model(args.model))
    halide = HalideConv2d()
    layers, seen = [], set()
    for node in graph.nodes:
        workload = Workload.of(graph, node)
        depthwise = node.op == "Conv" and node.attrs.get("group", 1) > 1
        if node.op == "Conv" and workload.key() not in seen and depthwise == args.depthwise:
            seen.add(workload.key())
            layers.append(workload)
    step = max(1, len(layers) // args.layers)
    layers = layers[::step][: args.layers]

    curves: dict = {}
    with LocalRunner() as runner:
        for workload in layers:
            label = f"{workload.node.name} w{list(workload.input_shape(1))} out{list(workload.output_shape[1:])}"
            for name in args.strategies.split(","):
                for seed in range(args.seeds):
                    strategy = STRATEGIES[name](halide.space(workload), seed)
                    best, curve = 0.0, []
                    while len(curve) < args.trials:
                        configs = strategy.propose(min(args.batch, args.trials - len(curve)))
                        if not configs:
                            break
                        results = [runner.measure(workload, halide.name, c) for c in configs]
                        strategy.observe(configs, [r.median_s for r in results])
                        for r in results:
                            best = max(best, workload.flops() / r.median_s / 1e9 if r.ok else 0.0)
                            curve.append(best)
                    curves.setdefault(label, {}).setdefault(name, []).append(curve)
                print(
                    _summary_line(label, name, curves[label][name], curves[label].get("random")), flush=True
                )  # progress
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "convergence.json").write_text(json.dumps({"model": args.model, "trials": args.trials, "curves": curves}))
    _plot(curves, out / "convergence.png")
    print(f"wrote {out / 'convergence.json'} and {out / 'convergence.png'}\n")
    _print_summary(curves)


def _print_summary(curves: dict) -> None:
    for label, by_strategy in curves.items():
        for name, runs in by_strategy.items():
            print(_summary_line(label, name, runs, by_strategy.get("random")))


def _median_at(runs: list[list[float]], trial: int) -> float:
    """Lower median over seeds (with two seeds: the worse one), so at least half the seeds reach it."""
    return statistics.median_low(run[min(trial, len(run)) - 1] for run in runs)


def _trials_to_reach(runs: list[list[float]], target: float) -> float:
    """Trials by which at least half the seeds (rounded up) reached `target` (inf when they never did)."""
    hits = [next((i + 1 for i, v in enumerate(run) if v >= target), float("inf")) for run in runs]
    return statistics.median_high(hits)


def _summary_line(label: str, name: str, runs: list[list[float]], random_runs: list[list[float]] | None) -> str:
    n = len(runs[0])
    marks = sorted({t for t in (8, 16, 32, 64, 128, 256) if t < n} | {n})
    points = " ".join(f"@{t}:{_median_at(runs, t):5.0f}" for t in marks)
    reach = ""
    if random_runs:
        target = _median_at(random_runs, len(random_runs[0]))
        reach = f"  reaches random's final best ({target:.0f}) at trial {_trials_to_reach(runs, target):.0f}"
    return f"{label[:70]:<70} {name:<7} GFLOPS {points}{reach}"


def _plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.6), squeeze=False)
    for ax, (label, by_strategy) in zip(axes[0], curves.items()):
        for name, runs in by_strategy.items():
            n = min(len(r) for r in runs)
            ax.plot(range(1, n + 1), [_median_at(runs, i + 1) for i in range(n)], label=name)
        ax.set_title(label.split(" ", 1)[1], fontsize=8)
        ax.set_xlabel("trials")
        ax.set_ylabel("best GFLOPS (lower median over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
