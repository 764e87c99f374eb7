"""System-level exploration: per node, time generated and library kernels, keep the fastest correct.

Identical workloads (same op, shapes, attributes) are measured once per run, and every
measurement goes to the tuning records so a later run never measures it again.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

from tqdm import tqdm

from woodpecker.errors import UnsupportedOpError
from woodpecker.graph.ir import Graph, Node
from woodpecker.kernels import registry
from woodpecker.kernels.workload import Workload
from woodpecker.measure.result import MeasureResult
from woodpecker.measure.runner import Runner
from woodpecker.options import SearchOptions
from woodpecker.plan.choice import Choice
from woodpecker.records.database import Records
from woodpecker.search.strategies import STRATEGIES

TRIALS_PER_UPDATE = 4  # configurations measured between two updates of the search strategy


def explore(graph: Graph, options: SearchOptions, runner: Runner, records: Records | None) -> list[Choice]:
    decided: dict[str, Choice] = {}
    choices = []
    bar = tqdm(graph.nodes, desc="optimize", unit="node", disable=not options.progress, leave=False)
    for node in bar:
        bar.set_postfix_str(f"{node.op} {node.name[-40:]}")
        workload = Workload.of(graph, node)
        key = workload.key()
        if key not in decided:
            decided[key] = _choose(node, workload, key, options, runner, records)
        choices.append(replace(decided[key], node=node.name))
    bar.close()
    return choices


def _choose(
    node: Node, workload: Workload, key: str, options: SearchOptions, runner: Runner, records: Records | None
) -> Choice:
    impls = registry.candidates(workload, options.libraries)
    native = [i for i in impls if i.name != registry.FALLBACK]
    views = [i for i in impls if node.op in i.capabilities.view_ops]
    if views:  # no work to measure: the op is a view of its input's bytes
        return Choice(node.name, views[0].name, {}, "library", workload=key)
    results: list[MeasureResult] = []
    spaces = {impl.name: impl.space(workload) for impl in impls}
    total = sum(options.budget if space.knobs else 1 for space in spaces.values())
    with tqdm(total=total, desc=f"  {node.op}", unit="cand", leave=False, disable=not options.progress) as bar:
        for impl in impls:
            space = spaces[impl.name]
            if not space.knobs:
                results += measure_with_records(workload, key, impl.name, [{}], runner, records)
                bar.update()
                continue
            results += _tune(workload, key, impl.name, space, options, runner, records, bar)
    good = [r for r in results if r.ok]
    if not good:
        reasons = "; ".join(f"{r.impl}: {r.error}" for r in results[-3:])
        raise UnsupportedOpError(
            f"node {node.name} ({node.op}, output shape {workload.output_shape}): "
            f"no implementation ran correctly ({reasons})"
        )
    best = min(good, key=lambda r: r.median_s)
    status = "fallback" if not native else registry.status(best.impl)
    return Choice(
        node.name, best.impl, best.config, status, best.median_s, best.compile_s, key, [r.to_json() for r in results]
    )


def _tune(
    workload: Workload,
    key: str,
    impl: str,
    space,
    options: SearchOptions,
    runner: Runner,
    records: Records | None,
    bar: tqdm,
) -> list[MeasureResult]:
    """Propose, measure, observe in batches until the budget (trials or seconds) is spent, the strategy
    has nothing new, or `patience` batches in a row brought no improvement."""
    if records is not None:  # a workload tuned before is never searched again
        name = registry.record_name(impl)
        known = records.results(key, name)
        if len(known) >= options.budget:
            bar.update(options.budget)
            return known
    if records is not None:  # start from the best configs of the most similar recorded workloads
        description = workload.description()
        records.describe(key, description)
        space = space.starting_from(records.transfer(key, description, name), options.seed)
    strategy = STRATEGIES[options.strategy](space, options.seed)
    deadline = time.monotonic() + options.seconds if options.seconds else math.inf
    results: list[MeasureResult] = []
    best, stale = math.inf, 0
    while len(results) < options.budget and time.monotonic() < deadline:
        configs = strategy.propose(min(TRIALS_PER_UPDATE, options.budget - len(results)))
        if not configs:
            break
        batch = measure_with_records(workload, key, impl, configs, runner, records)
        bar.update(len(batch))
        strategy.observe(configs, [r.median_s for r in batch])
        results += batch
        batch_best = min(r.median_s for r in batch)
        best, stale = (batch_best, 0) if batch_best < best else (best, stale + 1)
        if options.patience and stale >= options.patience:
            break
    return results


def measure_with_records(
    workload: Workload, key: str, impl: str, configs: list[dict], runner, records: Records | None
) -> list[MeasureResult]:
    """Measure what the records do not know yet, as one batch (a Ray cluster runs it in parallel),
    and record it."""
    name = registry.record_name(impl) if records is not None else None
    known = {i: records.lookup(key, name, c) for i, c in enumerate(configs)} if name else {}
    missing = [i for i in range(len(configs)) if known.get(i) is None]
    fresh = runner.measure_batch(workload, impl, [configs[i] for i in missing]) if missing else []
    for i, result in zip(missing, fresh):
        known[i] = result
        if name:
            records.add(key, result, name)  # failures too: a config that crashed or hung is never tried again
    return [known[i] for i in range(len(configs))]


def summarize(graph_before: Graph, graph: Graph, choices: list[Choice], seconds: float) -> dict:
    by_status = {s: sum(c.status == s for c in choices) for s in ("generated", "library", "fallback")}
    return {
        "nodes_before": len(graph_before.nodes),
        "nodes": len(graph.nodes),
        "fused": sum(len(n.fused) for n in graph.nodes),
        "relayouts": sum(n.op == "Relayout" for n in graph.nodes),
        **by_status,
        "by_impl": {impl: sum(c.impl == impl for c in choices) for impl in sorted({c.impl for c in choices})},
        "fallback_nodes": [c.node for c in choices if c.status == "fallback"],
        "measured_candidates": sum(len(c.candidates) for c in {c.workload: c for c in choices}.values()),
        "optimize_seconds": round(seconds, 1),
    }
