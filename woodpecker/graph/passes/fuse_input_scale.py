"""Fold a squeeze-and-excitation scale into the convolution that reads the scaled map.

    x -> Mul(x, s) -> Conv   becomes   Conv(x, ..., input_scale=s)

with s of shape (N, C, 1, 1) computed at run time. The convolution multiplies each input value
by its channel's scale as it reads it (one multiply per input load, shared by the register
tile's output vectors), so the scaled map is never written: EfficientNet, MobileNetV3 and
RegNetY save one pass over a feature map per block.
"""

from __future__ import annotations

from woodpecker.graph.ir import Graph
from woodpecker.ops.conv import SCALE


def fuse_input_scale(graph: Graph) -> Graph:
    out = graph.copy()
    consumers = out.consumers()
    producers = out.producers()
    gone = set()
    for index, conv in enumerate(out.nodes):
        if conv.op != "Conv" or conv.attrs.get("input_scale") or conv.inputs[1] not in out.constants:
            continue
        mul = producers.get(conv.inputs[0])
        if mul is None or mul.op != "Mul" or len(mul.inputs) != 2 or not out.single_use(mul.outputs[0], consumers):
            continue
        if any(n in out.constants for n in mul.inputs):
            continue
        shape = out.shape(mul.outputs[0])
        scale_shape = (shape[0], shape[1], 1, 1) if len(shape) == 4 else None
        for feature, scale in (mul.inputs, mul.inputs[::-1]):
            if out.shape(feature) == shape and out.shape(scale) == scale_shape and shape[2:] != (1, 1):
                inputs = list(conv.inputs) + [""] * (SCALE + 1 - len(conv.inputs))
                inputs[0], inputs[SCALE] = feature, scale
                out.nodes[index] = conv.replace(inputs=tuple(inputs), attrs={**conv.attrs, "input_scale": True})
                gone.add(id(mul))
                break
    out.nodes = [n for n in out.nodes if id(n) not in gone]
    return out
