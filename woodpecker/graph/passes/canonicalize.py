"""Rewrite ops into equivalent ones that have kernels (and a blocked layout).

- ReduceMean over H and W of an NCHW tensor (MNASNet's and ShuffleNet's `x.mean([2, 3])`) is a
  GlobalAveragePool, followed by a Flatten when the reduced axes are not kept.
- Pad by zeros on every side (Swin's window padding when the windows already fit) is an
  Identity, which `remove_identity` then removes.
- Einsum that is a batched matrix product (MaxViT's attention: `BGHID,BGHJD->BGHIJ`, and
  `BGHIJ,BGHJD->BGHID`) is a MatMul, after a Transpose of the last two axes when the contracted
  index is last in both operands.
- Split is one Slice per output (ShuffleNet written with torch.split, or any model that splits
  channels): each part then gets a generated copy kernel.
- Gather of one constant index (a vision transformer picking q, k and v out of one projection)
  is a Slice of that index, then a Reshape that drops the axis (a view, no copy).
"""

from __future__ import annotations

import numpy as np

from woodpecker.graph.ir import Graph, Node, Value


def canonicalize(graph: Graph) -> Graph:
    out = graph.copy()
    nodes = []
    for node in out.nodes:
        nodes.extend(
            _spatial_mean(out, node)
            or _gather_one(out, node)
            or _pad_by_nothing(out, node)
            or _einsum_matmul(out, node)
            or _split(out, node)
            or [node]
        )
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


def _gather_one(graph: Graph, node: Node) -> list[Node] | None:
    if node.op != "Gather" or node.inputs[1] not in graph.constants or node.inputs[0] in graph.constants:
        return None
    index = np.asarray(graph.constants[node.inputs[1]])
    if index.size != 1 or index.ndim > 1:
        return None
    shape = graph.shape(node.inputs[0])
    axis = node.attrs.get("axis", 0) % len(shape)
    start = int(index.ravel()[0]) % shape[axis]
    target = node.outputs[0]
    if index.ndim == 1:  # the axis stays, with one entry
        return [_slice(graph, node.name, node.inputs[0], target, start, start + 1, axis)]
    sliced = f"{target}__slice"
    kept = tuple(1 if a == axis else d for a, d in enumerate(shape))
    graph.values[sliced] = Value(sliced, kept, graph.values[target].dtype)
    target_shape = _constant(graph, f"{target}__shape", graph.shape(target))
    return [
        _slice(graph, node.name, node.inputs[0], sliced, start, start + 1, axis),
        Node(f"{node.name}/reshape", "Reshape", (sliced, target_shape), (target,)),
    ]


def _slice(graph: Graph, name: str, source: str, target: str, start: int, stop: int, axis: int) -> Node:
    """A Slice node of [start, stop) along `axis`, its bounds added as constants."""
    bounds = [_constant(graph, f"{target}__{b}", [v]) for b, v in (("starts", start), ("ends", stop), ("axes", axis))]
    return Node(name, "Slice", (source, *bounds), (target,))


def _constant(graph: Graph, name: str, values) -> str:
    graph.constants[name] = np.array(values, np.int64)
    graph.values[name] = Value(name, graph.constants[name].shape, "int64")
    return name


def _pad_by_nothing(graph: Graph, node: Node) -> list[Node] | None:
    pads = pad_widths(graph, node)
    if pads is None or any(pads):
        return None
    return [Node(node.name, "Identity", node.inputs[:1], node.outputs)]


def pad_value(graph: Graph, node: Node) -> float | None:
    """A constant-mode Pad's fill value, or None when it is not a plan-time constant."""
    if len(node.inputs) > 2 and node.inputs[2]:
        value = graph.constants.get(node.inputs[2])
        return None if value is None else float(np.ravel(value)[0])
    return float(node.attrs.get("value", 0.0))  # opset < 11: an attribute


