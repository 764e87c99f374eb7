"""2-D convolution writing the blocked NCHW[b]c layout (graph/passes/layout.py), fused epilogue.

The register tile is `tile_x` output pixels times `tile_k` blocks of b output channels, each a
full vector; every reduction step broadcasts one input value (b consecutive input channels
sit in one cache line) and multiplies it with a contiguous vector of packed weights. Reads a
plain NCHW input too (the stem, whose 3 channels no block divides), and covers depthwise
convolutions (one input channel per output channel, both blocked) and grouped ones whose groups
whole input blocks hold (each output block reduces over its own groups' blocks only; a block of
16 holding two groups of 8 multiplies the other group's inputs by zero).

Half-vector blocks (MobileNetV2's 24 channels, SqueezeNet's 1000-channel classifier) can be
computed `wide`: one full vector holds two consecutive output blocks (the weights are packed,
zero-padded, in pairs of blocks) and each vector is stored as two half-vector stores.

`chunk` (large weights): the accumulators of a whole image, or of a strip of `chunk_rows` rows,
for one tile of output blocks stay in cache and the reduction walks `chunk` input blocks at a
time over all of their tiles, so those blocks' weights are read from L1 once per image or strip
instead of from L2 once per register tile (ResNet's 7x7 layers stream megabytes of weights per
row otherwise), the way oneDNN's batch-reduce kernels split their reduction.
"""

from __future__ import annotations

import halide as hl
import numpy as np

from woodpecker.graph.passes.layout import grouped_span
from woodpecker.kernels.halide.common import (
    Definition,
    HalideImplementation,
    apply_activation,
    conv_bias,
    depthwise_constants,
    divisors,
    fix_layout,
    is_constant_conv,
    is_nonfinite,
    max_accumulators,
    native_vector_width,
    row_tile,
    window_max,
)
from woodpecker.kernels.workload import Workload
from woodpecker.ops import activations
from woodpecker.ops.conv import DEPTHWISE_WEIGHT, RESIDUAL, SCALE, conv_params
from woodpecker.search.space import Config, ConfigSpace, Knob


def _depthwise(p: dict) -> bool:
    return p["groups"] > 1 and p["groups"] == p["c_in"] == p["c_out"]


def _span(p: dict, in_block: int, block: int) -> int:
    """Input channels an output block reads: all of them, or (grouped) those of its own groups."""
    if p["groups"] == 1:
        return p["c_in"]
    return grouped_span(p["c_in"], p["c_out"], p["groups"], in_block, block)


def _out_block(workload: Workload) -> int:
    """The output's block, or for a plain output the vector width the kernel computes in (zero-padded)."""
    return workload.block(workload.node.outputs[0]) or native_vector_width()


def _plain_output(workload: Workload) -> bool:
    """A plain output, computed in blocks a row at a time and stored a row at a time, channel after
    channel: a Conv reading blocked values whose channels no block divides (ReXNet's 38, 61, ...)."""
    return not workload.block(workload.node.outputs[0])


def _can_widen(workload: Workload, p: dict) -> bool:
    """Output blocks of half a vector, which pairs of them fill (not depthwise: its input is per block)."""
    return p["groups"] == 1 and 2 * workload.block(workload.node.outputs[0]) == native_vector_width()


