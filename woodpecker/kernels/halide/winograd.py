"""3x3 convolution (stride 1, padding 1) by Winograd's minimal filtering, F(m x m, 3 x 3), in
the blocked NCHW[b]c layout, fused epilogue.

Why: the direct kernel (conv2d_blocked.py) already runs ResNet's and VGG's 3x3 layers near the
multiply-add peak of these cores, as do the libraries; only fewer multiply-adds go faster. Each
m x m tile of the output is computed from an (m+2) x (m+2) tile of the input, transformed
(V = B^T d B), multiplied channel by channel with the transformed weights (U = G g G^T, packed
once at plan time) in (m+2)^2 independent matrix products over the input channels, and
transformed back (Y = A^T M A): 2.25x (m = 2) or 4x (m = 4) fewer multiply-adds than the direct
convolution (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016). The
transforms add memory traffic and the weights grow (m+2)^2 / 9 times, so layers with few pixels
and many channels (ResNet's 7x7 ones) stay faster direct: the explorer times both per layer.

The products are the same register tile as the direct kernel's: `tile_t` tiles times `tile_k`
vectors of output channels, one broadcast of a transformed input value and one vector of
transformed weights per multiply-add. Tiles are computed by strips of `strip` rows of tiles (0:
the whole image), the strip's transformed input and products kept in cache; cores share out the
strips, or (`parallel` "inside") the products of one strip, for layers with few strips.
F(4x4, 3x3) rounds to about 1e-5 of the output in float32 (F(2x2) to about 5e-7).

NaN and +-Inf: the transforms mix a tile's inputs, so one Inf would make the whole tile NaN
(Inf - Inf) where a direct convolution, and ONNX Runtime, give +-Inf or finite values. A tile whose
input window holds a non-finite value is therefore computed again directly, from weights recovered
from the transformed ones (g = P U P^T); flagging the pixels costs one more read of the input, and
other tiles never pay for the direct computation.
"""

from __future__ import annotations

import halide as hl
import numpy as np

from woodpecker.kernels.halide.common import (
    Definition,
    HalideImplementation,
    apply_activation,
    conv_bias,
    fix_layout,
    is_constant_conv,
    is_nonfinite,
    max_accumulators,
)
from woodpecker.kernels.workload import Workload
from woodpecker.ops.conv import RESIDUAL, conv_params
from woodpecker.search.space import Config, ConfigSpace, Knob

# (B^T, G, A^T) of F(m x m, 3 x 3) per output tile size m (Lavin & Gray, section 4), and a sparse
# left inverse P of G (P G = I), which recovers the 3x3 weights g = P U P^T from the transformed ones.
TRANSFORMS = {
    2: (
        np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]),
        np.array([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]]),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]]),
    ),
    4: (
        np.array(
            [
                [4, 0, -5, 0, 1, 0],
                [0, -4, -4, 1, 1, 0],
                [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0],
                [0, 2, -1, -2, 1, 0],
                [0, 4, 0, -5, 0, 1],
            ]
        ),
        np.array(
            [
                [1 / 4, 0, 0],
                [-1 / 6, -1 / 6, -1 / 6],
                [-1 / 6, 1 / 6, -1 / 6],
                [1 / 24, 1 / 12, 1 / 6],
                [1 / 24, -1 / 12, 1 / 6],
                [0, 0, 1],
            ]
        ),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
    ),
}
RECOVER = {
    2: np.array([[1, 0, 0, 0], [0, 1, -1, 0], [0, 0, 0, 1]]),
    4: np.array([[4, 0, 0, 0, 0, 0], [0, -3, 3, 0, 0, 0], [0, 0, 0, 0, 0, 1]]),
}
STRIPS = (1, 2, 4, 0)  # rows of tiles per strip; 0: the whole image
TILE_T = (1, 2, 3, 4, 5, 6, 7, 8, 12, 14)  # tiles per register tile