def pad_widths(graph: Graph, node: Node) -> list[int] | None:
    """A Pad's begin and end widths per axis (ONNX order) when they are plan-time constants; else None."""
    if node.op != "Pad":
        return None
    rank = len(graph.shape(node.inputs[0]))
    if "pads" in node.attrs:  # opset < 11
        pads = list(node.attrs["pads"])
    elif len(node.inputs) > 1 and node.inputs[1] in graph.constants:
        pads = [int(v) for v in np.asarray(graph.constants[node.inputs[1]]).ravel()]
    else:
        return None
    axes_name = node.inputs[3] if len(node.inputs) > 3 else ""
    if not axes_name:
        return pads
    if axes_name not in graph.constants:
        return None
    axes = [int(a) % rank for a in np.asarray(graph.constants[axes_name]).ravel()]
    full = [0] * (2 * rank)
    for i, axis in enumerate(axes):
        full[axis], full[rank + axis] = pads[i], pads[len(axes) + i]
    return full


def slice_starts_steps(graph: Graph, node: Node) -> tuple[list[int], list[int]] | None:
    """Per input axis of a Slice, the first element read and the stride, from its constant inputs
    (opset 10+: starts, ends, axes, steps; clamped as ONNX clamps them); None when one is not a constant."""
    if len(node.inputs) < 3 or any(n and n not in graph.constants for n in node.inputs[1:]):
        return None
    shape = graph.shape(node.inputs[0])
    rank = len(shape)
    inputs = [graph.constants[n].astype(np.int64).tolist() if n else None for n in node.inputs[1:]]
    inputs += [None] * (4 - len(inputs))
    starts_in, _, axes, steps_in = inputs
    axes = [a % rank for a in (axes if axes is not None else range(len(starts_in)))]
    starts, steps = [0] * rank, [1] * rank
    for position, axis in enumerate(axes):
        step = steps_in[position] if steps_in is not None else 1
        start = starts_in[position]
        start = start + shape[axis] if start < 0 else start
        starts[axis] = min(max(start, 0), shape[axis] - 1) if step < 0 else min(max(start, 0), shape[axis])
        steps[axis] = step
    return starts, steps


def _einsum_matmul(graph: Graph, node: Node) -> list[Node] | None:
    if node.op != "Einsum" or len(node.inputs) != 2:
        return None
    equation = node.attrs.get("equation", b"")
    equation = (equation.decode() if isinstance(equation, bytes) else equation).replace(" ", "")
    if "->" not in equation or "..." in equation:
        return None
    operands, result = equation.split("->")
    left, right = operands.split(",")
    if not (len(left) == len(right) == len(result) >= 2 and len(set(left + right)) == len(left) + 1):
        return None
    batch = left[:-2]
    if right[:-2] != batch or result[:-2] != batch:
        return None
    i, k = left[-2:]
    if right[-2:] == k + result[-1] and result[-2:] == i + right[-1]:  # ...IK,...KJ->...IJ
        return [Node(node.name, "MatMul", node.inputs, node.outputs)]
    j = right[-2]
    if right[-1] == k and result[-2:] == i + j:  # ...IK,...JK->...IJ: the right side transposed
        swapped = f"{node.outputs[0]}__right_t"
        shape = graph.shape(node.inputs[1])
        graph.values[swapped] = Value(swapped, (*shape[:-2], shape[-1], shape[-2]), graph.values[node.inputs[1]].dtype)
        perm = [*range(len(shape) - 2), len(shape) - 1, len(shape) - 2]
        return [
            Node(f"{node.name}/transpose", "Transpose", (node.inputs[1],), (swapped,), {"perm": perm}),
            Node(node.name, "MatMul", (node.inputs[0], swapped), node.outputs),
        ]
    return None


def _split(graph: Graph, node: Node) -> list[Node] | None:
    if node.op != "Split" or node.inputs[0] in graph.constants:
        return None
    shape = graph.shape(node.inputs[0])
    axis = node.attrs.get("axis", 0) % len(shape)
    sizes = [graph.shape(name)[axis] for name in node.outputs]  # shape inference already knows each part
    nodes, start = [], 0
    for index, (name, size) in enumerate(zip(node.outputs, sizes)):
        nodes.append(_slice(graph, f"{node.name}/{index}", node.inputs[0], name, start, start + size, axis))
        start += size
    return nodes
