"""Own convolution kernels against ONNX Runtime's inside a graph: chains of identical conv + ReLU layers.

Usage: .venv/bin/python benchmarks/chain.py [--shapes 64x56,128x28,256x14,512x7] [--layers 8] [--budget 16]

Timed alone, a library's kernel pays layout conversions at the node's boundary that a whole graph
pays once, so single-node timings flatter our kernels (see `wpk profile`). In a chain of `--layers`
identical layers ONNX Runtime converts once, so per layer the chain measures its convolution
kernel itself. Each chain is optimized with our generated kernels only (`libraries=("numpy",)`)
and timed against ONNX Runtime by `wpk bench` (each in fresh processes, `--rounds`). Ratio = ONNX
Runtime median / plan median, the median of the ratios within each round (above 1: ours faster).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from woodpecker.measure.threads import configure_threads


def chain_model(channels: int, size: int, layers: int, kernel: int, path: Path) -> None:
    """`layers` Conv (`kernel` x `kernel`, same padding, bias) + Relu on a (1, channels, size, size) input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights, x = [], [], "x"
    scale = (2.0 / (channels * kernel * kernel)) ** 0.5  # He initialization keeps values in range
    for i in range(layers):
        w = rng.standard_normal((channels, channels, kernel, kernel)).astype(np.float32) * scale
        weights += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32) * 0.1, f"b{i}"),
        ]
        pad = kernel // 2
        nodes.append(
            helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[kernel] * 2, pads=[pad] * 4)
        )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x = f"r{i}"
    shape = [1, channels, size, size]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)],
        weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="64x56,128x28,256x14,512x7", help="channels x pixels per side")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--kernel", type=int, default=3)
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--records", default="out/chain-records.sqlite")
    parser.add_argument("--out", default="out/chain")
    args = parser.parse_args()
    threads = configure_threads(args.threads)

    import woodpecker
    from woodpecker.bench import BenchSettings, bench

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{'shape':>10} {'plan ms':>9} {'ORT ms':>9} {'plan GF/s':>10} {'ORT GF/s':>9} {'ORT/plan':>9}")
    for shape in args.shapes.split(","):
        channels, size = (int(v) for v in shape.split("x"))
        model = out / f"chain_{channels}x{size}_k{args.kernel}.onnx"
        chain_model(channels, size, args.layers, args.kernel, model)
        plan = woodpecker.optimize(
            model, budget=args.budget, records=args.records, libraries=("numpy",), threads=threads, progress=False
        )
        saved = plan.save(out / f"{model.stem}.plan")
        report = bench(saved, ["onnxruntime"], BenchSettings(rounds=args.rounds, threads=threads))
        times = {r["runtime"]: r["median_ms"] for r in report["results"]}
        flops = 2.0 * channels * channels * args.kernel**2 * size * size * args.layers
        print(
            f"{shape:>10} {times['woodpecker']:9.3f} {times['onnxruntime']:9.3f}"
            f" {flops / times['woodpecker'] / 1e6:10.0f} {flops / times['onnxruntime'] / 1e6:9.0f}"
            f" {report['speedup_vs_best_fp32_peer']:8.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
