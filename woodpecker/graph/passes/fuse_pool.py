"""Fuse a pooling layer into the convolution that produces its input.

    Conv(+epilogue) -> MaxPool   becomes   Conv(..., pool={"op": "MaxPool", kernel_shape, strides, pads})

The kernel decides, by measurement, whether to compute the convolution a strip of rows at a
time right before the pool reads it (the convolution's full output is never written: ResNet's
stem, VGG's five blocks, AlexNet, GoogLeNet) or whole, as the unfused graph would: its schedule
space holds both (see kernels/halide/conv2d_blocked.py), so fusing here never costs speed.
Runs after the layout pass and fuses blocked values only (the fused kernel's layout). Pools
whose windows may hold no pixel of the image, or average over padding, are left alone.
"""

from __future__ import annotations

from woodpecker.graph.ir import Graph, Node

FUSED_POOLS = ("MaxPool", "AveragePool")


def fuse_pool(graph: Graph) -> Graph:
    out = graph.copy()
    consumers = out.consumers()
    producers = out.producers()
    gone = set()
    for index, pool in enumerate(out.nodes):
        conv = producers.get(pool.inputs[0]) if pool.op in FUSED_POOLS else None
        if conv is None or conv.op != "Conv" or conv.attrs.get("pool") or conv.attrs.get("depthwise"):
            continue
        if not _fusable(pool):
            continue
        if not out.single_use(conv.outputs[0], consumers):
            continue
        if (
            not out.values[conv.outputs[0]].block
            or out.values[pool.outputs[0]].block != out.values[conv.outputs[0]].block
        ):
            continue  # the fused kernel computes blocked values only
        attrs = {
            "op": pool.op,
            "kernel_shape": list(pool.attrs["kernel_shape"]),
            "strides": list(pool.attrs.get("strides", [1, 1])),
            "pads": list(pool.attrs.get("pads", [0, 0, 0, 0])),
            "ceil_mode": pool.attrs.get("ceil_mode", 0),
        }
        out.nodes[index] = conv.replace(outputs=pool.outputs, attrs={**conv.attrs, "pool": attrs})
        gone.add(id(conv))
    out.nodes = [n for n in out.nodes if id(n) not in gone]
    return out


def _fusable(pool: Node) -> bool:
    """2-D, one output, no dilation or auto padding; an average only without padding."""
    attrs = pool.attrs
    if len([o for o in pool.outputs if o]) != 1 or len(attrs.get("kernel_shape", [])) != 2:
        return False
    if attrs.get("auto_pad", "NOTSET") != "NOTSET" or attrs.get("storage_order", 0) != 0:
        return False
    if any(d != 1 for d in attrs.get("dilations", [1, 1])):
        return False
    pads = attrs.get("pads", [0, 0, 0, 0])
    if any(p >= k for p, k in zip(pads, attrs["kernel_shape"] * 2)):  # a window of padding only
        return False
    return pool.op == "MaxPool" or (not any(pads) and not attrs.get("ceil_mode", 0))
