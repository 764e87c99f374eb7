"""Trials per minute with candidates JIT-compiled in the measuring worker vs compiled ahead of
time in parallel processes (then timed one by one), on the same configs of real conv layers.

Usage: .venv/bin/python benchmarks/compile_parallel.py out/bench/resnet50.onnx [--layers 3] [--trials 32]

Also prints the median ratio of the GFLOPS each way measured for the same config: the two
paths compile the same code, so it should be close to 1.
"""

from __future__ import annotations

import argparse
import statistics
import time

from woodpecker.measure.threads import configure_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4, help="candidates per batch, as `wpk optimize` uses")
    args = parser.parse_args()
    configure_threads()

    from woodpecker.compile.pool import default_processes
    from woodpecker.graph.onnx_import import import_model
    from woodpecker.graph.passes import optimize_graph
    from woodpecker.kernels.halide.conv2d import HalideConv2d
    from woodpecker.kernels.workload import Workload
    from woodpecker.measure.runner import LocalRunner

    graph = optimize_graph(import_model(args.model))
    convs = [n for n in graph.nodes if n.op == "Conv"]
    step = max(1, len(convs) // args.layers)
    halide = HalideConv2d()
    print(f"{'layer':<48}{'JIT in worker':>16}{f'AOT x{default_processes()}':>12}{'speed-up':>10}{'GFLOPS ratio':>14}")
    for node in convs[::step][: args.layers]:
        workload = Workload.of(graph, node)
        configs = halide.space(workload).sample(args.trials, seed=1)
        rates, gflops = [], []
        for processes in (0, None):
            with LocalRunner(compile_processes=processes) as runner:
                runner.measure_batch(workload, halide.name, configs[:2])  # start the processes first
                start = time.perf_counter()
                results = []
                for i in range(0, len(configs), args.batch):
                    results += runner.measure_batch(workload, halide.name, configs[i : i + args.batch])
                rates.append(len(configs) / (time.perf_counter() - start) * 60)
            gflops.append([workload.flops() / r.median_s / 1e9 if r.ok else None for r in results])
        ratios = [a / j for j, a in zip(*gflops) if j and a]
        print(
            f"{node.name[:47]:<48}{rates[0]:>11.0f}/min{rates[1]:>8.0f}/min{rates[1] / rates[0]:>9.2f}x"
            f"{statistics.median(ratios):>14.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