class HalideWinograd(HalideImplementation):
    name = "halide.winograd"

    def matches(self, workload: Workload) -> bool:
        node, attrs = workload.node, workload.node.attrs
        if not is_constant_conv(workload) or any(attrs.get(a) for a in ("expand", "depthwise", "pool", "input_scale")):
            return False
        p = conv_params(workload)
        if not (
            (p["kh"], p["kw"]) == (3, 3)
            and p["strides"] == [1, 1]
            and p["dilations"] == [1, 1]
            and attrs.get("pads") == [1, 1, 1, 1]
            and p["groups"] == 1
        ):
            return False
        block, in_block = workload.block(node.outputs[0]), workload.block(node.inputs[0])
        return (
            block > 0 and in_block > 0 and (not attrs.get("residual") or workload.block(node.inputs[RESIDUAL]) == block)
        )

    def space(self, workload: Workload) -> ConfigSpace:
        n, c_out, h, w = workload.output_shape
        blocks = c_out // workload.block(workload.node.outputs[0])

        def valid(cfg: Config) -> bool:
            m = cfg["tile"]
            strips = -(-h // (m * cfg["strip"])) if cfg["strip"] else 1
            return (
                blocks % cfg["tile_k"] == 0
                and cfg["tile_t"] * cfg["tile_k"] <= max_accumulators()
                and cfg["tile_t"] <= -(-w // m)
                and (cfg["strip"] == 0 or cfg["strip"] < -(-h // m))  # a strip of all rows is spelled 0
                and (cfg["parallel"] == "inside" or strips * n >= 2)
            )

        # Starting points measured on ResNet-18's, VGG-16's and SqueezeNet's 3x3 layers.
        starts = [
            {"tile": m, "tile_t": t, "tile_k": k, "strip": s, "parallel": par}
            for m, t, k, s, par in (
                (4, 4, 4, 1, "strips"),
                (4, 7, 2, 1, "strips"),
                (4, 14, 1, 2, "strips"),
                (4, 4, 4, 0, "inside"),
                (2, 7, 2, 1, "strips"),
                (2, 4, 4, 0, "inside"),
            )
        ]
        defaults = []
        for start in starts:
            fits = [
                {**start, "tile_t": t, "tile_k": k}
                for k in range(start["tile_k"], 0, -1)
                for t in sorted(TILE_T, reverse=True)
                if t <= start["tile_t"]
                if valid({**start, "tile_t": t, "tile_k": k})
            ]
            if fits and fits[0] not in defaults:
                defaults.append(fits[0])
        return ConfigSpace(
            (
                Knob("tile", (2, 4)),
                Knob("tile_t", TILE_T),
                Knob("tile_k", tuple(range(1, min(blocks, 6) + 1))),
                Knob("strip", STRIPS),
                Knob("parallel", ("strips", "inside")),
            ),
            valid,
            defaults=tuple(defaults),
        )

    def define(self, workload: Workload, config: Config) -> Definition:
        node = workload.node
        _, c_out, h, w = workload.output_shape
        c_in = workload.input_shape(0)[1]
        b, in_block = workload.block(node.outputs[0]), workload.block(node.inputs[0])
        m = config["tile"]
        a = m + 2
        b_t, g, a_t = TRANSFORMS[m]
        has_residual = bool(node.attrs.get("residual"))

        # Transformed weights U = G g G^T, packed (a*a, O/b, I/in_block, in_block, b): one
        # sequential stream per (position in the tile, output block), as the products read them.
        weight = workload.constants[node.inputs[1]].astype(np.float64)
        u = np.einsum("ai,kcij,bj->abkc", g, weight, g).reshape(a * a, c_out // b, b, c_in // in_block, in_block)
        u = np.ascontiguousarray(u.transpose(0, 1, 3, 4, 2).astype(np.float32))
        bias = conv_bias(workload, 2, c_out)

        c, t, e, k, ty, n, x, y = (hl.Var(v) for v in ("c", "t", "e", "k", "ty", "n", "x", "y"))
        inp = hl.ImageParam(hl.Float(32), 5, "input")  # (N, C/b, H, W, b) seen as c, x, y, k, n
        residual = hl.ImageParam(hl.Float(32), 5, "residual")
        u_param = hl.ImageParam(hl.Float(32), 5, "weight")
        b_param = hl.ImageParam(hl.Float(32), 1, "bias")

        # The algorithm. V: the input tiles transformed, per input channel and position e in the tile.
        source = hl.BoundaryConditions.constant_exterior(
            inp, 0.0, [hl.Range(0, in_block), hl.Range(0, w), hl.Range(0, h)]
        )
        d = [[source[c, t * m + j - 1, ty * m + i - 1, k, n] for j in range(a)] for i in range(a)]
        rows = [[_combine(b_t[p], [d[i][j] for i in range(a)]) for j in range(a)] for p in range(a)]  # B^T d
        transformed = hl.Func("transformed")  # (channel in block, tile, e, input block, tile row, n)
        transformed[c, t, e, k, ty, n] = hl.mux(e, [_combine(b_t[q], rows[p]) for p in range(a) for q in range(a)])
        # M: per position e, the product of U and V over the input channels.
        r = hl.RDom([hl.Range(0, in_block), hl.Range(0, c_in // in_block)], "r")
        acc = hl.Func("acc")
        acc[c, t, e, k, ty, n] = hl.f32(0)
        acc[c, t, e, k, ty, n] += u_param[c, r.x, r.y, k, e] * transformed[r.x, t, e, r.y, ty, n]
        product = hl.Func("product")
        product[c, t, e, k, ty, n] = acc[c, t, e, k, ty, n]
        # Y = A^T M A, one expression per output position (xi, yi) of tile (t, ty).
        px, py = hl.Var("px"), hl.Var("py")
        tile = [product[c, t, position, k, ty, n] for position in range(a * a)]
        positions = [_combine(np.outer(a_t[i], a_t[j]).ravel(), tile) for i in range(m) for j in range(m)]
        tiles = hl.Func("tiles")
        tiles[c, px, py, t, k, ty, n] = hl.mux(py * m + px, positions)
        # Tiles whose input window holds NaN or +-Inf: computed again, directly. Flags per pixel (over
        # the input blocks, in vectors), then per tile over its (m+2) x (m+2) window.
        blocks_in = hl.RDom([hl.Range(0, c_in // in_block)], "blocks_in")
        pixel_lanes = hl.Func("nonfinite_lanes")
        pixel_lanes[c, x, y, n] = hl.maximum(hl.select(is_nonfinite(source[c, x, y, blocks_in.x, n]), 1, 0))
        lanes = hl.RDom([hl.Range(0, in_block)], "lanes")
        flagged = hl.Func("nonfinite_pixel")
        flagged[x, y, n] = hl.maximum(pixel_lanes[lanes.x, x, y, n])
        window = hl.RDom([hl.Range(0, a), hl.Range(0, a)], "window")
        nonfinite = hl.Func("nonfinite_tile")
        nonfinite[t, ty, n] = hl.maximum(flagged[t * m + window.x - 1, ty * m + window.y - 1, n])
        rt = hl.RDom([hl.Range(0, m), hl.Range(0, m)], "rt")
        rt.where(nonfinite[t, ty, n] != 0)
        rc = hl.RDom([hl.Range(0, c_in)], "rc")
        recover = RECOVER[m]
        direct = hl.Func("direct")
        direct[c, px, py, t, k, ty, n] = hl.f32(0)
        for i in range(3):
            for j in range(3):
                weight = _combine(
                    np.outer(recover[i], recover[j]).ravel(),
                    [u_param[c, rc.x % in_block, rc.x / in_block, k, e] for e in range(a * a)],
                )
                pixel = source[rc.x % in_block, t * m + px + j - 1, ty * m + py + i - 1, rc.x / in_block, n]
                direct[c, px, py, t, k, ty, n] += weight * pixel
        tiles[c, rt.x, rt.y, t, k, ty, n] = direct[c, rt.x, rt.y, t, k, ty, n]
        total = tiles[c, x % m, y % m, x / m, k, y / m, n] + b_param[k * b + c]
        if has_residual:
            total = total + residual[c, x, y, k, n]
        out = hl.Func("conv")
        out[c, x, y, k, n] = apply_activation(workload, total)

        # How to schedule it: strips of tile rows; per strip, V, then the products by register tiles.
        strip = config["strip"] or -(-h // m)
        out.bound(c, 0, b).bound(x, 0, w).bound(y, 0, h)
        tx, xi, yo, yi, ti_row, yii, strips = (hl.Var(v) for v in ("tx", "xi", "yo", "yi", "ti_row", "yii", "strips"))
        guard = hl.TailStrategy.GuardWithIf
        out.split(x, tx, xi, m, guard).split(y, yo, yi, m * strip, guard).split(yi, ti_row, yii, m)
        out.reorder(c, xi, yii, tx, k, ti_row, yo, n).vectorize(c).unroll(xi).unroll(yii)
        out.fuse(yo, n, strips)
        to, ti, ko, ki = hl.Var("to"), hl.Var("ti"), hl.Var("ko"), hl.Var("ki")
        tiles.compute_at(out, strips).bound(c, 0, b).bound(px, 0, m).bound(py, 0, m)
        tiles.reorder(c, px, py, t, k, ty, n).vectorize(c).unroll(px).unroll(py)
        tiles.update().reorder(c, rt.x, rt.y, t, k, ty, n).vectorize(c)
        direct.compute_at(tiles, rt.x).vectorize(c)
        for stage in range(9):
            direct.update(stage).vectorize(c)
        nonfinite.compute_at(out, strips)
        flagged.compute_at(out, strips)
        pixel_lanes.compute_at(out, strips).bound(c, 0, in_block).vectorize(c)
        product.compute_at(out, strips).bound(c, 0, b).bound(e, 0, a * a)
        product.split(t, to, ti, config["tile_t"], guard).split(k, ko, ki, config["tile_k"])
        product.reorder(c, ti, ki, to, ko, e, ty, n).vectorize(c)
        acc.compute_at(product, to).bound_extent(t, config["tile_t"]).vectorize(c).unroll(t).unroll(k)
        acc.update().reorder(c, t, k, r.x, r.y, e, ty, n).vectorize(c).unroll(t).unroll(k).unroll(r.x)
        transformed.compute_at(out, strips).bound(c, 0, in_block).bound(e, 0, a * a)
        transformed.reorder(c, e, t, k, ty, n).vectorize(c).unroll(e)
        if config["parallel"] == "strips":
            out.parallel(strips)
        else:  # one strip at a time, its steps shared out: products by position, the rest by blocks
            product.parallel(e)
            transformed.parallel(k)
            pixel_lanes.parallel(y)
            out.parallel(k)

        fix_layout(inp, workload.values[node.inputs[0]].stored_shape)
        fix_layout(u_param, u.shape)
        fix_layout(b_param, bias.shape)
        params = [inp]
        if has_residual:
            fix_layout(residual, workload.values[node.inputs[RESIDUAL]].stored_shape)
            params.append(residual)
        return Definition(out, [*params, u_param, b_param], [u, bias])


def _combine(coefficients, values: list[hl.Expr]) -> hl.Expr:
    """sum(coefficient * value), the zero terms left out and units not multiplied."""
    total = None
    for coefficient, value in zip(coefficients, values):
        if coefficient == 0:
            continue
        term = value if coefficient == 1 else -value if coefficient == -1 else value * hl.f32(float(coefficient))
        total = term if total is None else total + term
    return total
