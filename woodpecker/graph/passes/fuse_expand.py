"""Fuse a pointwise (1x1) expansion into the depthwise convolution that reads it.

    x -> Conv(1x1)(+activation) -> Conv(depthwise)   becomes
    Conv(x, W_dw, B_dw, "", "", W_1x1, B_1x1, expand={the 1x1's activation})

MobileNetV2's inverted residual blocks (and MNASNet's, EfficientNet's) start with this pair,
whose intermediate map is the block's widest, written by the expansion and read back by the
depthwise convolution. The fused kernel computes the expanded rows as the depthwise rows need
them and never writes them out (kernels/halide/expand_depthwise.py). Only maps of at least
MIN_EXPANDED_BYTES per image are fused: on smaller ones whole plans ran no faster fused (see
docs/benchmark-history.md), so those pairs stay apart and cost no tuning.
Runs after the layout pass, on blocked values only.
"""

from __future__ import annotations

import numpy as np

from woodpecker.graph.ir import Graph
from woodpecker.graph.passes.fuse_depthwise import is_depthwise, is_pointwise
from woodpecker.ops import activations
from woodpecker.ops.conv import EXPAND_BIAS, EXPAND_WEIGHT

MIN_EXPANDED_BYTES = 1 << 20


def fuse_expand(graph: Graph, min_bytes: int = MIN_EXPANDED_BYTES) -> Graph:
    """`min_bytes`: the smallest expanded map (per image) to fuse."""
    out = graph.copy()
    consumers = out.consumers()
    producers = out.producers()
    gone = set()
    for index, depthwise in enumerate(out.nodes):
        if not is_depthwise(out, depthwise):
            continue
        pointwise = producers.get(depthwise.inputs[0])
        if (
            pointwise is None
            or not is_pointwise(out, pointwise)
            or pointwise.attrs.get("residual")
            or not out.single_use(pointwise.outputs[0], consumers)
            or not _blocked(out, pointwise.inputs[0], depthwise.inputs[0], depthwise.outputs[0])
            or _bytes_per_image(out, depthwise.inputs[0]) < min_bytes
        ):
            continue
        inputs = list(depthwise.inputs) + [""] * (EXPAND_BIAS + 1 - len(depthwise.inputs))
        inputs[0] = pointwise.inputs[0]
        inputs[EXPAND_WEIGHT] = pointwise.inputs[1]
        inputs[EXPAND_BIAS] = pointwise.inputs[2] if len(pointwise.inputs) > 2 else ""
        stage = {k: v for k, v in pointwise.attrs.items() if k in activations.PARAMETERS}
        out.nodes[index] = depthwise.replace(inputs=tuple(inputs), attrs={**depthwise.attrs, "expand": stage})
        gone.add(id(pointwise))
    out.nodes = [n for n in out.nodes if id(n) not in gone]
    return out


def _bytes_per_image(graph: Graph, name: str) -> int:
    value = graph.values[name]
    return int(np.prod(value.shape[1:])) * np.dtype(value.dtype).itemsize


def _blocked(graph: Graph, source: str, expanded: str, output: str) -> bool:
    """The expansion reads a blocked input; its output and the depthwise output share one block."""
    blocks = graph.values[source].block, graph.values[expanded].block, graph.values[output].block
    return 0 not in blocks and blocks[1] == blocks[2]
