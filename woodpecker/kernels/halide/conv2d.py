"""2-D convolution (any stride, padding, dilation, groups incl. depthwise) with a fused epilogue.

Two schedule families, both searched:
- "vec_x": vectorize over output width, weights in OIHW;
- "vec_c": vectorize over output channels, weights packed with output channels innermost,
  the accumulator tile stored channel-innermost (reorder_storage) then written back as NCHW.
"""

from __future__ import annotations

import halide as hl
import numpy as np

from woodpecker.kernels.halide.common import (
    Definition,
    HalideImplementation,
    apply_activation,
    conv_bias,
    is_constant_conv,
    max_accumulators,
    row_tile,
    vector_widths,
)
from woodpecker.kernels.workload import Workload
from woodpecker.ops.conv import conv_params
from woodpecker.search.space import Config, ConfigSpace, Knob


def _starting_points(p: dict, native: int) -> tuple[Config, ...]:
    """Schedules that were fast here: channel vectors for dense convs, width vectors for depthwise."""
    rows_parallel = "y" if p["h_out"] >= 14 else "c"
    common = {"reduce_order": "c_inner", "unroll_kw": False, "padding": "copy", "pack_input": False}
    if p["groups"] > 1 and p["c_in_group"] == 1:
        width = next((v for v in sorted(vector_widths(), reverse=True) if v <= p["w_out"]), 4)
        return tuple(
            {"layout": "vec_x", "vec": width, "tile_x": 1, "tile_c": tc, "parallel": "c", **common} for tc in (4, 2)
        )
    # Register tiles that divide the width waste nothing on edges (7 for 7/14/28/56/112-wide layers).
    tile_x, tile_x1 = row_tile(p["w_out"], 2), row_tile(p["w_out"])
    square = min(4, max_accumulators() // 4)  # 4 x 4 where the registers hold it
    return (
        {"layout": "vec_c", "vec": native, "tile_x": tile_x, "tile_c": 2, "parallel": rows_parallel, **common},
        {"layout": "vec_c", "vec": native, "tile_x": 4, "tile_c": square, "parallel": "c", **common},
        {"layout": "vec_c", "vec": native, "tile_x": tile_x1, "tile_c": 1, "parallel": rows_parallel, **common},
        {"layout": "vec_c", "vec": native // 2, "tile_x": tile_x1, "tile_c": 1, "parallel": rows_parallel, **common},
    )


class HalideConv2d(HalideImplementation):
    name = "halide.conv2d"

    def matches(self, workload: Workload) -> bool:
        return (
            is_constant_conv(workload)
            and not workload.blocked
            and not workload.node.attrs.get("pool")  # fused pool or depthwise: halide.conv2d_blocked computes those
            and not workload.node.attrs.get("depthwise")
            and not workload.node.attrs.get("expand")
        )

    def space(self, workload: Workload) -> ConfigSpace:
        p = conv_params(workload)
        padded = any(workload.node.attrs.get("pads", [0]))

        def valid(cfg: Config) -> bool:
            if cfg["tile_x"] * cfg["tile_c"] > max_accumulators():
                return False
            if cfg["layout"] == "vec_x":  # reads input rows along x already: packing channels cannot help
                return (
                    cfg["vec"] * cfg["tile_x"] <= p["w_out"] and cfg["tile_c"] <= p["c_out"] and not cfg["pack_input"]
                )
            if cfg["pack_input"] and cfg["vec"] > p["c_in"]:
                return False
            return cfg["vec"] * cfg["tile_c"] <= p["c_out"] and cfg["tile_x"] <= p["w_out"]

        return ConfigSpace(
            (
                Knob("layout", ("vec_x", "vec_c")),
                Knob("vec", vector_widths()),
                Knob("tile_x", (1, 2, 3, 4, 5, 6, 7, 8)),  # 7 divides the 7/14/28/56/112 widths of ImageNet CNNs
                Knob("tile_c", (1, 2, 3, 4, 6, 8)),
                Knob("reduce_order", ("c_inner", "k_inner")),
                # Knobs that cannot change the code of this layer get one value, so no search wastes trials on them.
                Knob("unroll_kw", (False, True) if p["kw"] > 1 else (False,)),
                Knob("parallel", ("y", "c")),
                Knob("padding", ("select", "copy") if padded else ("copy",)),
                Knob("pack_input", (False, True)),
            ),
            valid,
            defaults=_starting_points(p, max(vector_widths())),
        )

    def define(self, workload: Workload, config: Config) -> Definition:
        p = conv_params(workload)
        vec, layout = config["vec"], config["layout"]
        c_out_group = p["c_out"] // p["groups"]
        has_residual = bool(workload.node.attrs.get("residual"))

        # Constants packed once, at plan time.
        weight = workload.constants[workload.node.inputs[1]].astype(np.float32)
        bias = conv_bias(workload, 2, p["c_out"])
        if layout == "vec_c":
            # (I, KH, KW, O): output channels contiguous, so a vector of them is one dense load.
            weight = np.ascontiguousarray(weight.transpose(1, 2, 3, 0))

        x, y, c, n = hl.Var("x"), hl.Var("y"), hl.Var("c"), hl.Var("n")
        inp = hl.ImageParam(hl.Float(32), 4, "input")
        residual = hl.ImageParam(hl.Float(32), 4, "residual")
        scale = hl.ImageParam(hl.Float(32), 4, "scale")  # (N, C, 1, 1): a per-channel input scale
        has_scale = bool(workload.node.attrs.get("input_scale"))
        w_param = hl.ImageParam(hl.Float(32), weight.ndim, "weight")
        b_param = hl.ImageParam(hl.Float(32), 1, "bias")

        # The algorithm
        padded = any(workload.node.attrs.get("pads", [0]))
        source = inp
        if has_scale:  # each input value times its channel's scale, as it is read
            source = hl.Func("scaled")
            source[x, y, c, n] = inp[x, y, c, n] * scale[0, 0, c, n]
        if padded:
            source = hl.BoundaryConditions.constant_exterior(source, 0.0, [hl.Range(0, p["w"]), hl.Range(0, p["h"])])
        pad_copy = None
        pack = config.get("pack_input", False)
        if pack or (padded and config.get("padding", "select") == "copy"):  # bounds checks once, not per FMA
            pad_copy = hl.Func("packed" if pack else "padded")
            pad_copy[x, y, c, n] = source[x, y, c, n]
            source = pad_copy
        r = hl.RDom([hl.Range(0, p["c_in_group"]), hl.Range(0, p["kw"]), hl.Range(0, p["kh"])], "r")
        in_x = x * p["strides"][1] + r.y * p["dilations"][1] - p["pad_left"]
        in_y = y * p["strides"][0] + r.z * p["dilations"][0] - p["pad_top"]
        in_c = r.x if p["groups"] == 1 else (c // c_out_group) * p["c_in_group"] + r.x
        w_value = w_param[r.y, r.z, r.x, c] if layout == "vec_x" else w_param[c, r.y, r.z, r.x]
        acc = hl.Func("acc")
        acc[x, y, c, n] = b_param[c]
        acc[x, y, c, n] += source[in_x, in_y, in_c, n] * w_value
        out = hl.Func("conv")
        total = acc[x, y, c, n] + residual[x, y, c, n] if has_residual else acc[x, y, c, n]
        out[x, y, c, n] = apply_activation(workload, total)

        # How to schedule it
        xo, xi, co, ci = hl.Var("xo"), hl.Var("xi"), hl.Var("co"), hl.Var("ci")
        reduction = [r.x, r.y, r.z] if config["reduce_order"] == "c_inner" else [r.y, r.z, r.x]
        if layout == "vec_x":
            out.split(x, xo, xi, vec * config["tile_x"]).split(c, co, ci, config["tile_c"])
            out.reorder(xi, ci, xo, y, co, n).vectorize(xi, vec).unroll(xi).unroll(ci)
            acc.compute_at(out, xo).vectorize(x, vec).unroll(x).unroll(c)
            acc.update().reorder(x, c, *reduction, y, n).vectorize(x, vec).unroll(x).unroll(c)
        else:
            out.split(c, co, ci, vec * config["tile_c"]).split(x, xo, xi, config["tile_x"])
            out.reorder(ci, xi, xo, y, co, n).vectorize(ci, vec).unroll(ci).unroll(xi)
            acc.compute_at(out, xo).reorder_storage(c, x, y, n).vectorize(c, vec).unroll(c).unroll(x)
            acc.update().reorder(c, x, *reduction, y, n).vectorize(c, vec).unroll(c).unroll(x)
        if config["unroll_kw"] and p["kw"] <= 7:
            acc.update().unroll(r.y)
        out.parallel(y if config["parallel"] == "y" else co)
        if pack:
            # Input channels innermost (NHWC): the reduction then reads each input line once for many
            # channels instead of touching one cache line per channel plane.
            pad_copy.compute_root().reorder_storage(c, x, y, n).reorder(c, x, y, n).parallel(y).vectorize(c, vec)
        elif pad_copy is not None:
            pad_copy.compute_root().parallel(c).vectorize(x, vec)

        params = [inp] + ([residual] if has_residual else []) + ([scale] if has_scale else []) + [w_param, b_param]
        return Definition(out, params, [weight, bias])
