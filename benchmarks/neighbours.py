"""How much the starting points leave on the table: the best one against its one-knob neighbours.

Usage: .venv/bin/python benchmarks/neighbours.py out/bench/resnet18.onnx [--kernel 3x3] [--batch 1] [--starts 6]

At the budget the benchmarks use (6), the search measures the kernel's starting points and
little else (the cost model needs 8 results first), so a plan's own kernels are only as good
as those points. Per distinct generated-convolution workload of the model (the blocked graph
`wpk optimize` explores), this measures the first `--starts` valid starting points, then every
valid config that differs from the best of them in exactly one knob, and finally times the best
starting point and the best neighbour again, taking turns (a winner among ~30 trials on this
noisy machine is partly luck). A gain near 1 everywhere says more trials would buy little; a
large one names a layer whose starting points miss. Gain = median of the best starting point's
repeats / the best neighbour's (every config is checked against ONNX Runtime first).
"""

from __future__ import annotations

import argparse
import json
import statistics

from woodpecker.measure.threads import configure_threads

REPEATS = 3  # turns each of the best starting point and the best neighbour get in the final comparison


def neighbours(space, config: dict) -> list[dict]:
    """Valid configs differing from `config` in one knob."""
    found = []
    for knob in space.knobs:
        for choice in knob.choices:
            changed = {**config, knob.name: choice}
            if choice != config.get(knob.name) and space.is_valid(changed):
                found.append(changed)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--kernel", default="3x3", help="kernel size of the convolutions to check, e.g. 1x1")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--starts", type=int, default=6, help="starting points measured (the budget)")
    parser.add_argument("--json", help="write every measurement to this file")
    args = parser.parse_args()
    configure_threads()

    from woodpecker.api import graph_variants
    from woodpecker.graph.onnx_import import import_model
    from woodpecker.kernels import registry
    from woodpecker.kernels.workload import Workload
    from woodpecker.measure.runner import LocalRunner

    graph, _ = graph_variants(import_model(args.model, args.batch), "blocked")
    impl = registry.get("halide.conv2d_blocked")
    kernel = [int(v) for v in args.kernel.split("x")]
    workloads: dict[str, tuple[str, Workload]] = {}
    for node in graph.nodes:
        if node.op == "Conv" and node.attrs.get("kernel_shape") == kernel:
            workload = Workload.of(graph, node)
            if impl.matches(workload):
                workloads.setdefault(workload.key(), (node.name, workload))
    print(f"{'node':40} {'input':>18} {'start ms':>9} {'best ms':>8} {'gain':>5}  knobs changed")
    report = []
    with LocalRunner() as runner:
        for name, workload in workloads.values():
            space = impl.space(workload)
            starts = space.valid_defaults()[: args.starts]
            results = runner.measure_batch(workload, impl.name, starts)
            timed = [(r.median_s, c) for r, c in zip(results, starts) if r.ok]
            if not timed:
                print(f"{name[-40:]:40} no starting point ran: {results[0].error}")
                continue
            start_s, start = min(timed, key=lambda t: t[0])
            around = [c for c in neighbours(space, start) if c not in starts]
            results = runner.measure_batch(workload, impl.name, around)
            best = min([(r.median_s, c) for r, c in zip(results, around) if r.ok] + timed, key=lambda t: t[0])[1]
            if best != start:  # a winner among ~30 noisy trials is partly luck: the two again, taking turns
                again = runner.measure_batch(workload, impl.name, [start, best] * REPEATS)
                start_s = statistics.median(r.median_s for r in again[::2])
                best_s = statistics.median(r.median_s for r in again[1::2])
            else:
                best_s = start_s
            changed = {k: v for k, v in best.items() if start.get(k) != v}
            shape = "x".join(str(v) for v in workload.input_shape(0))
            times = f"{start_s * 1e3:9.3f} {best_s * 1e3:8.3f} {start_s / best_s:5.2f}"
            print(f"{name[-40:]:40} {shape:>18} {times}  {changed}")
            report.append({"node": name, "start": start, "start_s": start_s, "best": best, "best_s": best_s})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
