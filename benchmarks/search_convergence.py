"""Best kernel found vs trials, per search strategy, on real conv layers of a model.

Usage: .venv/bin/python benchmarks/search_convergence.py out/bench/resnet50.onnx \\
           [--layers 4] [--depthwise] [--trials 256] [--seeds 3] [--strategies random,ga,rl,anneal] \\
           [--transfer ga,random] [--records out/convergence/records.sqlite] [--out out/convergence]

Each trial is a real build + check + timing in the measuring worker (the same path as
`wpk optimize`), batches of 8 between strategy updates. Measurements go through a records
file shared by every strategy and seed, so a configuration is timed once per layer and all
strategies see the same value for it (a strategy's trial count still counts every proposal).
Searches start from nothing (the paper's comparison); --with-defaults adds the hand-picked
starting schedules that `wpk optimize` tries first, and the summary prints what those alone
reach. With --transfer, the named strategies run again per layer starting from the best
configurations of the nearest *other* recorded layers (what `wpk optimize` does), to count
the trials that transfer saves. Writes convergence.json (the best-so-far GFLOPS after every trial) and
convergence.png, and prints, per layer and strategy, the lower median over seeds of the best
GFLOPS at a few trial counts, the trials needed to reach random search's final best, and the
trials needed to reach 95% of the best ever measured on the layer.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

from woodpecker.measure.threads import configure_threads

QUALITY = 0.95  # "reached": within 5% of the best configuration ever measured on the layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--layers", type=int, default=4, help="distinct conv layers, spread over the model")
    parser.add_argument("--depthwise", action="store_true", help="take depthwise layers only")
    parser.add_argument("--trials", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--strategies", default="random,ga,rl,anneal")
    parser.add_argument("--transfer", default="", help="strategies to run again, seeded by transfer (e.g. ga,random)")
    parser.add_argument(
        "--with-defaults", action="store_true", help="start from the hand-picked schedules too, as `wpk optimize` does"
    )
    parser.add_argument("--out", default="out/convergence")
    parser.add_argument("--records", help="measurement cache (default: OUT/records.sqlite)")
    parser.add_argument("--from-json", action="store_true", help="print the summary of a finished run, run nothing")
    args = parser.parse_args()
    out = Path(args.out)
    if args.from_json:
        data = json.loads((out / "convergence.json").read_text())
        _plot(data["curves"], out / "convergence.png")
        _print_summary(data)
        return
    configure_threads()

    from woodpecker.explore.nodes import measure_with_records
    from woodpecker.graph.onnx_import import import_model
    from woodpecker.graph.passes import optimize_graph
    from woodpecker.kernels.halide.conv2d import HalideConv2d
    from woodpecker.measure.runner import LocalRunner
    from woodpecker.records.database import Records

    graph = optimize_graph(import_model(args.model))
    halide = HalideConv2d()
    layers = _pick_layers(graph, args.layers, args.depthwise)
    out.mkdir(parents=True, exist_ok=True)
    records = Records(args.records or out / "records.sqlite")
    for workload in layers:
        records.describe(workload.key(), workload.description())
    strategies = args.strategies.split(",")
    plans = [(name, False) for name in strategies] + [(name, True) for name in args.transfer.split(",") if name]

    labels = [f"{w.node.name} in{list(w.input_shape(0)[1:])} w{list(w.input_shape(1))}" for w in layers]
    curves: dict = {label: {} for label in labels}
    with LocalRunner() as runner:
        for transfer in (False, True):  # transfer runs last, once every layer has records
            for label, workload in zip(labels, layers):
                for name in (n for n, seeded in plans if seeded == transfer):
                    space = halide.space(workload)
                    if not args.with_defaults:
                        space = replace(space, defaults=())
                    if transfer:
                        key, description = workload.key(), workload.description()
                        space = space.starting_from(records.transfer(key, description, halide.name))
                    runs = [
                        _search(workload, halide.name, space, name, seed, args, runner, records)
                        for seed in range(args.seeds)
                    ]
                    curves[label][name + ("+transfer" if transfer else "")] = runs
                    print(_summary_line(label, name, runs, curves[label].get("random"), None), flush=True)
        # What the hand-picked starting schedules alone reach, for reference.
        hand_picked = {
            label: _best_gflops(
                workload,
                measure_with_records(
                    workload, workload.key(), halide.name, halide.space(workload).valid_defaults(), runner, records
                ),
            )
            for label, workload in zip(labels, layers)
        }
    best = {label: _best_gflops(w, records.results(w.key(), halide.name)) for label, w in zip(labels, layers)}
    data = {"model": args.model, "trials": args.trials, "curves": curves, "best": best, "hand_picked": hand_picked}
    (out / "convergence.json").write_text(json.dumps(data))
    _plot(curves, out / "convergence.png")
    print(f"wrote {out / 'convergence.json'} and {out / 'convergence.png'}\n")
    _print_summary(data)


def _pick_layers(graph, count: int, depthwise: bool) -> list:
    from woodpecker.kernels.workload import Workload

    layers, seen = [], set()
    for node in graph.nodes:
        if node.op != "Conv":
            continue
        workload = Workload.of(graph, node)
        is_depthwise = node.attrs.get("group", 1) > 1
        if workload.key() not in seen and is_depthwise == depthwise:
            seen.add(workload.key())
            layers.append(workload)
    step = max(1, len(layers) // count)
    return layers[::step][:count]


def _search(workload, impl: str, space, name: str, seed: int, args, runner, records) -> list[float]:
    """Best-so-far GFLOPS after each trial of one strategy run."""
    from woodpecker.explore.nodes import measure_with_records
    from woodpecker.search.strategies import STRATEGIES

    strategy = STRATEGIES[name](space, seed)
    best, curve = 0.0, []
    while len(curve) < args.trials:
        configs = strategy.propose(min(args.batch, args.trials - len(curve)))
        if not configs:
            break
        results = measure_with_records(workload, workload.key(), impl, configs, runner, records)
        strategy.observe(configs, [r.median_s for r in results])
        for r in results:
            best = max(best, workload.flops() / r.median_s / 1e9 if r.ok else 0.0)
            curve.append(best)
    return curve


def _best_gflops(workload, results) -> float:
    return max((workload.flops() / r.median_s / 1e9 for r in results if r.ok), default=0.0)


def _print_summary(data: dict) -> None:
    for label, by_strategy in data["curves"].items():
        best, hand_picked = data["best"][label], data["hand_picked"][label]
        print(f"{label}: best ever measured {best:.0f} GFLOPS, hand-picked starting schedules {hand_picked:.0f}")
        for name, runs in by_strategy.items():
            print(_summary_line(label, name, runs, by_strategy.get("random"), best))


def _median_at(runs: list[list[float]], trial: int) -> float:
    """Lower median over seeds (with two seeds: the worse one), so at least half the seeds reach it."""
    return statistics.median_low(run[min(trial, len(run)) - 1] for run in runs)


def _trials_to_reach(runs: list[list[float]], target: float) -> float:
    """Trials by which at least half the seeds (rounded up) reached `target` (inf when they never did)."""
    hits = [next((i + 1 for i, v in enumerate(run) if v >= target), float("inf")) for run in runs]
    return statistics.median_high(hits)


def _summary_line(
    label: str, name: str, runs: list[list[float]], random_runs: list[list[float]] | None, best: float | None
) -> str:
    n = len(runs[0])
    marks = sorted({t for t in (8, 16, 32, 64, 128, 256) if t < n} | {n})
    points = " ".join(f"@{t}:{_median_at(runs, t):5.0f}" for t in marks)
    reach = ""
    if random_runs:
        target = _median_at(random_runs, len(random_runs[0]))
        reach = f"  random's final best ({target:.0f}) at {_trials_to_reach(runs, target):.0f}"
    if best:
        reach += f"  {QUALITY:.0%} of best at {_trials_to_reach(runs, QUALITY * best):.0f}"
    return f"{label[:60]:<60} {name:<16} {points}{reach}"


def _plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(curves))
    rows = -(-len(curves) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(curves) :]:
        ax.set_visible(False)
    for ax, (label, by_strategy) in zip(axes.flat, curves.items()):
        for name, runs in by_strategy.items():
            n = min(len(r) for r in runs)
            style = "--" if name.endswith("+transfer") else "-"
            ax.plot(range(1, n + 1), [_median_at(runs, i + 1) for i in range(n)], style, label=name)
        ax.set_title(label, fontsize=7)
        ax.set_xlabel("trials")
        ax.set_ylabel("best GFLOPS (lower median over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
