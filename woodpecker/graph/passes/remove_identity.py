"""Drop Identity, inference-time Dropout, a Cast to the type its input has already (attention
exports cast the float32 softmax to float32), and an Expand, Reshape or Flatten to the shape its
input has already (the attention mask's; the heads' output before they are merged), and a Slice
that keeps every element in order (GhostNet's `x[:, :out_channels]` of a concatenation that has
exactly that many): their output is their input."""

from __future__ import annotations

from woodpecker.graph.ir import Graph

IDENTITY_OPS = ("Identity", "Dropout")


def remove_identity(graph: Graph) -> Graph:
    out = graph.copy()
    alias: dict[str, str] = {}
    kept = []
    for node in out.nodes:
        node = node.replace(inputs=tuple(alias.get(n, n) for n in node.inputs))
        extra_outputs_used = node.op == "Dropout" and len(node.outputs) > 1 and node.outputs[1]
        if not _is_identity(out, node) or extra_outputs_used:
            kept.append(node)
            continue
        source, target = node.inputs[0], node.outputs[0]
        if source in out.constants:
            out.constants[target] = out.constants[source]
        elif target not in out.outputs:
            alias[target] = source
        elif source in out.inputs or source in out.outputs:
            kept.append(node)  # a graph input or output copied to an output: the copy is the node's job
        else:
            # Keep the graph's output name: make the producer write it directly.
            kept = [_rename_output(n, source, target) for n in kept]
            alias[source] = target
    out.nodes = kept
    return out


def _rename_output(node, old: str, new: str):
    if old not in node.outputs:
        return node.replace(inputs=tuple(new if n == old else n for n in node.inputs))
    return node.replace(outputs=tuple(new if n == old else n for n in node.outputs))


def _is_identity(graph: Graph, node) -> bool:
    if node.op == "Cast":
        return graph.values[node.inputs[0]].dtype == graph.values[node.outputs[0]].dtype
    if node.op in ("Expand", "Reshape", "Flatten"):
        return graph.shape(node.inputs[0]) == graph.shape(node.outputs[0])
    if node.op == "Slice":
        has_steps = len(node.inputs) > 4 and bool(node.inputs[4])
        steps = graph.constants.get(node.inputs[4]) if has_steps else None
        forward = not has_steps or (steps is not None and bool((steps > 0).all()))
        return forward and graph.shape(node.inputs[0]) == graph.shape(node.outputs[0])
    return node.op in IDENTITY_OPS
