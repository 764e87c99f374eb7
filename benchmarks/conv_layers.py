"""Per conv layer: the best Halide conv2d configuration tried against ONNX Runtime's kernel for that node.

Usage: .venv/bin/python benchmarks/conv_layers.py out/bench/resnet50.onnx [--budget 4] [--json FILE]

Both run in this process, one after the other, same threads, same input; each candidate is
checked against ONNX Runtime before its time counts. The Halide side tries the space's
starting configurations plus a seeded random sample, up to `--budget` in all (the same
proposals `wpk optimize --strategy random` makes). ONNX Runtime runs the single-node model,
so it pays its own layout conversions: this compares kernels, not whole plans.
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
    parser.add_argument("--budget", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    configure_threads()

    from woodpecker.graph.onnx_import import import_model
    from woodpecker.graph.passes import optimize_graph
    from woodpecker.kernels.generated.conv2d import HalideConv2d
    from woodpecker.kernels.library.onnxruntime import OnnxRuntimeKernel
    from woodpecker.kernels.workload import Workload
    from woodpecker.measure.timing import REL_TOLERANCE, TimingSettings, check, random_inputs, time_kernel
    from woodpecker.search.random_search import RandomSearch

    graph = optimize_graph(import_model(args.model, args.batch))
    halide, settings = HalideConv2d(), TimingSettings(min_seconds=0.2)
    rows, seen = [], set()
    print(f"{'weight':<20}{'output':<18}{'groups':>7}{'Halide GFLOPS':>15}{'ORT GFLOPS':>12}{'ratio':>8}")
    for node in graph.nodes:
        workload = Workload.of(graph, node)
        if node.op != "Conv" or workload.key() in seen or not halide.matches(workload):
            continue
        seen.add(workload.key())
        inputs = random_inputs(workload, seed=len(seen))
        reference = [np.empty(workload.output_shape, np.float32)]
        library = OnnxRuntimeKernel(workload.as_graph())
        library(inputs, reference)
        scratch = [np.empty_like(reference[0])]
        ort_s = statistics.median(time_kernel(library, inputs, scratch, settings))
        best_s, best_config = float("inf"), None
        for config in RandomSearch(halide.space(workload)).propose(args.budget):
            kernel = halide.build(workload, config)
            if check(kernel, inputs, reference) > REL_TOLERANCE:
                continue
            seconds = statistics.median(time_kernel(kernel, inputs, scratch, settings))
            if seconds < best_s:
                best_s, best_config = seconds, config
        flops = workload.flops()
        row = {
            "node": node.name,
            "weight": list(workload.input_shape(1)),
            "output": list(workload.output_shape[1:]),
            "groups": node.attrs.get("group", 1),
            "halide_gflops": flops / best_s / 1e9,
            "ort_gflops": flops / ort_s / 1e9,
            "ratio": ort_s / best_s,
            "config": best_config,
        }
        rows.append(row)
        print(
            f"{str(row['weight']):<20}{str(row['output']):<18}{row['groups']:>7}{row['halide_gflops']:>15.0f}"
            f"{row['ort_gflops']:>12.0f}{row['ratio']:>7.2f}x",
            flush=True,
        )
    ratios = [r["ratio"] for r in rows]
    geomean = float(np.exp(np.mean(np.log(ratios))))
    print(
        f"{len(rows)} distinct layers: geometric-mean ratio (ORT time / Halide time) {geomean:.2f}, "
        f"best {max(ratios):.2f}, worst {min(ratios):.2f}, Halide faster on {sum(r > 1 for r in ratios)}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "geomean": geomean, "layers": rows}, indent=1))


if __name__ == "__main__":
    main()
