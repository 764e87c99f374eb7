"""Convolution semantics shared by the graph passes, the kernels and the workloads: a fused Conv's
input slots and its normalized attributes and shapes."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from woodpecker.kernels.workload import Workload

# Input positions on a fused Conv: X, W, bias, residual (fuse_epilogue), input scale
# (fuse_input_scale), and either a fused depthwise stage's weight and bias (fuse_depthwise) or,
# on a depthwise Conv, a fused 1x1 expansion's weight and bias (fuse_expand).
BIAS, RESIDUAL, SCALE = 2, 3, 4
DEPTHWISE_WEIGHT, DEPTHWISE_BIAS = 5, 6
EXPAND_WEIGHT, EXPAND_BIAS = 5, 6


def conv_params(workload: Workload) -> dict:
    """Normalized Conv attributes and shapes (2-D only). h, w are the input's after a fused depthwise
    Conv (graph/passes/fuse_depthwise.py), h_out, w_out the output's before a fused pool (fuse_pool.py),
    c_in a depthwise Conv's own input channels after a fused 1x1 expansion (fuse_expand.py)."""
    n, c_in, h, w = workload.input_shape(0)
    c_out, c_in_group, kh, kw = workload.input_shape(1)
    attrs = workload.node.attrs
    if attrs.get("depthwise"):
        h, w = conv_output_size(h, w, workload.input_shape(DEPTHWISE_WEIGHT)[2:], attrs["depthwise"])
    if attrs.get("expand"):  # a depthwise Conv over the fused 1x1 expansion's channels
        c_in = c_out
    pads = attrs.get("pads", [0, 0, 0, 0])
    strides, dilations = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    h_out, w_out = conv_output_size(h, w, (kh, kw), attrs)
    return dict(
        n=n,
        c_in=c_in,
        h=h,
        w=w,
        c_out=c_out,
        c_in_group=c_in_group,
        kh=kh,
        kw=kw,
        h_out=h_out,
        w_out=w_out,
        groups=attrs.get("group", 1),
        strides=strides,
        dilations=dilations,
        pad_top=pads[0],
        pad_left=pads[1],
    )


def conv_output_size(h: int, w: int, kernel: tuple[int, int], attrs: dict) -> tuple[int, int]:
    """Output height and width of a 2-D Conv with these ONNX attributes."""
    pads = attrs.get("pads", [0, 0, 0, 0])
    strides, dilations = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    return tuple(
        (size + pads[i] + pads[i + 2] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1
        for i, size in enumerate((h, w))
    )
