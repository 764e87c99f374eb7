"""Remove nodes, constants and values that no graph output depends on."""

from __future__ import annotations

from woodpecker.graph.ir import Graph


def eliminate_dead(graph: Graph) -> Graph:
    out = graph.copy()
    live = set(out.outputs)
    kept = []
    for node in reversed(out.nodes):
        if any(o in live for o in node.outputs if o):
            kept.append(node)
            live.update(n for n in node.inputs if n)
    out.nodes = kept[::-1]
    live.update(out.inputs)
    out.constants = {k: v for k, v in out.constants.items() if k in live}
    out.values = {k: v for k, v in out.values.items() if k in live}
    return out
