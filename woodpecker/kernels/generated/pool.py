"""Pooling: MaxPool, AveragePool (with or without padding in the count) and GlobalAveragePool.

Plain NCHW or blocked NCHW[b]c (graph/passes/layout.py): blocked, a vector is one block of
channels; a global pool reads blocked and writes plain (N, C, 1, 1).
"""

from __future__ import annotations

import halide as hl
import numpy as np

from woodpecker.kernels.base import is_float32
from woodpecker.kernels.generated.common import Definition, GeneratedImplementation, vector_widths
from woodpecker.kernels.workload import Workload
from woodpecker.search.space import Config, ConfigSpace, Knob

POOL_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")


class HalidePool(GeneratedImplementation):
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
        _, _, h, w = workload.input_shape(0)
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
        in_block, out_block = workload.block(node.inputs[0]), workload.block(node.outputs[0])
        inp = hl.ImageParam(hl.Float(32), 5 if in_block else 4, "input")

        # The algorithm, on logical (x, y, c, n) coordinates
        fill = -np.inf if is_max else 0.0
        spatial = [hl.Range(0, w), hl.Range(0, h)]
        padded = hl.BoundaryConditions.constant_exterior(
            inp, hl.f32(fill), [hl.Range(0, in_block), *spatial] if in_block else spatial
        )

        def source(px, py, pc, pn):
            return padded[pc % in_block, px, py, pc // in_block, pn] if in_block else padded[px, py, pc, pn]

        r = hl.RDom([hl.Range(0, kw), hl.Range(0, kh)], "r")
        in_x, in_y = x * sx + r.x * dx - left, y * sy + r.y * dy - top
        out = hl.Func(node.op)
        if is_max:
            out[x, y, c, n] = hl.maximum(source(in_x, in_y, c, n))
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
