"""`wpk profile`: where a plan's time goes, step by step, beside what each node's kernels measured alone.

The optimizer keeps every node's isolated timings (its own kernels' best, each library's); the
plan runs its steps in context. Side by side they show which layers the own kernels lose to a
library and by how much. Whether a step runs slower inside the plan than alone is told by the
`again` column instead, timed in the same minutes: on this machine a whole run's speed moves
by 20-40 % from one hour to the next, more than the difference being looked for.
"""

from __future__ import annotations

from pathlib import Path

from woodpecker.kernels import registry
from woodpecker.kernels.workload import Workload
from woodpecker.plan.choice import Choice

OWN = "own"  # the column of a node's fastest correct generated kernel


def profile(directory: str | Path, runs: int = 20) -> dict:
    """Median ms per step inside whole-plan runs, with the alone-timed alternatives of its nodes."""
    from woodpecker.plan.plan import Plan

    plan = Plan.load(directory)
    executor = plan.executor()
    feeds = plan.sample_feeds(seed=0)
    for _ in range(3):  # warm-up: first runs page in weights and wake thread pools
        executor.run(feeds)
    timed = executor.profile(feeds, runs)
    choices = {c.node: c for c in plan.choices}
    nodes = {n.name: n for n in plan.graph.nodes}
    steps = []
    for step, (_, seconds, again) in zip(executor.steps, timed):
        members = step.members
        workloads = [Workload.of(plan.graph, nodes[name]) for name in members]
        flops = sum(w.flops() for w in workloads if w.op in ("Conv", "Gemm", "MatMul"))  # multiply-adds
        alone = [_alone(choices[name]) for name in members]
        columns = {impl for times in alone for impl in times}
        steps.append(
            {
                "step": step.node,
                "impl": step.impl,
                "nodes": len(members),
                "ms": seconds * 1e3,
                "again_ms": again * 1e3 if again is not None else None,
                "gflops": flops / seconds / 1e9 if flops and seconds > 0 else None,
                # Summed over the step's nodes, where every node was timed on that kernel.
                "alone_ms": {
                    impl: sum(times[impl] for times in alone) for impl in columns if all(impl in t for t in alone)
                },
                "members": [{"node": name, "alone_ms": times} for name, times in zip(members, alone)],
            }
        )
    total = sum(s["ms"] for s in steps)
    return {
        "plan": str(directory),
        "selected": plan.meta.get("selected"),
        "batch": plan.meta.get("batch"),
        "runs": runs,
        "total_ms": total,
        "steps": steps,
    }


def _alone(choice: Choice) -> dict[str, float]:
    """ms of the node's kernels measured alone by the optimizer: OWN (the best generated) and each library."""
    times: dict[str, float] = {}
    for c in choice.candidates:
        if c["error"] is not None or c["median_s"] is None:
            continue
        column = OWN if registry.capabilities(c["impl"]).compiled else c["impl"]
        times[column] = min(times.get(column, float("inf")), c["median_s"] * 1e3)
    return times


def format_profile(report: dict, top: int | None = None) -> str:
    measured = {impl for s in report["steps"] for m in s["members"] for impl in m["alone_ms"]}
    columns = sorted(measured, key=lambda c: (c != OWN, c))
    header = f"{'step':<48}{'kernel':<24}{'ms':>8}{'again':>8}{'share':>7}{'GFLOPS':>8}  | "
    steps = sorted(report["steps"], key=lambda s: -s["ms"])[:top] if top else report["steps"]
    total = report["total_ms"] or float("inf")  # no steps: a graph of views only
    lines = [
        f"plan {report['plan']} ({report['selected']}), batch {report['batch']}: "
        f"steps sum to {report['total_ms']:.2f} ms (median of {report['runs']} runs each)",
        header + "alone: " + "".join(f"{c:>12}" for c in columns),
        "-" * (len(header) + 7 + 12 * len(columns)),
    ]

    def alone(times: dict[str, float]) -> str:
        return "".join(f"{times[c]:>12.3f}" if c in times else f"{'-':>12}" for c in columns)

    tail = "  | "  # where the alone columns start, on every line
    for s in steps:
        name = s["step"] if s["nodes"] == 1 else f"{s['impl']} segment ({s['nodes']} nodes)"
        gflops = f"{s['gflops']:.0f}" if s["gflops"] else "-"
        again = f"{s['again_ms']:.3f}" if s["again_ms"] is not None else "-"
        lines.append(
            f"{_short(name):<48}{s['impl']:<24}{s['ms']:>8.3f}{again:>8}{s['ms'] / total:>7.1%}{gflops:>8}"
            f"{tail}{alone(s['alone_ms'])}"
        )
        if s["nodes"] > 1:  # what each of its nodes measured alone
            lines += [
                f"  {_short(m['node'], 44):<{len(header) - len(tail) - 2}}{tail}{alone(m['alone_ms'])}"
                for m in s["members"]
            ]
    lines.append(
        "again: the step called once more right after its whole run, inputs and weights still in cache"
        " (- for a step that writes over its input)"
    )
    lines.append(
        f"alone: the node's kernels as the optimizer timed them by themselves ({OWN}: its best generated kernel),"
        " summed over a merged step's nodes, which are listed under it"
    )
    return "\n".join(lines)


def _short(name: str, width: int = 46) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3) :]
