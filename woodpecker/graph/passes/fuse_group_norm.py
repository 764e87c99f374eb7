"""Fuse GroupNorm, as PyTorch exports it, into one FusedGroupNorm node.

    Reshape(x: [N, C, ...] -> [N, G, -1]) -> InstanceNormalization(s, b) -> Reshape(-> x's shape)
        -> [Mul(per-channel γ)] -> [Add(per-channel β)]

(nn.GroupNorm before opset 18: MetaFormer/PoolFormer's one-group norm, ResNet-GN, diffusion
U-Nets), and an InstanceNormalization of a feature map with the same scale and shift after it.
One node instead of five: its kernel reads x in the graph's layout (blocked when whole channel
blocks make a group), so the Reshapes no longer force plain values and conversions.

Attributes: `groups`, `epsilon`, `rank` (of x). Inputs: x, then one scale and one bias per channel (constants:
the InstanceNormalization's per-group ones folded with γ and β).
"""

from __future__ import annotations

import numpy as np

from woodpecker.graph.ir import Graph, Node, Value
from woodpecker.ops.fused import GROUP_NORM


def fuse_group_norm(graph: Graph) -> Graph:
    out = graph.copy()
    changed = True
    while changed:
        changed = False
        producers, consumers = out.producers(), out.consumers()
        for norm in out.nodes:
            fused = _match(out, norm, producers, consumers) if norm.op == "InstanceNormalization" else None
            if fused is None:
                continue
            node, absorbed, constants = fused
            for name, array in constants.items():
                out.constants[name] = array
                out.values[name] = Value(name, array.shape, "float32")
            out.replace_nodes(absorbed, node)
            changed = True
            break
    return out


def _match(graph: Graph, norm: Node, producers, consumers):
    """The fused node, the nodes it replaces and its new constants; also a plain InstanceNormalization
    of a feature map (a group per channel)."""
    if any(n not in graph.constants for n in norm.inputs[1:3]):
        return None
    grouped, normalized = norm.inputs[0], norm.outputs[0]
    before = producers.get(grouped)
    after = consumers.get(normalized, [None])[0] if graph.single_use(normalized, consumers) else None
    if before is not None and before.op == "Reshape" and after is not None and after.op == "Reshape":
        x, absorbed, current = before.inputs[0], [before, norm, after], after.outputs[0]
        if not graph.single_use(grouped, consumers) or graph.shape(current) != graph.shape(x):
            return None
        grouped_shape = graph.shape(grouped)
        if len(grouped_shape) != 3 or grouped_shape[0] != graph.shape(x)[0]:
            return None
        groups = grouped_shape[1]
    else:
        x, absorbed, current = grouped, [norm], normalized
        groups = graph.shape(x)[1] if len(graph.shape(x)) >= 3 else 0
    shape = graph.shape(x)
    if len(shape) < 3 or graph.values[x].dtype != "float32" or not groups or shape[1] % groups:
        return None
    channels = shape[1]
    per_group = [np.broadcast_to(graph.constants[n].astype(np.float32).ravel(), (groups,)) for n in norm.inputs[1:3]]
    scale = np.repeat(per_group[0], channels // groups).astype(np.float32)
    bias = np.repeat(per_group[1], channels // groups).astype(np.float32)
    for op in ("Mul", "Add"):
        reader = consumers.get(current, [None])[0] if graph.single_use(current, consumers) else None
        factor = _per_channel(graph, reader, current, channels) if reader is not None and reader.op == op else None
        if factor is None:
            continue
        if op == "Mul":
            scale, bias = scale * factor, bias * factor
        else:
            bias = bias + factor
        absorbed.append(reader)
        current = reader.outputs[0]
    name = f"{norm.name}__group_norm"
    constants = {f"{name}_scale": scale.astype(np.float32), f"{name}_bias": bias.astype(np.float32)}
    attrs = {"groups": groups, "epsilon": float(norm.attrs.get("epsilon", 1e-5)), "rank": len(shape)}
    return Node(name, GROUP_NORM, (x, *constants), (current,), attrs), absorbed, constants


def _per_channel(graph: Graph, node: Node, value: str, channels: int) -> np.ndarray | None:
    """The constant operand of `node` as one number per channel, if it is one ([C, 1, ...] or a scalar)."""
    other = node.inputs[1] if node.inputs[0] == value else node.inputs[0]
    array = graph.constants.get(other)
    if array is None or other == value or array.dtype != np.float32:
        return None
    rank = len(graph.shape(value))
    if array.ndim > rank or graph.shape(node.outputs[0]) != graph.shape(value):
        return None
    padded = array.reshape((1,) * (rank - array.ndim) + array.shape)
    if any(size != 1 for axis, size in enumerate(padded.shape) if axis != 1):
        return None
    return np.broadcast_to(padded.reshape(-1), (channels,)).astype(np.float32)
