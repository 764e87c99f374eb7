"""This machine's fp32 multiply-add peak, to read a kernel's GFLOPS against.

Usage: .venv/bin/python benchmarks/peak.py [--threads N] [--repeats 5]

Each thread runs independent chains of vector fused multiply-adds in registers (enough chains
to hide the instruction's latency), compiled for this CPU by the C compiler that links plans
(`-march=native`, vectors of one register: AVX-512, AVX2 or NEON). A
GFLOPS figure of `wpk profile` or `benchmarks/ops.py` divided by this says how much of the
arithmetic the cores can do a kernel uses; shared cloud cores move it from run to run (take
the best of `--repeats`). Prints the best and the median for one thread and for `--threads`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

SOURCE = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#if defined(__AVX512F__)
#define LANES 16 /* one register, 12 chains of 32 registers */
#define CHAINS 12
#elif defined(__AVX__)
#define LANES 8 /* wider generic vectors spill on 16 registers */
#define CHAINS 10
#else
#define LANES 4
#define CHAINS 10
#endif
typedef float vec __attribute__((vector_size(LANES * 4)));
static long iterations;
static void *run(void *out) {
    vec acc[CHAINS], b, c;
    for (int i = 0; i < LANES; i++) { b[i] = 1.0000001f; c[i] = 0.999999f; }
    for (int k = 0; k < CHAINS; k++) for (int i = 0; i < LANES; i++) acc[k][i] = (float)k;
    for (long n = 0; n < iterations; n++)
        for (int k = 0; k < CHAINS; k++) acc[k] = acc[k] * b + c;
    float sum = 0;
    for (int k = 0; k < CHAINS; k++) for (int i = 0; i < LANES; i++) sum += acc[k][i];
    *(float *)out = sum;  /* keeps the loop from being optimized away */
    return NULL;
}
int main(int argc, char **argv) {
    int threads = atoi(argv[1]);
    iterations = atol(argv[2]);
    pthread_t ids[256];
    float out[256];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int t = 0; t < threads; t++) pthread_create(&ids[t], NULL, run, &out[t]);
    for (int t = 0; t < threads; t++) pthread_join(ids[t], NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double seconds = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    printf("%f %f\n", 2.0 * LANES * CHAINS * iterations * threads / seconds / 1e9, out[0]);
    return 0;
}
"""
ITERATIONS = 60_000_000  # about 0.3 s per run at 150 GFLOPS per core


def build(directory: Path) -> Path:
    from woodpecker.compile.toolchain import compiler

    source, binary = directory / "peak.c", directory / "peak"
    source.write_text(SOURCE)
    command = [compiler(), "-O3", "-march=native", "-ffp-contract=fast", str(source), "-o", str(binary), "-lpthread"]
    subprocess.run(command, check=True)
    return binary


def gflops(binary: Path, threads: int) -> float:
    result = subprocess.run([str(binary), str(threads), str(ITERATIONS)], check=True, capture_output=True, text=True)
    return float(result.stdout.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wpk-peak-") as tmp:
        binary = build(Path(tmp))
        for threads in sorted({1, args.threads}):
            runs = [gflops(binary, threads) for _ in range(args.repeats)]
            print(f"{threads} thread(s): best {max(runs):.0f} GFLOPS, median {statistics.median(runs):.0f}")


if __name__ == "__main__":
    main()
