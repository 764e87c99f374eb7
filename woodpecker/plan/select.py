"""Plan-level exploration: per-node winners are not the whole story, so time whole plans.

Per node, isolated timings miss what happens between nodes (layout conversions inside a
library, cold caches, thread-pool wake-ups). The explorer therefore builds a few complete
candidate plans, times each end to end on random input in a process of its own (like
`wpk bench` times peers; see plan/candidate_worker.py), and keeps the fastest:
- "per-node": every node's fastest measured kernel (library runs merged into one call);
- "generated": every node that has a correct generated kernel on its fastest one, the rest as
  in "per-node". Libraries' thread pools slow the kernels around them (ONNX Runtime's pool
  on a ResNet-18 global pool cost 1.5 ms of Halide time), which isolated timings cannot see;
- "all-<library>": every node on one graph library, i.e. that library running the whole
  optimized graph. It is what the per-node plan must beat, and it wins while it is faster.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from woodpecker.errors import WoodpeckerError
from woodpecker.graph.ir import Graph
from woodpecker.kernels import registry
from woodpecker.kernels.base import importable
from woodpecker.measure.threads import configure_threads
from woodpecker.plan.choice import Choice
from woodpecker.plan.segments import MERGEABLE
from woodpecker.plan.serialize import graph_to_data

CANDIDATE_TIMEOUT_S = 900.0  # building (JIT) and timing one whole plan


@dataclass(frozen=True)
class PlanCandidate:
    name: str
    choices: list[Choice]
    executor: object | None = None
    median_s: float | None = None
    error: str | None = None


def candidate_choices(choices: list[Choice], libraries: tuple[str, ...]) -> dict[str, list[Choice]]:
    candidates = {"per-node": choices}
    generated = [_on_generated(c) for c in choices]
    if generated != choices:
        candidates["generated"] = generated
    for library in MERGEABLE:
        if library in libraries and (library != "openvino" or importable("openvino")):
            candidates[f"all-{library}"] = [_on_library(c, library) for c in choices]
    return candidates


def _on_generated(choice: Choice) -> Choice:
    ok = [c for c in choice.candidates if c["error"] is None and registry.get(c["impl"]).kind == "generated"]
    if not ok or registry.get(choice.impl).kind == "generated":
        return choice
    best = min(ok, key=lambda c: c["median_s"])
    return replace(
        choice,
        impl=best["impl"],
        config=best["config"],
        status="generated",
        median_s=best["median_s"],
        compile_s=best["compile_s"],
    )


def _on_library(choice: Choice, library: str) -> Choice:
    measured = next((c for c in choice.candidates if c["impl"] == library and c["error"] is None), None)
    return replace(
        choice,
        impl=library,
        config={},
        status="fallback" if choice.status == "fallback" else "library",
        median_s=measured["median_s"] if measured else None,
        compile_s=measured["compile_s"] if measured else None,
    )


def time_executor(
    executor, feeds: dict[str, np.ndarray], warmup: int = 3, runs: int = 20, max_seconds: float = 10.0
) -> float:
    for _ in range(warmup):
        executor.run(feeds)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs and time.perf_counter() - start < max_seconds:
        t0 = time.perf_counter()
        executor.run(feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def select_plan(
    graph: Graph,
    choices: list[Choice],
    libraries: tuple[str, ...],
    seed: int = 0,
    progress: bool = False,
    threads: int | None = None,
) -> tuple[PlanCandidate, list[PlanCandidate]]:
    """Time every candidate plan in its own process; return the fastest (with its executor built
    here) and all candidates with their times or errors."""
    from woodpecker.runtime.executor import Executor

    threads = configure_threads(threads)
    candidates = candidate_choices(choices, libraries)
    timed = []
    with tempfile.TemporaryDirectory(prefix="wpk-candidates-") as tmp:
        directory = Path(tmp)
        names = sorted(graph.constants)
        (directory / "graph.json").write_text(json.dumps({**graph_to_data(graph), "constants": names}))
        np.savez(directory / "constants.npz", **{f"c{i}": np.asarray(graph.constants[n]) for i, n in enumerate(names)})
        for name, candidate in tqdm(candidates.items(), desc="time plans", unit="plan", disable=not progress):
            (directory / f"{name}.json").write_text(json.dumps([c.to_json() for c in candidate]))
            result = _time_in_process(directory, name, threads, seed)
            timed.append(PlanCandidate(name, candidate, median_s=result.get("median_s"), error=result.get("error")))
    ok = [c for c in timed if c.median_s is not None]
    if not ok:
        raise WoodpeckerError("no candidate plan could be built: " + "; ".join(f"{c.name}: {c.error}" for c in timed))
    best = min(ok, key=lambda c: c.median_s)
    return replace(best, executor=Executor(graph, best.choices, progress)), timed


def _time_in_process(directory: Path, name: str, threads: int, seed: int) -> dict:
    command = [sys.executable, "-m", "woodpecker.plan.candidate_worker", str(directory), name, str(threads), str(seed)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CANDIDATE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CANDIDATE_TIMEOUT_S:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}
    return json.loads(lines[-1])
