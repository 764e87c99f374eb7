"""`wpk inspect`: the optimized graph, what was fused, and which kernels can run each node."""

from __future__ import annotations

from pathlib import Path

from woodpecker.graph.onnx_import import import_model
from woodpecker.kernels import registry
from woodpecker.kernels.workload import Workload


def inspect_model(model: str | Path, batch: int | None = None, layout: str = "blocked") -> dict:
    from woodpecker.api import graph_variants

    graph = import_model(model, batch)
    optimized, _ = graph_variants(graph, layout)  # with the fusions; the plan may be built without them
    rows = []
    for node in optimized.nodes:
        workload = Workload.of(optimized, node)
        impls = [impl.name for impl in registry.candidates(workload)]
        generated = [i for i in impls if registry.capabilities(i).compiled]
        native = [i for i in impls if i != registry.FALLBACK]
        rows.append(
            {
                "name": node.name,
                "op": node.op,
                "fused": node.fused,
                "output_shape": list(workload.output_shape),
                "layout": _layout(optimized.values[node.outputs[0]].block),
                "coverage": "generated" if generated else "library" if native else "fallback",
                "implementations": impls,
            }
        )
    return {
        "model": str(model),
        "nodes_before": len(graph.nodes),
        "nodes": rows,
        "fusions": sum(len(r["fused"]) for r in rows),
        "relayouts": sum(r["op"] == "Relayout" for r in rows),
        "fallback": [r["name"] for r in rows if r["coverage"] == "fallback"],
    }


def format_inspection(report: dict) -> str:
    lines = [
        f"{report['model']}: {report['nodes_before']} nodes -> {len(report['nodes'])} after optimization, "
        f"{report['fusions']} operations fused, {report['relayouts']} layout conversions"
    ]
    header = f"{'op':<18}{'output shape':<22}{'layout':<10}{'fused':<22}{'coverage':<11}implementations / node"
    lines += [header, "-" * len(header)]
    for r in report["nodes"]:
        fused = "+".join(r["fused"]) or "-"
        lines.append(
            f"{r['op']:<18}{str(r['output_shape']):<22}{r['layout']:<10}{fused:<22}{r['coverage']:<11}"
            f"{','.join(r['implementations'])}  {r['name']}"
        )
    fallback = report["fallback"]
    listed = f": {', '.join(fallback)}" if fallback else ""
    lines.append(f"fallback to ONNX Runtime: {len(fallback)} node(s){listed}")
    return "\n".join(lines)


def _layout(block: int) -> str:
    return f"NCHW{block}c" if block else "NCHW"
