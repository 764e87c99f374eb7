"""How fast saved plans load: `woodpecker.load` + first `run`, each plan in a fresh process.

Usage: .venv/bin/python benchmarks/load.py out/bench/resnet50-b1.plan out/bench/vgg16-b1.plan ...

Per plan (median of --repeats fresh processes): seconds to import woodpecker, to load the plan
(checksums, graph, compiled kernels), to run it the first time (library segments are compiled
then), the median of the runs after it, and the process's peak resident memory (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np, woodpecker
t1 = time.perf_counter()
plan = woodpecker.load(sys.argv[1])
t2 = time.perf_counter()
feeds = {n: np.random.default_rng(0).standard_normal(s).astype(d) for n, (s, d) in plan.input_specs.items()}
plan.run(feeds)
t3 = time.perf_counter()
runs = []
for _ in range(20):
    start = time.perf_counter()
    plan.run(feeds)
    runs.append(time.perf_counter() - start)
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_run_s": t3 - t2,
                  "run_ms": float(np.median(runs)) * 1e3, "peak_mib": peak / 1024}))
"""


def measure(plan: str) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, plan], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{plan}: {result.stderr.strip().splitlines()[-1]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plans", nargs="+")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    header = ("import s", "load s", "1st run s", "load+1st", "run ms", "peak MiB")
    print(f"{'plan':36s} " + " ".join(f"{h:>9s}" for h in header))
    for plan in args.plans:
        samples = [measure(plan) for _ in range(args.repeats)]
        for sample in samples:
            sample["total_s"] = sample["load_s"] + sample["first_run_s"]
        m = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
        print(
            f"{plan[-36:]:36s} {m['import_s']:9.2f} {m['load_s']:9.2f} {m['first_run_s']:9.2f} {m['total_s']:9.2f} "
            f"{m['run_ms']:9.2f} {m['peak_mib']:9.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
