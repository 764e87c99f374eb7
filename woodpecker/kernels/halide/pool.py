"""Pooling: MaxPool, AveragePool (with or without padding in the count) and GlobalAveragePool.

Plain NCHW or blocked NCHW[b]c (graph/passes/layout.py): blocked, a vector is one block of
channels; a global pool reads blocked and writes plain (N, C, 1, 1).
"""

from __future__ import annotations

import halide as hl
import numpy as np

from woodpecker.kernels.base import is_float32
from woodpecker.kernels.halide.common import (
    NAN,
    Definition,
    HalideImplementation,
    is_nan,
    vector_widths,
    window_max,
)
from woodpecker.kernels.workload import Workload
from woodpecker.search.space import Config, ConfigSpace, Knob

POOL_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")


class HalidePool(HalideImplementation):
    name = "halide.pool"

    def matches(self, workload: Workload) -> bool:
        node = workload.node
        return (
            node.op in POOL_OPS
            and len(workload.input_shape(0)) == 4
            and is_float32(workload)
            and len([o for o in node.outputs if o]) == 1
            and node.attrs.get("auto_pad", "NOTSET") == "NOTSET"
            and node.attrs.get("storage_order", 0) == 0
            and self._layout_ok(workload)
        )

    @staticmethod
    def _layout_ok(workload: Workload) -> bool:
        in_block, out_block = workload.block(workload.node.inputs[0]), workload.block(workload.node.outputs[0])
        return out_block == in_block or (workload.op.startswith("Global") and out_block == 0)

    def space(self, workload: Workload) -> ConfigSpace:
        w_out = workload.output_shape[3]
        if workload.block(workload.node.inputs[0]):  # the vector is a channel block
            return ConfigSpace((Knob("vec", (1,)), Knob("parallel", ("c", "y"))), lambda cfg: True)
        return ConfigSpace(
            (Knob("vec", (1, *vector_widths())), Knob("parallel", ("c", "y"))),
            lambda cfg: cfg["vec"] <= w_out and not (cfg["parallel"] == "y" and workload.output_shape[2] == 1),
        )

    def define(self, workload: Workload, config: Config) -> Definition:
        node = workload.node
        _, channels, h, w = workload.input_shape(0)
        in_block = workload.block(node.inputs[0])
        if node.op.startswith("Global") and in_block:
            return _global_pool_blocked(node.op, channels, h, w, in_block, config)
        if node.op.startswith("Global"):
            kh, kw, sy, sx, dy, dx, top, left = h, w, 1, 1, 1, 1, 0, 0
            pads = [0, 0, 0, 0]
        else:
            kh, kw = node.attrs["kernel_shape"]
            sy, sx = node.attrs.get("strides", [1, 1])
            dy, dx = node.attrs.get("dilations", [1, 1])
            pads = node.attrs.get("pads", [0, 0, 0, 0])
            top, left = pads[0], pads[1]
        is_max = "Max" in node.op

        x, y, c, n = hl.Var("x"), hl.Var("y"), hl.Var("c"), hl.Var("n")
        out_block = workload.block(node.outputs[0])
        inp = hl.ImageParam(hl.Float(32), 5 if in_block else 4, "input")

        # The algorithm, on logical (x, y, c, n) coordinates. Every window holds at least one pixel,
        # so a max may clamp coordinates into the image (a repeated pixel does not change a max):
        # a clamp per address instead of a select per lane. A sum needs zeros outside.
        spatial = [hl.Range(0, w), hl.Range(0, h)]
        bounds = [hl.Range(0, in_block), *spatial] if in_block else spatial
        if is_max and dy == dx == 1:
            padded = hl.BoundaryConditions.repeat_edge(inp, bounds)
        else:
            padded = hl.BoundaryConditions.constant_exterior(inp, hl.f32(-np.inf if is_max else 0.0), bounds)

        def source(px, py, pc, pn):
            return padded[pc % in_block, px, py, pc // in_block, pn] if in_block else padded[px, py, pc, pn]

        r = hl.RDom([hl.Range(0, kw), hl.Range(0, kh)], "r")
        in_x, in_y = x * sx + r.x * dx - left, y * sy + r.y * dy - top
        out = hl.Func(node.op)
        if is_max and kh * kw <= 16:  # taps written out: no reduction loop around a vector max
            taps = [source(x * sx + i * dx - left, y * sy + j * dy - top, c, n) for j in range(kh) for i in range(kw)]
            out[x, y, c, n] = window_max(taps)
        elif is_max:  # NaN anywhere in the window makes it NaN (window_max)
            tap = source(in_x, in_y, c, n)
            nan = hl.maximum(hl.select(is_nan(tap), 1, 0))
            out[x, y, c, n] = hl.select(nan > 0, hl.f32(NAN), hl.maximum(tap))
        else:
            if node.attrs.get("count_include_pad", 0):
                # Window clipped to the padded extent (ONNX does not count ceil_mode overhang).
                lo_x, hi_x = hl.max(x * sx - left, -left), hl.min(x * sx - left + (kw - 1) * dx + 1, w + pads[3])
                lo_y, hi_y = hl.max(y * sy - top, -top), hl.min(y * sy - top + (kh - 1) * dy + 1, h + pads[2])
                count = ((hi_x - lo_x + dx - 1) / dx) * ((hi_y - lo_y + dy - 1) / dy)
            else:
                count = hl.sum(hl.select((in_x >= 0) & (in_x < w) & (in_y >= 0) & (in_y < h), 1, 0))
            out[x, y, c, n] = hl.sum(source(in_x, in_y, c, n)) / hl.cast(hl.Float(32), count)

        # How to schedule it
        if out_block:  # stored (N, C/b, H, W, b): Halide's (ci, x, y, k, n); a vector per channel block
            ci, k = hl.Var("ci"), hl.Var("k")
            stored = hl.Func("stored")
            stored[ci, x, y, k, n] = out[x, y, k * out_block + ci, n]
            stored.bound(ci, 0, out_block).vectorize(ci).parallel(k if config["parallel"] == "c" else y)
            return Definition(stored, [inp], [])
        if config["vec"] > 1:
            out.vectorize(x, config["vec"])
        out.parallel(c if config["parallel"] == "c" else y)
        return Definition(out, [inp], [])


def _global_pool_blocked(op: str, channels: int, h: int, w: int, block: int, config: Config) -> Definition:
    """Blocked (N, C/b, H, W, b) in, plain (N, C, 1, 1) out: one vector of b channels accumulated
    over the image, stored as b consecutive channels (no padding, so no bounds checks)."""
    x, y, c, n, co, ci = (hl.Var(v) for v in ("x", "y", "c", "n", "co", "ci"))
    inp = hl.ImageParam(hl.Float(32), 5, "input")
    r = hl.RDom([hl.Range(0, w), hl.Range(0, h)], "r")
    is_max = "Max" in op
    acc = hl.Func("acc")
    value = inp[c % block, r.x, r.y, c // block, n]
    out = hl.Func(op)
    if is_max:  # the max, and how many NaN were seen (see window_max)
        acc[c, n] = (hl.f32(-np.inf), hl.f32(0.0))
        acc[c, n] = (hl.max(acc[c, n][0], value), acc[c, n][1] + hl.select(is_nan(value), hl.f32(1), hl.f32(0)))
        out[x, y, c, n] = hl.select(acc[c, n][1] > 0, hl.f32(NAN), acc[c, n][0])
    else:
        acc[c, n] = hl.f32(0.0)
        acc[c, n] = acc[c, n] + value
        out[x, y, c, n] = acc[c, n] * hl.f32(1.0 / (h * w))
    out.bound(x, 0, 1).bound(y, 0, 1).bound(c, 0, channels)
    out.split(c, co, ci, block).vectorize(ci)
    if config["parallel"] == "c":
        out.parallel(co)
    acc.compute_at(out, co).vectorize(c)
    acc.update().reorder(c, r.x, r.y).vectorize(c)
    return Definition(out, [inp], [])
