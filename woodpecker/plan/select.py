"""Plan-level exploration: per-node winners are not the whole story, so time whole plans.

Per node, isolated timings miss what happens between nodes (layout conversions inside a
library, cold caches, thread-pool wake-ups). The explorer therefore builds a few complete
candidate plans, times each end to end on random input, and keeps the fastest:
- "per-node": every node's fastest measured kernel (library runs merged into one call);
- "all-<library>": every node on one graph library, i.e. that library running the whole
  optimized graph. It is what the per-node plan must beat, and it wins while it is faster.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace

import numpy as np

from woodpecker.errors import WoodpeckerError
from woodpecker.graph.ir import Graph
from woodpecker.kernels.base import importable
from woodpecker.plan.choice import Choice
from woodpecker.plan.segments import MERGEABLE
from woodpecker.plan.verify import random_feeds


@dataclass(frozen=True)
class PlanCandidate:
    name: str
    choices: list[Choice]
    executor: object | None = None
    median_s: float | None = None
    error: str | None = None


def candidate_choices(choices: list[Choice], libraries: tuple[str, ...]) -> dict[str, list[Choice]]:
    candidates = {"per-node": choices}
    for library in MERGEABLE:
        if library in libraries and (library != "openvino" or importable("openvino")):
            candidates[f"all-{library}"] = [_on_library(c, library) for c in choices]
    return candidates


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
    graph: Graph, choices: list[Choice], libraries: tuple[str, ...], seed: int = 0, progress: bool = False
) -> tuple[PlanCandidate, list[PlanCandidate]]:
    from woodpecker.runtime.executor import Executor

    specs = {n: (graph.values[n].shape, graph.values[n].dtype) for n in graph.inputs}
    feeds = random_feeds(specs, seed)
    timed = []
    for name, candidate in candidate_choices(choices, libraries).items():
        try:
            executor = Executor(graph, candidate, progress)
            timed.append(PlanCandidate(name, candidate, executor, time_executor(executor, feeds)))
        except WoodpeckerError as exc:  # e.g. a library that cannot compile the whole graph
            timed.append(PlanCandidate(name, candidate, error=str(exc)[:300]))
    ok = [c for c in timed if c.median_s is not None]
    if not ok:
        raise WoodpeckerError("no candidate plan could be built: " + "; ".join(f"{c.name}: {c.error}" for c in timed))
    best = min(ok, key=lambda c: c.median_s)
    return best, timed
