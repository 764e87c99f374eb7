"""The Python API; the `wpk` commands are thin wrappers over these functions."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx

from woodpecker.errors import MemoryLimitError, WoodpeckerError
from woodpecker.explore.nodes import explore, summarize
from woodpecker.explore.select import select_plan
from woodpecker.explore.verify import Verification, verify
from woodpecker.graph.ir import Graph
from woodpecker.graph.onnx_import import import_model, load_onnx
from woodpecker.graph.passes import BLOCKED_PASSES, EXPAND_PASSES, optimize_graph
from woodpecker.graph.passes.layout import block_layout
from woodpecker.kernels.halide.common import native_vector_width
from woodpecker.measure.runner import LocalRunner, Runner
from woodpecker.options import LAYOUTS, OptimizeOptions, SearchOptions, build
from woodpecker.plan.plan import Plan
from woodpecker.records.database import Records
from woodpecker.records.fingerprint import fingerprint
from woodpecker.runtime.memory import check_model_memory


def optimize(model: str | Path | onnx.ModelProto, options: OptimizeOptions | None = None, **changes: Any) -> Plan:
    """Optimize an ONNX model for this machine and return a plan verified against ONNX Runtime.

    `options` (or the same names as keywords, e.g. `budget=4`): see woodpecker/options.py. `tie`:
    whole plans within this fraction of the fastest count as equally fast, and the one with the
    lowest peak memory is kept; `max_memory` passes over plans that need more; `memory`: "any"
    (default) lets the fastest plan through, "onnxruntime" only plans that peak no higher than ONNX
    Runtime running the same graph (see explore/select.py's `pick`)."""
    start = time.perf_counter()
    opts: OptimizeOptions = build(OptimizeOptions, options, **changes)
    proto = load_onnx(model)
    with _measuring(opts) as (runner, store):  # a bad --records or --ray fails here, before any work
        graph = import_model(proto, opts.batch)
        check_model_memory(graph, opts.max_memory)
        fused, others = graph_variants(graph, opts.layout)
        explored = [explore(g, _explore_options(opts), runner, store) for g in [fused, *others.values()]]
    alternatives = {label: (other, choices) for (label, other), choices in zip(others.items(), explored[1:])}

    def check(candidate: Graph, choices: list, executor) -> Verification:  # before a candidate is kept
        return verify(Plan(candidate, choices, executor=executor), proto, opts.batch, seed=opts.seed + 1234)

    best, timed = select_plan(
        fused,
        explored[0],
        opts.libraries,
        opts.seed,
        _progress(opts),
        opts.threads,
        alternatives=alternatives,
        tie=opts.tie,
        memory=opts.memory,
        verify=check,
        max_mib=opts.max_memory / 2**20 if opts.max_memory is not None else None,
    )
    optimized, choices = best.graph, best.choices
    meta = {
        "source_model": str(Path(model).resolve()) if isinstance(model, str | Path) else None,
        "batch": graph.values[graph.inputs[0]].shape[0] if graph.inputs else None,
        "strategy": opts.strategy,
        "budget": opts.budget,
        "layout": opts.layout,
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
    meta["selected"], meta["tie"], meta["memory_rule"] = best.name, opts.tie, opts.memory
    arena = best.executor.memory  # not `memory`: that names the selection rule above
    weights = sum(a.nbytes for a in optimized.constants.values())
    meta["memory"] = {"arena_bytes": arena.arena_bytes, "unplanned_bytes": arena.total_bytes, "weight_bytes": weights}
    if opts.max_memory is not None and arena.arena_bytes + weights > opts.max_memory:
        raise MemoryLimitError(
            f"the selected plan needs {(arena.arena_bytes + weights) / 2**20:.0f} MiB of activations and "
            f"weights, more than --max-memory {opts.max_memory / 2**20:.0f} MiB; nothing saved"
        )
    plan = Plan(optimized, choices, meta, executor=best.executor)
    plan.meta["verification"] = best.verification.to_json()
    plan.meta["summary"]["optimize_seconds"] = round(time.perf_counter() - start, 1)
    return plan


def tune(model: str | Path | onnx.ModelProto, options: SearchOptions | None = None, **changes: Any) -> dict:
    """Measure every distinct workload of a model into the records; no plan is written."""
    start = time.perf_counter()
    opts: SearchOptions = build(SearchOptions, options, **changes)
    proto = load_onnx(model)
    with _measuring(opts) as (runner, store):
        graph = import_model(proto, opts.batch)
        check_model_memory(graph, opts.max_memory)
        fused, others = graph_variants(graph, opts.layout)
        explored = [explore(g, _explore_options(opts), runner, store) for g in [fused, *others.values()]]
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


def _progress(opts: SearchOptions) -> bool:
    return sys.stderr.isatty() if opts.progress is None else opts.progress


def _explore_options(opts: SearchOptions) -> SearchOptions:
    return dataclasses.replace(opts, progress=_progress(opts))


@contextmanager
def _measuring(opts: SearchOptions) -> Iterator[tuple[Runner, Records]]:
    """The records and the runner, opened first so that a records file that cannot be written or a
    cluster that cannot be reached is reported before any work; closed at the end."""
    store = Records(opts.records)
    try:
        if opts.ray:
            from woodpecker.measure.ray_runner import RayRunner

            runner: Any = RayRunner(opts.ray, threads=opts.threads, timeout_s=opts.timeout_s, seed=opts.seed)
        else:
            runner = LocalRunner(threads=opts.threads, timeout_s=opts.timeout_s, seed=opts.seed)
        with runner:
            yield runner, store
    finally:
        store.close()


def load(directory: str | Path) -> Plan:
    return Plan.load(directory)
