"""A channel shuffle as one Gather of channels.

ShuffleNet (and other grouped-convolution networks) mix channels between groups as

    Reshape(x: [N, C, H, W] -> [N, G, C/G, H, W]) -> Transpose(0, 2, 1, 3, 4) -> Reshape(-> [N, C, H, W])

three nodes on 5-D values that no blocked kernel reads: each shuffle converted the blocked
layout twice. It is a permutation of channels, Gather(x, indices, axis=1) with constant
indices, which the layout pass lets read and write any channel layout
(kernels/halide/channel_copy.py).
"""

from __future__ import annotations

import numpy as np

from woodpecker.graph.ir import Graph, Node, Value

SWAP_GROUPS = [0, 2, 1, 3, 4]


def fuse_channel_shuffle(graph: Graph) -> Graph:
    out = graph.copy()
    producers, consumers = out.producers(), out.consumers()
    for node in list(out.nodes):
        match = _match(out, node, producers, consumers)
        if match is None:
            continue
        absorbed, source, groups = match
        channels = out.shape(source)[1]
        indices = f"{node.outputs[0]}__shuffle"
        # Output channel i * G + j reads input channel j * (C / G) + i.
        out.constants[indices] = np.arange(channels, dtype=np.int64).reshape(groups, channels // groups).T.ravel()
        out.values[indices] = Value(indices, (channels,), "int64")
        shuffle = Node(f"{node.name}__shuffle", "Gather", (source, indices), node.outputs, {"axis": 1})
        out.replace_nodes(absorbed, shuffle)
    return out


def _match(graph: Graph, last: Node, producers: dict[str, Node], consumers) -> tuple[list[Node], str, int] | None:
    """The three nodes, the shuffled value and the group count, when `last` ends a channel shuffle."""
    transpose = producers.get(last.inputs[0]) if last.op == "Reshape" else None
    if transpose is None or transpose.op != "Transpose" or list(transpose.attrs.get("perm", ())) != SWAP_GROUPS:
        return None
    split = producers.get(transpose.inputs[0])
    if split is None or split.op != "Reshape":
        return None
    source = split.inputs[0]
    shape, grouped = graph.shape(source), graph.shape(split.outputs[0])
    inner = [split.outputs[0], transpose.outputs[0]]
    if len(shape) != 4 or graph.shape(last.outputs[0]) != shape or len(grouped) != 5:
        return None
    n, c, h, w = shape
    if grouped[0] != n or grouped[3:] != (h, w) or grouped[1] * grouped[2] != c:
        return None
    if not all(graph.single_use(name, consumers) for name in inner):
        return None
    return [split, transpose, last], source, grouped[1]
