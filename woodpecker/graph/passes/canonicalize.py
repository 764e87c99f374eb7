"""Rewrite ops into equivalent ones that have kernels (and a blocked layout).

- ReduceMean over H and W of an NCHW tensor (MNASNet's and ShuffleNet's `x.mean([2, 3])`) is a
  GlobalAveragePool, followed by a Flatten when the reduced axes are not kept.
"""

from __future__ import annotations

from woodpecker.graph.ir import Graph, Node, Value


def canonicalize(graph: Graph) -> Graph:
    out = graph.copy()
    nodes = []
    for node in out.nodes:
        nodes.extend(_spatial_mean(out, node) or [node])
    out.nodes = nodes
    return out


def _spatial_mean(graph: Graph, node: Node) -> list[Node] | None:
    if node.op != "ReduceMean" or len(graph.shape(node.inputs[0])) != 4:
        return None
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1] in graph.constants:  # opset 18: an input
        axes = graph.constants[node.inputs[1]].tolist()
    if axes is None or sorted(a % 4 for a in axes) != [2, 3]:
        return None
    source, target = node.inputs[0], node.outputs[0]
    if node.attrs.get("keepdims", 1):
        return [Node(node.name, "GlobalAveragePool", (source,), (target,))]
    pooled = f"{target}__pooled"
    n, c = graph.shape(source)[:2]
    graph.values[pooled] = Value(pooled, (n, c, 1, 1), graph.values[target].dtype)
    return [
        Node(node.name, "GlobalAveragePool", (source,), (pooled,)),
        Node(f"{node.name}/flatten", "Flatten", (pooled,), (target,), {"axis": 1}),
    ]
