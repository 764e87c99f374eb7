"""A 1x1 expansion fused into the depthwise convolution after it, both blocked (graph/passes/fuse_expand.py).

The expanded map is never written out. Threads take tiles of `tile_k` channel blocks, or
strips of rows of them (`strips`). Within a tile, each row of depthwise output computes the
expanded rows that it reads and that are not computed yet: Halide's sliding window keeps the
rows that the next output row reads again, so every expanded row is computed once per strip.
The expansion's register tile is `expand_x` pixels times the tile's blocks, each a full vector.
Each reduction step broadcasts one input value and multiplies it with the tile's weight vectors,
as in conv2d_blocked.py. The expansion is computed inside the image only: the padding columns
are stored as zeros and the padding rows are left out of the depthwise sum, so the depthwise
convolution needs no bounds checks. Computing the expansion on the padding too (the first
version) cost up to 3x the work on a 7x7 map, since the register tiles started at column -1;
without it, timed alone, the fused pair also beat the two kernels it replaces on MobileNetV2's
28x28, 14x14 and 7x7 maps (README, "the expansion kernel without padding work").
"""

from __future__ import annotations

import halide as hl
import numpy as np

from woodpecker.kernels.base import is_float32
from woodpecker.kernels.halide.common import (
    Definition,
    HalideImplementation,
    apply_activation,
    conv_bias,
    depthwise_constants,
    divisors,
    fix_layout,
    max_accumulators,
    row_tile,
)
from woodpecker.kernels.workload import Workload
from woodpecker.ops import activations
from woodpecker.ops.conv import EXPAND_BIAS, EXPAND_WEIGHT, conv_params
from woodpecker.search.space import Config, ConfigSpace, Knob


