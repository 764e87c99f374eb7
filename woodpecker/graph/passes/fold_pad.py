"""Fold an explicit zero Pad of H and W into the Conv that reads it (the conv's own `pads`).

Models ported from other frameworks (TensorFlow's "SAME" with odd padding) pad explicitly before
a convolution; the convolution kernels already handle asymmetric padding without copying, so the
Pad's extra pass over memory disappears.
"""

from __future__ import annotations

from woodpecker.graph.ir import Graph
from woodpecker.graph.passes.canonicalize import pad_value, pad_widths


def fold_pad(graph: Graph) -> Graph:
    out = graph.copy()
    consumers = out.consumers()
    producers = out.producers()
    for index, conv in enumerate(out.nodes):
        pad = producers.get(conv.inputs[0]) if conv.op == "Conv" else None
        widths = pad_widths(out, pad) if pad is not None else None
        if widths is None or len(widths) != 8 or min(widths) < 0 or widths[:2] != [0, 0] or widths[4:6] != [0, 0]:
            continue
        if pad.attrs.get("mode", "constant") != "constant" or pad_value(out, pad) != 0.0:
            continue
        if not out.single_use(pad.outputs[0], consumers):
            continue
        if conv.attrs.get("auto_pad", "NOTSET") != "NOTSET":
            continue
        top, left, bottom, right = widths[2], widths[3], widths[6], widths[7]
        pads = list(conv.attrs.get("pads", [0, 0, 0, 0]))
        pads = [pads[0] + top, pads[1] + left, pads[2] + bottom, pads[3] + right]
        out.nodes[index] = conv.replace(inputs=(pad.inputs[0], *conv.inputs[1:]), attrs={**conv.attrs, "pads": pads})
    return out  # the Pad, now unread, is left to eliminate_dead
