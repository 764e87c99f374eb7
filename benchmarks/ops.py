"""Per conv layer: the tuned Halide conv2d against ONNX Runtime and oneDNN (PyTorch, OpenVINO) on that node.

Usage: .venv/bin/python benchmarks/ops.py out/bench/resnet50.onnx [--budget 8] [--strategy random] [--json FILE]

All run in this process, one after the other, same threads, same input; every candidate is
checked against ONNX Runtime before its time counts. The Halide side is tuned with the
chosen strategy within `--budget` trials (the same search `wpk optimize` runs). Libraries run
the single-node model, so they pay their own layout conversions: this compares kernels,
not whole plans. Ratio = best library time / Halide time (above 1: Halide is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from woodpecker.measure.threads import configure_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--strategy", default="random")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    configure_threads()

    from woodpecker.graph.onnx_import import import_model
    from woodpecker.graph.passes import optimize_graph
    from woodpecker.kernels import registry
    from woodpecker.kernels.halide.conv2d import HalideConv2d
    from woodpecker.kernels.library.onnxruntime import OnnxRuntimeImplementation
    from woodpecker.kernels.workload import Workload
    from woodpecker.measure.timing import REL_TOLERANCE, TimingSettings, check, random_inputs, time_kernel
    from woodpecker.search.strategies import STRATEGIES

    libraries = [registry.get(name) for name in ("onnxruntime", "torch", "openvino")]

    graph = optimize_graph(import_model(args.model, args.batch))
    halide, settings = HalideConv2d(), TimingSettings(min_seconds=0.2)
    rows, seen = [], set()
    names = [lib.name for lib in libraries]
    print(
        f"{'weight':<20}{'output':<16}{'groups':>7}{'halide':>9}"
        + "".join(f"{n:>12}" for n in names)
        + f"{'ratio':>8}  (GFLOPS)"
    )
    for node in graph.nodes:
        workload = Workload.of(graph, node)
        if node.op != "Conv" or workload.key() in seen or not halide.matches(workload):
            continue
        seen.add(workload.key())
        inputs = random_inputs(workload, seed=len(seen))
        reference = [np.empty(workload.output_shape, np.float32)]
        OnnxRuntimeImplementation().build(workload, {})(inputs, reference)
        scratch = [np.empty_like(reference[0])]

        def seconds(kernel, inputs=inputs, reference=reference, scratch=scratch):
            if check(kernel, inputs, reference) > REL_TOLERANCE:
                return float("inf")
            return statistics.median(time_kernel(kernel, inputs, scratch, settings))

        library_s = {
            lib.name: seconds(lib.build(workload, {})) if lib.matches(workload) else float("inf") for lib in libraries
        }
        strategy = STRATEGIES[args.strategy](halide.space(workload), 0)
        best_s, best_config, tried = float("inf"), None, 0
        while tried < args.budget:
            configs = strategy.propose(min(8, args.budget - tried))
            if not configs:
                break
            costs = [seconds(halide.build(workload, config)) for config in configs]
            strategy.observe(configs, costs)
            tried += len(configs)
            for config, cost in zip(configs, costs):
                if cost < best_s:
                    best_s, best_config = cost, config
        flops = workload.flops()
        best_library = min(library_s.values())
        row = {
            "node": node.name,
            "weight": list(workload.input_shape(1)),
            "output": list(workload.output_shape[1:]),
            "groups": node.attrs.get("group", 1),
            "halide_gflops": flops / best_s / 1e9,
            "library_gflops": {n: flops / t / 1e9 for n, t in library_s.items()},
            "ratio": best_library / best_s,
            "config": best_config,
        }
        rows.append(row)
        print(
            f"{str(row['weight']):<20}{str(row['output']):<16}{row['groups']:>7}{row['halide_gflops']:>9.0f}"
            + "".join(f"{row['library_gflops'][n]:>12.0f}" for n in names)
            + f"{row['ratio']:>7.2f}x",
            flush=True,
        )
    ratios = [r["ratio"] for r in rows]
    geomean = float(np.exp(np.mean(np.log(ratios))))
    print(
        f"{len(rows)} distinct layers: geometric-mean ratio (best library time / Halide time) {geomean:.2f}, "
        f"best {max(ratios):.2f}, worst {min(ratios):.2f}, Halide faster on {sum(r > 1 for r in ratios)}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "geomean": geomean, "layers": rows}, indent=1))


if __name__ == "__main__":
    main()