class HalideExpandDepthwise(HalideImplementation):
    name = "halide.expand_depthwise"
    revision = 2  # 2: the expansion computed inside the image only

    def matches(self, workload: Workload) -> bool:
        node = workload.node
        return (
            node.op == "Conv"
            and bool(node.attrs.get("expand"))
            and is_float32(workload)
            and workload.block(node.inputs[0]) > 0
            and workload.block(node.outputs[0]) > 0
            and all(node.inputs[i] in workload.constants for i in (1, EXPAND_WEIGHT))
            and all(not workload.has_input(i) or node.inputs[i] in workload.constants for i in (2, EXPAND_BIAS))
        )

    def space(self, workload: Workload) -> ConfigSpace:
        p = conv_params(workload)
        blocks = p["c_out"] // workload.block(workload.node.outputs[0])
        strips = tuple(s for s in (1, 2, 4) if s <= p["h_out"])
        rows = strips[-1]

        def valid(cfg: Config) -> bool:
            return blocks % cfg["tile_k"] == 0 and cfg["expand_x"] * cfg["tile_k"] <= max_accumulators()

        tile = min(row_tile(p["w_out"]), p["w_out"])
        wide = row_tile(p["w"])  # expansion tiles that divide the row
        # Starting points measured on MobileNetV2's features.2 and features.3 (benchmarks in the README).
        starts = [
            {"tile_x": tile, "expand_x": wide, "tile_k": 2, "strips": 1},
            {"tile_x": tile, "expand_x": 6, "tile_k": 3, "strips": 1},
            {"tile_x": tile, "expand_x": wide, "tile_k": 1, "strips": 1},
            {"tile_x": tile, "expand_x": wide, "tile_k": 2, "strips": 2},
            {"tile_x": tile, "expand_x": 6, "tile_k": 3, "strips": 2},
            {"tile_x": tile, "expand_x": 4, "tile_k": 6, "strips": 2},
        ]
        defaults: list[Config] = []
        for start in starts:  # tile_k shrunk to a divisor of the blocks that fits the registers, strips to the rows
            tile_k = max(1, min(start["tile_k"], max_accumulators() // start["expand_x"]))
            start = {**start, "tile_k": max(divisors(blocks, tile_k)), "strips": min(start["strips"], rows)}
            if valid(start) and start not in defaults:
                defaults.append(start)
        return ConfigSpace(
            (
                Knob("tile_x", tuple(t for t in sorted({1, 2, 4, 7, 8, *divisors(p["w_out"], 8)}) if t <= p["w_out"])),
                Knob("expand_x", (4, 6, 7, 8)),
                Knob("tile_k", divisors(blocks, 6)),
                Knob("strips", strips),
            ),
            valid,
            defaults=tuple(defaults),
        )

    def define(self, workload: Workload, config: Config) -> Definition:
        node = workload.node
        p = conv_params(workload)
        b, in_block = workload.block(node.outputs[0]), workload.block(node.inputs[0])
        c_in = workload.input_shape(0)[1]
        # Constants packed in the order the loops read them: (C/b, C_in, b) and (C/b, KH, KW, b).
        expand_w = workload.constants[node.inputs[EXPAND_WEIGHT]].astype(np.float32).reshape(p["c_out"], c_in)
        expand_w = np.ascontiguousarray(expand_w.reshape(p["c_out"] // b, b, c_in).transpose(0, 2, 1))
        expand_b = conv_bias(workload, EXPAND_BIAS, p["c_out"])
        dw_w, dw_b = depthwise_constants(workload, b, weight=1, bias=2)

        c, x, y, k, n = hl.Var("c"), hl.Var("x"), hl.Var("y"), hl.Var("k"), hl.Var("n")
        inp = hl.ImageParam(hl.Float(32), 5, "input")
        params = [hl.ImageParam(hl.Float(32), a.ndim, name) for a, name in ((dw_w, "dw_w"), (dw_b, "dw_b"))]
        params += [hl.ImageParam(hl.Float(32), a.ndim, name) for a, name in ((expand_w, "pw_w"), (expand_b, "pw_b"))]
        dw_wp, dw_bp, pw_wp, pw_bp = params

        # The 1x1 expansion, reading the input clamped: its register tiles overhang the right edge.
        image = [hl.Range(0, in_block), hl.Range(0, p["w"]), hl.Range(0, p["h"])]
        clamped = hl.BoundaryConditions.repeat_edge(inp, image)
        r = hl.RDom([hl.Range(0, in_block), hl.Range(0, c_in // in_block)], "r")
        pw = hl.Func("expand_acc")
        pw[c, x, y, k, n] = pw_bp[k * b + c]
        pw[c, x, y, k, n] += pw_wp[c, r.y * in_block + r.x, k] * clamped[r.x, x, y, r.y, n]
        # The expansion inside the image only; zero in the padding columns (the padding rows are
        # never read). Each column range is an update, so no pixel is computed twice.
        expanded = hl.Func("expanded")
        expanded[c, x, y, k, n] = hl.undef(hl.Float(32))
        read_w = (p["w_out"] - 1) * p["strides"][1] + (p["kw"] - 1) * p["dilations"][1] + 1
        for start, extent in ((-p["pad_left"], p["pad_left"]), (p["w"], read_w - p["pad_left"] - p["w"])):
            if extent > 0:
                padding = hl.RDom([hl.Range(start, extent)], "padding")
                expanded[c, padding.x, y, k, n] = hl.f32(0.0)
        inside = hl.RDom([hl.Range(0, p["w"])], "inside")
        expanded[c, inside.x, y, k, n] = activations.halide(node.attrs["expand"], pw[c, inside.x, y, k, n])
        # The depthwise convolution and its activation, over the rows inside the image.
        rd = hl.RDom([hl.Range(0, p["kw"]), hl.Range(0, p["kh"])], "rd")
        in_x = x * p["strides"][1] + rd.x * p["dilations"][1] - p["pad_left"]
        in_y = y * p["strides"][0] + rd.y * p["dilations"][0] - p["pad_top"]
        rd.where((in_y >= 0) & (in_y < p["h"]))  # Halide trims the loop over rd.y rather than testing
        acc = hl.Func("depthwise_acc")
        acc[c, x, y, k, n] = dw_bp[k * b + c]
        acc[c, x, y, k, n] += dw_wp[c, rd.x, rd.y, k] * expanded[c, in_x, in_y, k, n]
        out = hl.Func("expand_depthwise")
        out[c, x, y, k, n] = apply_activation(workload, acc[c, x, y, k, n])

        # Schedule: threads over tiles of blocks (and strips of rows); a row of output per step.
        tile_k, rows = config["tile_k"], -(-p["h_out"] // config["strips"])
        xo, xi, ko, ki, yo, yi, t = (hl.Var(v) for v in ("xo", "xi", "ko", "ki", "yo", "yi", "t"))
        out.bound(c, 0, b).bound(k, 0, p["c_out"] // b).bound(y, 0, p["h_out"])
        out.vectorize(c).split(x, xo, xi, config["tile_x"], hl.TailStrategy.GuardWithIf).unroll(xi)
        out.split(k, ko, ki, tile_k).split(y, yo, yi, rows, hl.TailStrategy.GuardWithIf)
        out.reorder(c, xi, xo, ki, yi, yo, ko, n).fuse(yo, ko, t).parallel(t)
        acc.compute_at(out, xo).vectorize(c).unroll(x)
        acc.update().reorder(c, x, rd.x, rd.y).vectorize(c).unroll(x).unroll(rd.x)
        # Expanded rows: the `fold` most recent kept, each computed in register tiles of `expand_x`.
        footprint = (p["kh"] - 1) * p["dilations"][0] + 1
        fold = 1 << (footprint - 1).bit_length()
        expanded.bound(c, 0, b).store_at(out, t).compute_at(out, yi).bound_extent(k, tile_k).fold_storage(y, fold)
        stages = expanded.num_update_definitions()
        for stage in range(stages - 1):
            expanded.update(stage).vectorize(c)
        ex, exo, exi = config["expand_x"], hl.RVar("exo"), hl.RVar("exi")
        tiles = expanded.update(stages - 1).split(inside.x, exo, exi, ex, hl.TailStrategy.GuardWithIf)
        tiles.reorder(c, exi, k, exo, y).vectorize(c).unroll(exi).unroll(k)
        pw.compute_at(expanded, exo).bound_extent(x, ex).bound_extent(k, tile_k).vectorize(c).unroll(x).unroll(k)
        pw.update().reorder(c, x, k, r.x, r.y).vectorize(c).unroll(x).unroll(k).unroll(r.x)

        fix_layout(inp, workload.values[node.inputs[0]].stored_shape)
        constants = [dw_w, dw_b, expand_w, expand_b]
        for param, array in zip(params, constants):
            fix_layout(param, array.shape)
        return Definition(out, [inp, *params], constants)
