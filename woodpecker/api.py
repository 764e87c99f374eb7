"""The Python API; the `wpk` commands are thin wrappers over these functions."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import onnx

from woodpecker.errors import PlanError, WoodpeckerError
from woodpecker.graph.ir import Graph
from woodpecker.graph.onnx_import import import_model, load_onnx
from woodpecker.graph.passes import BLOCKED_PASSES, EXPAND_PASSES, optimize_graph
from woodpecker.graph.passes.layout import block_layout
from woodpecker.kernels import registry
from woodpecker.kernels.generated.common import native_vector_width
from woodpecker.measure.runner import LocalRunner
from woodpecker.plan.choice import Choice
from woodpecker.plan.explore import ExploreOptions, explore, summarize
from woodpecker.plan.plan import Plan
from woodpecker.plan.select import MEMORY_RULES, TIE, select_plan
from woodpecker.plan.verify import verify
from woodpecker.records.database import Records
from woodpecker.records.fingerprint import fingerprint
from woodpecker.search.strategies import STRATEGIES

LAYOUTS = ("blocked", "plain")


def optimize(
    model: str | Path | onnx.ModelProto,
    *,
    budget: int = 8,
    strategy: str = "anneal",
    records: str | Path | None = None,
    batch: int | None = None,
    libraries: tuple[str, ...] | None = None,
    seed: int = 0,
    patience: int = 0,
    seconds: float = 0.0,
    progress: bool | None = None,
    threads: int | None = None,
    timeout_s: float = 120.0,
    ray: str | None = None,
    layout: str = "blocked",
    tie: float = TIE,
    memory: str = "onnxruntime",
) -> Plan:
    """Optimize an ONNX model for this machine and return a plan verified against ONNX Runtime.
    `tie`: whole plans within this fraction of the fastest count as equally fast, and the one
    with the lowest peak memory is kept; `memory`: "onnxruntime" keeps only plans that peak no
    higher than ONNX Runtime running the same graph, "any" does not (see plan/select.py's `pick`)."""
    start = time.perf_counter()
    options = _options(budget, strategy, libraries, seed, progress, patience, seconds)
    if tie < 0:
        raise WoodpeckerError(f"--tie must not be negative, got {tie * 100:g}")
    if memory not in MEMORY_RULES:
        raise WoodpeckerError(f"unknown --memory '{memory}'; choose from {', '.join(MEMORY_RULES)}")
    proto = load_onnx(model)
    graph = import_model(proto, batch)
    fused, others = graph_variants(graph, layout)
    explored = _explore([fused, *others.values()], options, records, threads, timeout_s, ray)
    alternatives = {label: (other, choices) for (label, other), choices in zip(others.items(), explored[1:])}
    best, timed = select_plan(
        fused,
        explored[0],
        options.libraries,
        seed,
        options.progress,
        threads,
        alternatives=alternatives,
        tie=tie,
        memory=memory,
    )
    optimized, choices = best.graph, best.choices
    meta = {
        "source_model": str(Path(model).resolve()) if isinstance(model, str | Path) else None,
        "batch": graph.values[graph.inputs[0]].shape[0] if graph.inputs else None,
        "strategy": strategy,
        "budget": budget,
        "layout": layout,
        "hardware": fingerprint(),
        "summary": summarize(graph, optimized, choices, time.perf_counter() - start),
    }
    meta["plan_candidates"] = {
        c.name: {
            "median_ms": c.median_s * 1e3 if c.median_s else None,
            "resident_mib": c.resident_mib,
            "peak_mib": c.peak_mib,
            "error": c.error,
        }
        for c in timed
    }
    meta["selected"], meta["tie"], meta["memory_rule"] = best.name, tie, memory
    arena = best.executor.memory  # not `memory`: that names the selection rule above
    weights = sum(a.nbytes for a in optimized.constants.values())
    meta["memory"] = {"arena_bytes": arena.arena_bytes, "unplanned_bytes": arena.total_bytes, "weight_bytes": weights}
    plan = Plan(optimized, choices, meta, executor=best.executor)
    check = verify(plan, proto, batch, seed=seed + 1234)
    if not check.ok:
        raise PlanError(f"the plan does not match ONNX Runtime: {check.describe()}; not saved")
    plan.meta["verification"] = {
        "output_error": check.output_error,
        "difference_error": check.difference_error,
        "input_sensitive": check.input_sensitive,
    }
    plan.meta["summary"]["optimize_seconds"] = round(time.perf_counter() - start, 1)
    return plan


def tune(
    model: str | Path | onnx.ModelProto,
    *,
    budget: int = 8,
    strategy: str = "anneal",
    records: str | Path | None = None,
    batch: int | None = None,
    libraries: tuple[str, ...] | None = None,
    seed: int = 0,
    patience: int = 0,
    seconds: float = 0.0,
    progress: bool | None = None,
    threads: int | None = None,
    timeout_s: float = 120.0,
    ray: str | None = None,
    layout: str = "blocked",
) -> dict:
    """Measure every distinct workload of a model into the records; no plan is written."""
    start = time.perf_counter()
    options = _options(budget, strategy, libraries, seed, progress, patience, seconds)
    fused, others = graph_variants(import_model(model, batch), layout)
    explored = _explore([fused, *others.values()], options, records, threads, timeout_s, ray)
    best = {c.workload: c for choices in explored for c in choices}
    return {
        "workloads": len(best),
        "measured_candidates": sum(len(c.candidates) for c in best.values()),
        "best": [
            {"workload": c.workload, "node": c.node, "impl": c.impl, "median_s": c.median_s} for c in best.values()
        ],
        "seconds": round(time.perf_counter() - start, 1),
    }


def with_layout(graph: Graph, layout: str) -> Graph:
    """`blocked`: NCHW[b]c through the graph, b the host's float vector width; `plain`: NCHW."""
    if layout == "plain":
        return graph
    if layout != "blocked":
        raise WoodpeckerError(f"unknown layout '{layout}'; choose from {', '.join(LAYOUTS)}")
    return block_layout(graph, native_vector_width())


def graph_variants(graph: Graph, layout: str) -> tuple[Graph, dict[str, Graph]]:
    """The optimized graph with the blocked fusions (pool and depthwise -> 1x1 stages), and the
    alternatives that differ from it: "unfused" without them, "expanded" with the 1x1 expansions
    fused into the depthwise convolutions instead. select_plan times them all, since whether a
    fused kernel beats the two it replaces shows only in whole runs."""
    unfused = with_layout(optimize_graph(graph), layout)
    if layout != "blocked":
        return unfused, {}
    fused = optimize_graph(unfused, BLOCKED_PASSES)
    expanded = optimize_graph(unfused, EXPAND_PASSES)
    kept = {"unfused": unfused} if unfused.nodes != fused.nodes else {}
    if any(node.attrs.get("expand") for node in expanded.nodes):
        kept["expanded"] = expanded
    return fused, kept


def _options(
    budget: int,
    strategy: str,
    libraries: tuple[str, ...] | None,
    seed: int,
    progress: bool | None,
    patience: int = 0,
    seconds: float = 0.0,
) -> ExploreOptions:
    if strategy not in STRATEGIES:
        raise WoodpeckerError(f"unknown strategy '{strategy}'; choose from {', '.join(STRATEGIES)}")
    if budget < 1:
        raise WoodpeckerError(f"--budget must be at least 1, got {budget}")
    unknown = sorted(set(libraries or ()) - set(registry.LIBRARIES))
    if unknown:
        raise WoodpeckerError(f"unknown libraries {unknown}; choose from {', '.join(registry.LIBRARIES)}")
    progress = sys.stderr.isatty() if progress is None else progress
    return ExploreOptions(
        budget=budget,
        strategy=strategy,
        seed=seed,
        progress=progress,
        patience=patience,
        seconds=seconds,
        **({"libraries": tuple(libraries)} if libraries is not None else {}),
    )


def _explore(
    graphs: list[Graph], options: ExploreOptions, records, threads: int | None, timeout_s: float, ray: str | None
) -> list[list[Choice]]:
    """Each graph explored in turn with one runner; workloads they share are measured once (records)."""
    store = Records(records)
    try:
        if ray:
            from woodpecker.measure.ray_runner import RayRunner

            runner = RayRunner(ray, threads=threads, timeout_s=timeout_s, seed=options.seed)
        else:
            runner = LocalRunner(threads=threads, timeout_s=timeout_s, seed=options.seed)
        with runner:
            return [explore(graph, options, runner, store) for graph in graphs]
    finally:
        store.close()


def load(directory: str | Path) -> Plan:
    return Plan.load(directory)