class HalideConv2dBlocked(HalideImplementation):
    name = "halide.conv2d_blocked"
    revision = 2  # 2: constant strides, a block's channel loop unrolled

    def matches(self, workload: Workload) -> bool:
        node = workload.node
        if not (
            is_constant_conv(workload) and not node.attrs.get("expand")  # kernels/halide/expand_depthwise.py
        ):
            return False
        block, in_block = workload.block(node.outputs[0]), workload.block(node.inputs[0])
        # A fused residual is stored like the output, a fused input scale like the input.
        fused_ok = (not node.attrs.get("residual") or workload.block(node.inputs[RESIDUAL]) == block) and (
            not node.attrs.get("input_scale") or workload.block(node.inputs[SCALE]) == in_block
        )
        p = conv_params(workload)
        if node.attrs.get("depthwise"):  # the fused depthwise stage reads and writes input blocks
            return block > 0 and in_block > 0 and fused_ok and p["groups"] == 1
        if _depthwise(p):
            return block > 0 and in_block == block and fused_ok
        if p["groups"] > 1:  # (no fused pool: its exact recomputation, see _exact_grouped, is per output pixel)
            ok = block > 0 and in_block > 0 and fused_ok and not node.attrs.get("pool")
            return ok and bool(_span(p, in_block, block))
        # Any input block (`inner` adapts); a plain output from a blocked input, with no fused stage.
        plain_ok = in_block > 0 and not any(node.attrs.get(a) for a in ("residual", "pool", "depthwise"))
        return (block > 0 or plain_ok) and fused_ok

    def space(self, workload: Workload) -> ConfigSpace:
        p = conv_params(workload)
        blocks = -(-p["c_out"] // _out_block(workload))
        plain = _plain_output(workload)
        padded = any(workload.node.attrs.get("pads", [0]))
        depthwise = _depthwise(p)
        widen = _can_widen(workload, p)
        chunks = _chunks(workload, p)
        chunk_rows = tuple(r for r in (1, 2, 4) if p["h_out"] % r == 0 and r < p["h_out"]) if chunks else ()

        pooled, staged = workload.node.attrs.get("pool"), workload.node.attrs.get("depthwise")

        def valid(cfg: Config) -> bool:
            # tile_k counts vectors: blocks, or pairs of blocks when wide (the last pair may be half padding)
            vectors_ok = cfg["tile_k"] <= (blocks + 1) // 2 if cfg.get("wide") else blocks % cfg["tile_k"] == 0
            # Fused stages computed by rows parallelize over rows (the `parallel` knob is moot).
            rows_ok = not cfg.get("pool_rows") or (
                cfg["parallel"] == "y" and cfg["pool_rows"] <= workload.output_shape[2]
            )
            rows_ok = rows_ok and (cfg.get("depthwise_at") != "rows" or cfg["parallel"] == "y")
            # Chunks: whole tiles along rows, images outermost, the whole output under a fused pool; without
            # strips of rows, cores share out output blocks (an image's accumulators per tile of blocks).
            chunk_ok = not cfg.get("chunk_rows")
            if cfg.get("chunk"):
                chunk_ok = (
                    not cfg["batch_inner"]
                    and not cfg.get("pool_rows")
                    and p["w_out"] % cfg["tile_x"] == 0
                    and (cfg["parallel"] == "k" or cfg["chunk_rows"] > 0)
                )
            return (
                vectors_ok
                and (not plain or cfg["parallel"] == "y" and not cfg["batch_inner"])
                and rows_ok
                and chunk_ok
                and cfg["tile_x"] * cfg["tile_k"] <= max_accumulators()
                and cfg["tile_x"] <= p["w_out"]
            )

        tile_x, tile_x1 = row_tile(p["w_out"], 2), row_tile(p["w_out"])  # for tiles of 2 and 1 vectors
        start = {"reduce_order": "c_inner", "unroll_kw": False, "padding": "copy", "batch_inner": p["n"] > 1}
        # Starting points measured on ResNet, MobileNetV2 and SqueezeNet layers (a budget of 6 mostly tries these).
        starts = ((tile_x, 2, "yk"), (tile_x, 2, "k"), (4, 4, "k"), (tile_x1, 1, "k"), (4, 4, "yk"))
        if depthwise:  # 9 multiply-adds per output: a padded copy or a row-parallel loop costs more than it saves
            start = {**start, "unroll_kw": p["kw"] > 1, "padding": "select" if padded else "copy"}
            starts = ((tile_x1, 1, "k"), (tile_x, 2, "k"), (4, 2, "k"), (4, 4, "k"))
        elif not workload.block(workload.node.inputs[0]):  # the stem: 3 input channels make bounds checks cheap
            start = {**start, "padding": "select" if padded else "copy", "reduce_order": "k_inner"}
            starts = ((5, 2, "yk"), (3, 2, "k"), (tile_x, 2, "yk"), (3, 1, "y"))
        if plain:  # rows in parallel, each computed whole before it is stored
            starts = ((tile_x, 2, "y"), (4, 4, "y"), (tile_x1, 1, "y"))
        if chunks:
            start = {**start, "chunk": 0, "chunk_rows": 0}
            chunk_tile = tile_x if p["w_out"] % tile_x == 0 else tile_x1  # chunks take whole tiles along rows
            if _weights_outgrow_rows(p):  # the whole image's accumulators, cores share out output blocks
                chunked = {"chunk": 1 if p["kh"] * p["kw"] > 1 else max(c for c in chunks if c <= 4)}
                starts = (starts[0], (chunk_tile, 2, "k", chunked), (4, 4, "k", chunked), *starts[1:])
            elif p["kh"] * p["kw"] > 1:  # strips of rows (ResNet's 56x56 and 28x28 3x3 layers: 1.1-1.2x)
                chunked = {"chunk": 1, "chunk_rows": 2 if 2 in chunk_rows else 1}
                starts = (starts[0], (4, 4, "yk", chunked), (chunk_tile, 2, "yk", chunked), *starts[1:])
        return ConfigSpace(
            (
                # Divisors of the width leave no partial tile (9 for 27 pixels, 11 for 55).
                Knob("tile_x", tuple(sorted({1, 2, 3, 4, 5, 6, 7, 8, 12, 14, *divisors(p["w_out"], 16)}))),
                Knob("tile_k", tuple(range(1, min(blocks, 6) + 1))),
                Knob("reduce_order", ("c_inner",) if depthwise else ("c_inner", "k_inner")),
                Knob("unroll_kw", (False, True) if p["kw"] > 1 else (False,)),
                Knob("parallel", ("y", "yk", "k")),
                Knob("padding", ("select", "copy") if padded else ("copy",)),
                # Images inside the channel-block loop: a block's weights are read once for the whole batch.
                Knob("batch_inner", (False, True) if p["n"] > 1 else (False,)),
                *([Knob("wide", (False, True))] if widen else []),
                *([Knob("pool_rows", (0, 1, 2, 4, 8))] if pooled else []),
                *([Knob("depthwise_at", ("rows", "root"))] if staged else []),
                *([Knob("chunk", (0, *chunks)), Knob("chunk_rows", (0, *chunk_rows))] if chunks else []),
            ),
            valid,
            defaults=_starting_points(
                start,
                starts,
                p["w_out"],
                [True, False] if widen else [None],
                _stage_starts(pooled, staged),
                valid,
            ),
        )

    def define(self, workload: Workload, config: Config) -> Definition:
        node = workload.node
        p = conv_params(workload)
        b, in_block = _out_block(workload), workload.block(node.inputs[0])
        plain = _plain_output(workload)
        depthwise = _depthwise(p)
        has_residual = bool(node.attrs.get("residual"))

        # Constants packed once, at plan time, in the order the reduction reads them (one sequential
        # stream per output block): (O/b, I/inner, KH, KW, inner, b), or (C/b, KH, KW, b) depthwise.
        # Wide: a vector is two blocks, output channels zero-padded to whole tiles of vectors.
        wide = bool(config.get("wide"))
        lanes = 2 * b if wide else b
        vectors = -(-p["c_out"] // (lanes * config["tile_k"])) * config["tile_k"] if wide else -(-p["c_out"] // b)
        weight = _pad_channels(workload.constants[node.inputs[1]].astype(np.float32), vectors * lanes)
        inner = in_block or p["c_in"]  # input channels per step: a block, or all of a plain input
        span = p["c_in"] if depthwise else _span(p, in_block, b)  # input channels an output block reads
        if depthwise:
            blocked_weight = weight.reshape(vectors, lanes, p["kh"], p["kw"]).transpose(0, 2, 3, 1)
        else:
            if p["groups"] > 1:
                weight = _spread_groups(weight, p, b, span)
            blocked_weight = weight.reshape(vectors, lanes, span // inner, inner, p["kh"], p["kw"])
            blocked_weight = blocked_weight.transpose(0, 2, 4, 5, 3, 1)
        bias = _pad_channels(conv_bias(workload, 2, p["c_out"]), vectors * lanes)

        c, x, y, k, n = hl.Var("c"), hl.Var("x"), hl.Var("y"), hl.Var("k"), hl.Var("n")
        inp = hl.ImageParam(hl.Float(32), 5 if in_block else 4, "input")
        residual = hl.ImageParam(hl.Float(32), 5, "residual")
        scale = hl.ImageParam(hl.Float(32), 5 if in_block else 4, "scale")  # (N, C, 1, 1) stored like the input
        has_scale = bool(node.attrs.get("input_scale"))
        w_param = hl.ImageParam(hl.Float(32), blocked_weight.ndim, "weight")
        b_param = hl.ImageParam(hl.Float(32), 1, "bias")

        # The algorithm (Halide sees the stored (N, C/b, H, W, b) array as c, x, y, k, n)
        padded = any(node.attrs.get("pads", [0]))
        spatial = [hl.Range(0, p["w"]), hl.Range(0, p["h"])]
        source = inp
        dims = [c, x, y, k, n] if in_block else [x, y, c, n]
        if has_scale:  # each input value times its channel's scale, as it is read
            scaled = hl.Func("scaled")
            scaled[dims] = inp[dims] * scale[[c, 0, 0, k, n] if in_block else [0, 0, c, n]]
            source = scaled
        stage = node.attrs.get("depthwise")
        if stage:  # the depthwise Conv whose output this 1x1 convolution reads (fuse_depthwise.py)
            dw_weight, dw_bias = depthwise_constants(workload, in_block, weight=5, bias=6)
            dw_w_param, dw_b_param = (
                hl.ImageParam(hl.Float(32), 4, "dw_weight"),
                hl.ImageParam(hl.Float(32), 1, "dw_bias"),
            )
            source, dw_acc, dw_r = _depthwise_stage(inp, stage, dw_w_param, dw_b_param, workload, in_block)
        if padded:
            bounds = [hl.Range(0, in_block), *spatial] if in_block else spatial
            source = hl.BoundaryConditions.constant_exterior(source, 0.0, bounds)
            if config["padding"] == "copy":  # bounds checks once, not per multiply-add
                copy = hl.Func("padded")
                copy[dims] = source[dims]
                source = copy
        # Input channels: inner (within a block, or all of a plain input) and outer (blocks).
        chunk = config.get("chunk", 0)  # input blocks per partial sum, 0: the whole reduction at once
        if depthwise:
            r = hl.RDom([hl.Range(0, p["kw"]), hl.Range(0, p["kh"])], "r")
            rx, ry = r.x, r.y
        else:
            r = hl.RDom(
                [hl.Range(0, inner), hl.Range(0, p["kw"]), hl.Range(0, p["kh"]), hl.Range(0, chunk or span // inner)],
                "r",
            )
            rx, ry = r.y, r.z
        in_x = x * p["strides"][1] + rx * p["dilations"][1] - p["pad_left"]
        in_y = y * p["strides"][0] + ry * p["dilations"][0] - p["pad_top"]
        acc = hl.Func("acc")  # (channel in vector, x, y, vector, n)
        acc[c, x, y, k, n] = b_param[k * lanes + c]
        if depthwise:
            acc[c, x, y, k, n] += w_param[c, rx, ry, k] * source[c, in_x, in_y, k, n]
        elif chunk:  # partial sums over `chunk` input blocks, added to accumulators kept in cache
            g = hl.Var("g")
            partial = hl.Func("partial")
            partial[c, x, y, k, n, g] = hl.f32(0)
            block = g * chunk + r.w
            partial[c, x, y, k, n, g] += w_param[c, r.x, rx, ry, block, k] * source[r.x, in_x, in_y, block, n]
            rg = hl.RDom([hl.Range(0, span // inner // chunk)], "rg")
            acc[c, x, y, k, n] += partial[c, x, y, k, n, rg]
        else:
            # Grouped: output block k starts reading at its first group's first input block.
            group_in, group_out = p["c_in"] // p["groups"], p["c_out"] // p["groups"]
            first = (k * b / group_out) * group_in / inner if p["groups"] > 1 else 0
            value = source[r.x, in_x, in_y, first + r.w, n] if in_block else source[in_x, in_y, r.x, n]
            acc[c, x, y, k, n] += w_param[c, r.x, rx, ry, r.w, k] * value
        result = acc[c + b * (k % 2), x, y, k / 2, n] if wide else acc[c, x, y, k, n]
        total = result + residual[c, x, y, k, n] if has_residual else result
        out = hl.Func("conv")
        out[c, x, y, k, n] = apply_activation(workload, total)
        grouped = p["groups"] > 1 and not depthwise
        if grouped:
            exact_at, group_param, group_weight = _exact_grouped(
                workload, p, out, source, scaled if has_scale else inp, b_param, residual if has_residual else None
            )
        pool, pool_rows = node.attrs.get("pool"), config.get("pool_rows", 0)
        pooled = _pool_stage(out, pool, p, c, x, y, k, n) if pool else None
        if plain:
            channel = hl.Var("channel")
            stored = hl.Func("plain")
            stored[x, y, channel, n] = out[channel % b, x, y, channel / b, n]

        # How to schedule it: vectors of b output channels, a tile_x x tile_k register tile
        out.bound(c, 0, b)
        xo, xi, ko, ki, yk = hl.Var("xo"), hl.Var("xi"), hl.Var("ko"), hl.Var("ki"), hl.Var("yk")
        out.split(x, xo, xi, config["tile_x"])
        if wide:  # whole pairs per tile; the last tile's missing blocks are guarded (their weights are padding)
            out.bound(k, 0, p["c_out"] // b).split(k, ko, ki, 2 * config["tile_k"], hl.TailStrategy.GuardWithIf)
            acc.bound_extent(k, config["tile_k"])
        else:
            out.split(k, ko, ki, config["tile_k"])
        batch_inner = config.get("batch_inner", False)
        dw_rows = config.get("depthwise_at") == "rows"
        chunk_rows = config.get("chunk_rows", 0)
        if chunk:  # constant extents: the accumulators' size, whole tiles and strips
            out.bound(x, 0, p["w_out"]).bound(y, 0, p["h_out"])
        rows = (y,)
        if chunk_rows:  # strips of rows whose accumulators stay in cache while the chunks are reduced
            cy, cyi = hl.Var("cy"), hl.Var("cyi")
            out.split(y, cy, cyi, chunk_rows)
            rows = (cyi, cy)
        outer = (*rows, n, ko) if batch_inner else (*rows, ko, n)
        if dw_rows:  # rows outside the output blocks: a row of the depthwise output serves all of them
            outer = (ko, y, n)
        out.reorder(c, xi, ki, xo, *outer).vectorize(c).unroll(xi).unroll(ki)
        if depthwise:
            reduction = [r.x, r.y]
        elif config["reduce_order"] == "c_inner":  # a block of input channels, then the window
            reduction = [r.x, r.y, r.z, r.w]
        else:
            reduction = [r.x, r.w, r.y, r.z]
        fused_rows = config["parallel"] == "yk" and not pool_rows  # rows fused with the loop around them
        if chunk:  # accumulators of a strip of rows (or the image) in cache; a register tile per partial sum
            acc.compute_at(out, (yk if fused_rows else cy) if chunk_rows else ko).vectorize(c, lanes)
            px, pxi = hl.Var("px"), hl.Var("pxi")
            acc.update().split(x, px, pxi, config["tile_x"]).reorder(c, pxi, k, px, y, n, rg)
            acc.update().vectorize(c, lanes).unroll(pxi).unroll(k)
            partial.compute_at(acc, px).bound_extent(x, config["tile_x"]).bound_extent(k, config["tile_k"])
            partial.vectorize(c, lanes).unroll(x).unroll(k)
            updated = partial.update()
        else:
            acc.compute_at(out, xo).vectorize(c, lanes).unroll(x).unroll(k)
            updated = acc.update()
        updated.reorder(c, x, k, *reduction, y, n).vectorize(c, lanes).unroll(x).unroll(k)
        if config["unroll_kw"]:
            updated.unroll(rx)
        if not depthwise and inner <= native_vector_width():  # a block's channels: immediate offsets (1.04-1.17x)
            updated.unroll(r.x)
        if pool:
            pooled.bound(c, 0, b).vectorize(c)
        if pool_rows:  # computed a strip of rows at a time, for the strip of pooled rows that reads it
            yo, yi = hl.Var("yo"), hl.Var("yi")
            pooled.split(y, yo, yi, pool_rows).reorder(c, x, yi, k, yo, n).parallel(yo)
            out.compute_at(pooled, yo)
        elif plain:  # a row of blocks in cache, stored channel after channel (gathers along the row)
            out.compute_at(stored, y)
            stored.bound(channel, 0, p["c_out"]).reorder(x, channel, y, n).parallel(y)
            stored.vectorize(x, b, hl.TailStrategy.GuardWithIf)
        elif fused_rows:
            out.fuse(rows[-1], outer[len(rows)], yk).parallel(yk)
        elif config["parallel"] == "k":  # each core streams its own weights once, rows reuse them from L2
            out.parallel(ko)
        else:
            out.parallel(rows[-1])
        if pool and not pool_rows:  # whole, then pooled: the unfused graph's two passes in one call
            out.compute_root()
            pooled.parallel(y)
        if stage:
            _schedule_depthwise(source, dw_acc, dw_r, out, y, row_tile(p["w"]), dw_rows)
        if padded and config["padding"] == "copy":
            copy.compute_root().parallel(y)
            if in_block:
                copy.bound(c, 0, in_block).vectorize(c)

        fix_layout(w_param, blocked_weight.shape)
        fix_layout(b_param, bias.shape)
        fix_layout(inp, workload.values[node.inputs[0]].stored_shape)
        if has_residual:
            fix_layout(residual, workload.values[node.inputs[RESIDUAL]].stored_shape)
        params = [inp] + ([residual] if has_residual else []) + ([scale] if has_scale else []) + [w_param, b_param]
        constants = [np.ascontiguousarray(blocked_weight), bias]
        if grouped:
            exact_at()
            params.append(group_param)
            constants.append(group_weight)
        if stage:
            params += [dw_w_param, dw_b_param]
            constants += [dw_weight, dw_bias]
            fix_layout(dw_w_param, dw_weight.shape)
            fix_layout(dw_b_param, dw_bias.shape)
        return Definition(pooled if pool else stored if plain else out, params, constants)


def _exact_grouped(workload: Workload, p: dict, out: hl.Func, source, raw, b_param, residual):
    """Output rows of a grouped convolution whose input rows hold NaN or +-Inf, computed again over
    each output channel's own group only. Where a block holds several groups, each lane multiplies
    the other groups' inputs by zero weights, and 0 * Inf = NaN would spill into them.

    Adds updates of `out` over the flagged rows; returns a function that schedules them, and the
    parameter and array of the plain weights they read."""
    node = workload.node
    b, in_block = workload.block(node.outputs[0]), workload.block(node.inputs[0])
    c, x, y, k, n = hl.Var("c"), hl.Var("x"), hl.Var("y"), hl.Var("k"), hl.Var("n")
    group_in, group_out = p["c_in"] // p["groups"], p["c_out"] // p["groups"]
    weight = np.ascontiguousarray(workload.constants[node.inputs[1]].astype(np.float32))  # (O, I/groups, KH, KW)
    w_param = hl.ImageParam(hl.Float(32), 4, "group_weight")
    fix_layout(w_param, weight.shape)
    # Flags: per input row (any pixel, any channel; reduced in vectors of a block's channels), then
    # per output row (any input row its windows read).
    pixels_in = hl.RDom([hl.Range(0, p["w"]), hl.Range(0, p["c_in"] // in_block)], "pixels_in")
    lanes = hl.Func("nonfinite_lanes")
    lanes[c, y, n] = hl.maximum(hl.select(is_nonfinite(raw[c, pixels_in.x, y, pixels_in.y, n]), 1, 0))
    across = hl.RDom([hl.Range(0, in_block)], "across")
    input_row = hl.Func("nonfinite_input_row")
    input_row[y, n] = hl.maximum(lanes[across.x, y, n])
    inside = hl.BoundaryConditions.constant_exterior(input_row, 0, [hl.Range(0, p["h"])])
    taps = hl.RDom([hl.Range(0, p["kh"])], "taps")
    row = hl.Func("nonfinite_row")
    row[y, n] = hl.maximum(inside[y * p["strides"][0] + taps.x * p["dilations"][0] - p["pad_top"], n])
    # The exact sum over the group's own input channels and the epilogue, for the flagged rows. The
    # activation is a stage of its own: read inside it (its NaN tests reinterpret bits), `exact`
    # would be computed whether or not the predicate holds.
    q = hl.RDom([hl.Range(0, group_in), hl.Range(0, p["kw"]), hl.Range(0, p["kh"])], "q")
    channel = k * b + c
    source_channel = channel / group_out * group_in + q.x
    in_x = x * p["strides"][1] + q.y * p["dilations"][1] - p["pad_left"]
    in_y = y * p["strides"][0] + q.z * p["dilations"][0] - p["pad_top"]
    exact = hl.Func("exact")
    exact[c, x, y, k, n] = b_param[channel] + (residual[c, x, y, k, n] if residual is not None else 0)
    exact[c, x, y, k, n] += (
        w_param[q.y, q.z, q.x, channel] * source[source_channel % in_block, in_x, in_y, source_channel / in_block, n]
    )
    pixels = hl.RDom([hl.Range(0, p["w_out"])], "pixels")
    pixels.where(row[y, n] != 0)
    out[c, pixels.x, y, k, n] = exact[c, pixels.x, y, k, n]
    activated = bool(workload.node.attrs.get("activation"))
    if activated:
        out[c, pixels.x, y, k, n] = apply_activation(workload, out[c, pixels.x, y, k, n])

    def schedule() -> None:
        lanes.compute_root().bound(c, 0, in_block).vectorize(c).parallel(y)
        input_row.compute_root()
        row.compute_root()
        for stage in range(2 if activated else 1):
            out.update(stage).reorder(c, pixels.x, k, y, n).vectorize(c).parallel(y)
        exact.compute_at(out, pixels.x).vectorize(c)
        exact.update().vectorize(c)

    return schedule, w_param, weight


def _chunks(workload: Workload, p: dict) -> tuple[int, ...]:
    """Input blocks per partial sum worth trying for `chunk` (none: the knob is moot). Convolutions
    of one group over a blocked input (a fused pool computed after the whole output) under at least
    128 KiB of weights, 3x3 or reducing over 256+ channels, whose rows split into whole tiles of
    4-16 pixels: where it was measured to win (ResNet, VGG-16 incl. its pooled layers 1.05-1.3x);
    on MobileNetV2's and SqueezeNet's smaller or 13-pixel-wide layers it lost (0.5-0.8x). 1x1
    layers reduce over more blocks per partial sum, so that each register tile does enough
    multiply-adds to pay for its loads and stores."""
    in_block = workload.block(workload.node.inputs[0])
    if (
        not in_block
        or _plain_output(workload)
        or p["groups"] > 1
        or _can_widen(workload, p)
        or workload.node.attrs.get("depthwise")
        or _weight_bytes(p) < 128 * 1024
        or (p["kh"] * p["kw"] == 1 and p["c_in"] < 256)
        or not any(p["w_out"] % tile == 0 for tile in range(4, 17))
    ):
        return ()
    blocks = p["c_in"] // in_block
    sizes = (1, 2) if p["kh"] * p["kw"] > 1 else (2, 4, 8)
    return tuple(size for size in sizes if blocks % size == 0 and blocks > size)


def _weights_outgrow_rows(p: dict) -> bool:
    """Where `chunk` is worth trying first: at most 28x28 pixels under at least 256 KiB of weights
    (measured on ResNet-18/50: 1.1-1.6x on their 7x7 and 14x14 layers over 1 MiB of weights and on
    the 28x28 one reducing over 512 channels; slower on 28x28 layers over fewer channels)."""
    return p["h_out"] * p["w_out"] <= 28 * 28 and _weight_bytes(p) >= 256 * 1024


def _weight_bytes(p: dict) -> int:
    """The float32 weights of a convolution of one group."""
    return 4 * p["c_out"] * p["c_in"] * p["kh"] * p["kw"]


def _stage_starts(pool: dict | None, depthwise: dict | None) -> list[Config]:
    """A fused stage is tried by rows first, then whole (the two passes of the unfused graph in one call)."""
    if pool:
        return [{"pool_rows": 4, "parallel": "y"}, {"pool_rows": 0}]
    if depthwise:
        return [{"depthwise_at": "rows", "parallel": "y"}, {"depthwise_at": "root"}]
    return [{}]


def _depthwise_stage(
    inp, stage: dict, weight, bias, workload: Workload, block: int
) -> tuple[hl.Func, hl.Func, hl.RDom]:
    """The depthwise Conv plus its activation on the blocked input: activated output, accumulator, window."""
    c, x, y, k, n = hl.Var("c"), hl.Var("x"), hl.Var("y"), hl.Var("k"), hl.Var("n")
    _, _, h, w = workload.input_shape(0)
    (kh, kw), (sy, sx) = workload.input_shape(DEPTHWISE_WEIGHT)[2:], stage.get("strides", [1, 1])
    (dy, dx), (top, left) = stage.get("dilations", [1, 1]), stage.get("pads", [0, 0, 0, 0])[:2]
    padded = hl.BoundaryConditions.constant_exterior(inp, 0.0, [hl.Range(0, block), hl.Range(0, w), hl.Range(0, h)])
    r = hl.RDom([hl.Range(0, kw), hl.Range(0, kh)], "r_dw")
    acc = hl.Func("depthwise")
    acc[c, x, y, k, n] = bias[k * block + c]
    acc[c, x, y, k, n] += weight[c, r.x, r.y, k] * padded[c, x * sx + r.x * dx - left, y * sy + r.y * dy - top, k, n]
    activated = hl.Func("depthwise_act")
    activated[c, x, y, k, n] = activations.halide(stage, acc[c, x, y, k, n])
    return activated, acc, r


def _schedule_depthwise(
    activated: hl.Func, acc: hl.Func, r: hl.RDom, consumer: hl.Func, y: hl.Var, tile: int, rows: bool
) -> None:
    """A row of the depthwise output per row of the consumer (`rows`), or all of it first, parallel
    over blocks; either way `tile` pixels of one block accumulate in registers, the window's
    columns unrolled (as the standalone depthwise kernel's best schedules do)."""
    c, x, _, k, _ = activated.args()
    xo, xi = hl.Var("dw_xo"), hl.Var("dw_xi")
    activated.vectorize(c).split(x, xo, xi, tile, hl.TailStrategy.GuardWithIf).unroll(xi)
    if rows:
        activated.compute_at(consumer, y)
    else:
        activated.compute_root().parallel(k)
    acc_c, acc_x = acc.args()[:2]
    acc.compute_at(activated, xo).vectorize(acc_c).unroll(acc_x)
    acc.update().reorder(acc_c, acc_x, r.x, r.y).vectorize(acc_c).unroll(acc_x).unroll(r.x)


def _pool_stage(conv: hl.Func, pool: dict, p: dict, c, x, y, k, n) -> hl.Func:
    """A MaxPool or AveragePool (graph/passes/fuse_pool.py) over the convolution's blocked output.
    Coordinates are clamped into the image: every window holds a pixel of it, so a repeated edge
    pixel leaves a max unchanged (an average is only fused without padding or overhang)."""
    (kh, kw), (sy, sx), (top, left) = pool["kernel_shape"], pool["strides"], pool["pads"][:2]
    taps = [
        conv[
            c,
            hl.clamp(x * sx + i - left, 0, p["w_out"] - 1),
            hl.clamp(y * sy + j - top, 0, p["h_out"] - 1),
            k,
            n,
        ]
        for j in range(kh)
        for i in range(kw)
    ]
    pooled = hl.Func("pool")
    if pool["op"] == "MaxPool":
        pooled[c, x, y, k, n] = window_max(taps)
    else:
        pooled[c, x, y, k, n] = sum(taps[1:], taps[0]) * hl.f32(1.0 / (kh * kw))
    return pooled


def _starting_points(
    start: Config, starts: tuple, width: int, wides: list, stages: list[Config], valid
) -> tuple[Config, ...]:
    """`start` with each (tile_x, tile_k, parallel[, other knobs]) of `starts`, the tile shrunk to fit:
    tile_k to the largest valid count not above it (3 when 9 blocks refuse 4), tile_x to the width.
    Each is tried with every entry of `stages` (a fused stage by rows, then whole; see `_stage_starts`)."""
    configs: list[Config] = []
    for wide in wides:
        for tile_x, tile_k, parallel, *others in starts:
            for stage in stages:
                config = {
                    **start,
                    "tile_x": min(tile_x, width),
                    "parallel": parallel,
                    **stage,
                    **(others[0] if others else {}),
                }
                if wide is not None:
                    config["wide"] = wide
                fits = [k for k in range(tile_k, 0, -1) if valid({**config, "tile_k": k})]
                if fits and {**config, "tile_k": fits[0]} not in configs:
                    configs.append({**config, "tile_k": fits[0]})
    return tuple(configs)


def _spread_groups(weight: np.ndarray, p: dict, block: int, span: int) -> np.ndarray:
    """Grouped weights (O, I/groups, KH, KW) as (O, span, KH, KW): each output channel's weights at
    its group's place within the input channels its block reads, zeros elsewhere (when a block
    holds several groups, it multiplies the other groups' inputs by zero)."""
    group_in, group_out = p["c_in"] // p["groups"], p["c_out"] // p["groups"]
    spread = np.zeros((weight.shape[0], span, p["kh"], p["kw"]), np.float32)
    for o in range(p["c_out"]):
        first = (o // block * block // group_out) * group_in  # the block's first input channel
        offset = o // group_out * group_in - first
        spread[o, offset : offset + group_in] = weight[o]
    return spread


def _pad_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """`array` with its first axis zero-padded to `channels` (padding lanes compute zeros, never stored)."""
    if array.shape[0] == channels:
        return array
    return np.concatenate([array, np.zeros((channels - array.shape[0], *array.shape[1:]), array.dtype)])
