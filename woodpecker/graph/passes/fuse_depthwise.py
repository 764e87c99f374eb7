"""Fuse a depthwise convolution into the pointwise (1x1) convolution that reads it.

    x -> Conv(depthwise)(+activation) -> Conv(1x1)   becomes
    Conv(x, W, B, [residual], "", W_dw, B_dw, depthwise={the depthwise Conv's attributes})

MobileNet-style blocks (MobileNetV2/V3, MNASNet, EfficientNet, ShuffleNet) end in this pair.
The 1x1 convolution needs every channel of one pixel, so the depthwise output can be computed
a row at a time, right before the rows of the 1x1 that read it, and never written out; the
kernel's schedule space also holds the unfused order (the whole depthwise output first), so
the search measures which is faster (kernels/halide/conv2d_blocked.py). Runs after the layout
pass and fuses blocked values only: the fused kernel exists in the blocked layout only.
"""

from __future__ import annotations

from woodpecker.graph.ir import Graph, Node
from woodpecker.ops import activations
from woodpecker.ops.conv import DEPTHWISE_BIAS, DEPTHWISE_WEIGHT

CONV_ATTRS = ("kernel_shape", "strides", "pads", "dilations", "group")


def fuse_depthwise(graph: Graph) -> Graph:
    out = graph.copy()
    consumers = out.consumers()
    producers = out.producers()
    gone = set()
    for index, pointwise in enumerate(out.nodes):
        if not is_pointwise(out, pointwise):
            continue
        depthwise = producers.get(pointwise.inputs[0])
        if depthwise is None or not is_depthwise(out, depthwise) or not out.single_use(depthwise.outputs[0], consumers):
            continue
        if (
            not _blocked_alike(out, depthwise.inputs[0], depthwise.outputs[0])
            or not out.values[pointwise.outputs[0]].block
        ):
            continue
        inputs = list(pointwise.inputs) + [""] * (DEPTHWISE_BIAS + 1 - len(pointwise.inputs))
        inputs[0] = depthwise.inputs[0]
        inputs[DEPTHWISE_WEIGHT] = depthwise.inputs[1]
        inputs[DEPTHWISE_BIAS] = depthwise.inputs[2] if len(depthwise.inputs) > 2 else ""
        stage = {k: v for k, v in depthwise.attrs.items() if k in CONV_ATTRS or k in activations.PARAMETERS}
        out.nodes[index] = pointwise.replace(inputs=tuple(inputs), attrs={**pointwise.attrs, "depthwise": stage})
        gone.add(id(depthwise))
    out.nodes = [n for n in out.nodes if id(n) not in gone]
    return out


def _blocked_alike(graph: Graph, *names: str) -> bool:
    """The fused kernel reads the depthwise input blocked as the depthwise output was."""
    blocks = {graph.values[n].block for n in names}
    return len(blocks) == 1 and 0 not in blocks


def is_pointwise(graph: Graph, node: Node) -> bool:
    """A 1x1, stride-1, unpadded, ungrouped Conv by constant weights with nothing fused before it."""
    if node.op != "Conv" or node.inputs[1] not in graph.constants or len(graph.shape(node.inputs[1])) != 4:
        return False
    if any(node.attrs.get(k) for k in ("input_scale", "pool", "depthwise")):
        return False
    return (
        graph.shape(node.inputs[1])[2:] == (1, 1)
        and node.attrs.get("group", 1) == 1
        and not any(node.attrs.get("pads", [0]))
        and all(s == 1 for s in node.attrs.get("strides", [1, 1]))
        and node.attrs.get("auto_pad", "NOTSET") == "NOTSET"
    )


def is_depthwise(graph: Graph, node: Node) -> bool:
    """A 2-D depthwise Conv by constant weights (and bias) with at most an activation fused."""
    if node.op != "Conv" or node.inputs[1] not in graph.constants or len(graph.shape(node.inputs[0])) != 4:
        return False
    if len(node.inputs) > 2 and node.inputs[2] and node.inputs[2] not in graph.constants:
        return False
    if len(node.inputs) > 3 or any(node.attrs.get(k) for k in ("input_scale", "pool", "residual", "expand")):
        return False
    channels = graph.shape(node.inputs[0])[1]
    return (
        node.attrs.get("group", 1) == channels == graph.shape(node.outputs[0])[1]
        and node.attrs.get("auto_pad", "NOTSET") == "NOTSET"
    )
