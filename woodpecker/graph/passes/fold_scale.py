"""Fold a constant per-channel Mul into the weights of the Conv or linear layer that produced it.

    MatMul(x, W) [+ b] -> [Transpose] -> Mul(., gamma)   becomes   MatMul(x, W * gamma) [+ b * gamma] -> [Transpose]

ConvNeXt's layer scale is exactly this (the Transpose moves channels back from last to second),
once per block: the Mul's pass over the feature map disappears. A Conv followed by such a Mul
folds the same way (one scale per output channel). The producer must apply nothing after its
bias (no activation, residual or pool), and feed only this path.
"""

from __future__ import annotations

import numpy as np

from woodpecker.graph.ir import Graph, Node
from woodpecker.graph.passes.weights import add_constant, scale_output_channels

FOLDED_ATTRS = ("activation", "residual", "pool", "depthwise", "expand")


def fold_scale(graph: Graph) -> Graph:
    out = graph.copy()
    changed = True
    while changed:
        changed = _fold_once(out)
    return out


def _fold_once(graph: Graph) -> bool:
    consumers, producers = graph.consumers(), graph.producers()
    for mul in graph.nodes:
        if mul.op != "Mul" or len(mul.inputs) != 2:
            continue
        for feature, constant in (mul.inputs, mul.inputs[::-1]):
            if constant not in graph.constants or feature in graph.constants:
                continue
            if graph.shape(feature) != graph.shape(mul.outputs[0]):  # the constant would broadcast it up
                continue
            path = _path(graph, feature, producers, consumers)
            if path is None:
                continue
            host, transpose = path
            axis = _channel_axis(graph, host, transpose)
            scale = _per_axis(np.asarray(graph.constants[constant]), graph.shape(mul.outputs[0]), axis)
            if scale is None:
                continue
            host = _scale_host(graph, host, scale)
            last = transpose or host  # now produces the Mul's output
            graph.nodes[graph.nodes.index(last)] = last.replace(outputs=mul.outputs)
            graph.nodes.remove(mul)
            return True
    return False


def _path(graph: Graph, name: str, producers, consumers) -> tuple[Node, Node | None] | None:
    """(host, transpose or None) producing `name`, each feeding only the next step."""
    node = producers.get(name)
    transpose = None
    if node is not None and node.op == "Transpose":
        transpose, name = node, node.inputs[0]
        if not graph.single_use(transpose.outputs[0], consumers):
            return None
        node = producers.get(name)
    if node is None or not graph.single_use(name, consumers):
        return None
    if node.op not in ("Conv", "MatMul") or any(node.attrs.get(k) for k in FOLDED_ATTRS):
        return None
    weight = node.inputs[1]
    if weight not in graph.constants or (node.op == "MatMul" and len(graph.shape(weight)) != 2):
        return None
    if len(node.inputs) > 2 and node.inputs[2] and node.inputs[2] not in graph.constants:
        return None
    return node, transpose


def _channel_axis(graph: Graph, host: Node, transpose: Node | None) -> int:
    """The axis of the Mul's operand along which the host's output channels run."""
    rank = len(graph.shape(host.outputs[0]))
    axis = 1 if host.op == "Conv" else rank - 1
    if transpose is None:
        return axis
    perm = list(transpose.attrs.get("perm", range(rank)[::-1]))
    return perm.index(axis)


def _per_axis(array: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """`array` as one value per index of `axis` of `shape`, when it broadcasts that way and only that way."""
    if array.ndim > len(shape):
        return None
    full = (1,) * (len(shape) - array.ndim) + array.shape
    if any(size != 1 for i, size in enumerate(full) if i != axis) or full[axis] not in (1, shape[axis]):
        return None
    return np.broadcast_to(array.reshape(-1), (shape[axis],)).astype(np.float32)


def _scale_host(graph: Graph, host: Node, scale: np.ndarray) -> Node:
    """The host, in place in the graph, reading its weights (and bias) times `scale` (one value per
    output channel) as new constants."""
    inputs = list(host.inputs)
    scaled = scale_output_channels(host, np.asarray(graph.constants[inputs[1]], np.float32), scale)
    names = [add_constant(graph, f"{inputs[1]}__scaled", scaled.astype(np.float32))]
    if len(inputs) > 2 and inputs[2]:
        bias = np.asarray(graph.constants[inputs[2]]) * scale
        names.append(add_constant(graph, f"{inputs[2]}__scaled", bias.astype(np.float32)))
    inputs[1 : 1 + len(names)] = names
    scaled_host = host.replace(inputs=tuple(inputs))
    graph.nodes[graph.nodes.index(host)] = scaled_host
    return scaled_host
