"""Transpose, Slice and Pad on plain tensors: copies with no arithmetic (ShuffleNet's channel
shuffle and split, the NCHW <-> NHWC transposes around ConvNeXt's and Swin's channel-last blocks,
Swin's window padding).

Both write the output in its own order, the innermost output axis vectorized: a Transpose that
keeps the innermost axis copies whole rows; one that moves it gathers, in tiles of `tile` x vec
so both the reads and the writes stay within a few cache lines. Between blocked NCHW[b]c and
channel-last NHWC, a Transpose moves whole vectors of b channels, so the layout pass lets
ConvNeXt's transposes read and write blocked values instead of converting them.
"""

from __future__ import annotations

import halide as hl

from woodpecker.graph.passes.canonicalize import pad_value, pad_widths, slice_starts_steps
from woodpecker.graph.passes.layout import TO_CHANNEL_FIRST, TO_CHANNEL_LAST, slice_keeps_blocks
from woodpecker.kernels.base import is_float32
from woodpecker.kernels.halide.common import Definition, HalideImplementation, vector_widths
from woodpecker.kernels.workload import Workload
from woodpecker.search.space import Config, ConfigSpace, Knob

MAX_RANK = 6
PAD_MODES = ("constant", "edge", "reflect")


class HalideDataMovement(HalideImplementation):
    name = "halide.data_movement"

    def matches(self, workload: Workload) -> bool:
        node = workload.node
        if node.op not in ("Transpose", "Slice", "Pad") or not is_float32(workload):
            return False
        if workload.blocked and node.op == "Slice":
            return workload.blocks == {workload.block(node.inputs[0])} and slice_keeps_blocks(
                workload.as_graph(), node, workload.block(node.inputs[0])
            )
        if workload.blocked:
            return _channels_move_whole(workload)
        if not 1 <= len(workload.output_shape) <= MAX_RANK or min(workload.output_shape) == 0:
            return False
        if node.op == "Slice":  # opset 10+: bounds are (constant) inputs
            return slice_starts_steps(workload.as_graph(), node) is not None
        if node.op == "Pad":
            value_ok = pad_value(workload.as_graph(), node) is not None
            widths = pad_widths(workload.as_graph(), node)
            return (
                value_ok and widths is not None and min(widths) >= 0 and node.attrs.get("mode", "constant") in PAD_MODES
            )
        return True

    def space(self, workload: Workload) -> ConfigSpace:
        if workload.blocked and workload.op == "Transpose":  # unrolled along W: the NCHW side's last axis
            width = (
                workload.input_shape(0)[-1] if workload.block(workload.node.inputs[0]) else workload.output_shape[-1]
            )
            return ConfigSpace((Knob("unroll", (1, 2, 4)),), lambda cfg: cfg["unroll"] <= width)
        inner = _stored_output_shape(workload)[-1]
        knobs = (Knob("vec", (1, *vector_widths())), Knob("tile", (1, 4, 16)))
        moves_inner = self._moves_innermost(workload)
        return ConfigSpace(knobs, lambda cfg: cfg["vec"] <= max(inner, 1) and (cfg["tile"] == 1 or moves_inner))

    @staticmethod
    def _moves_innermost(workload: Workload) -> bool:
        return workload.op == "Transpose" and _perm(workload)[-1] != len(workload.output_shape) - 1

    def define(self, workload: Workload, config: Config) -> Definition:
        if workload.blocked and workload.op == "Transpose":
            return _blocked_transpose(workload, config)
        shape = _stored_output_shape(workload)  # a blocked Slice copies whole blocks: (N, C/b, H, W, b)
        rank = len(shape)
        # Halide sees NumPy's axes reversed: Halide dimension d is NumPy axis rank - 1 - d.
        out_vars = [hl.Var(f"v{d}") for d in range(rank)]
        inp = hl.ImageParam(hl.Float(32), rank, "input")

        # The algorithm: which input coordinate each output element reads
        coords: list = [None] * rank
        if workload.op == "Transpose":
            for axis, source in enumerate(_perm(workload)):  # output axis `axis` is input axis `source`
                coords[rank - 1 - source] = out_vars[rank - 1 - axis]
        elif workload.op == "Slice":
            starts, steps = _stored_slice(workload)
            for axis in range(rank):
                coords[rank - 1 - axis] = starts[axis] + out_vars[rank - 1 - axis] * steps[axis]
        else:
            begins = pad_widths(workload.as_graph(), workload.node)[:rank]
            for axis in range(rank):
                coords[rank - 1 - axis] = out_vars[rank - 1 - axis] - begins[axis]
        out = hl.Func(workload.op)
        out[out_vars] = (_padded(workload, inp) if workload.op == "Pad" else inp)[coords]

        # How to schedule it (the innermost output axis is Halide dimension 0)
        guard = hl.TailStrategy.GuardWithIf
        loops = list(out_vars)  # innermost first
        if config["tile"] > 1:  # the output axis contiguous in the input: a strip of it inside the row
            across, ao, ai = out_vars[rank - 1 - _perm(workload).index(rank - 1)], hl.Var("ao"), hl.Var("ai")
            out.split(across, ao, ai, config["tile"], guard)
            loops = [loops[0], ai, *[ao if v is across else v for v in loops[1:]]]
            out.reorder(*loops)
        if config["vec"] > 1:
            lanes = hl.Var("lanes")
            out.split(out_vars[0], out_vars[0], lanes, config["vec"], guard).vectorize(lanes)
        extents = {id(v): shape[rank - 1 - d] for d, v in enumerate(out_vars)}
        outer = next((v for v in reversed(loops[1:]) if extents.get(id(v), 2) > 1), None)
        if outer is not None:
            out.parallel(outer)
        return Definition(out, [inp], [])


def _perm(workload: Workload) -> list[int]:
    """Transpose's permutation (ONNX's default reverses the axes)."""
    return list(workload.node.attrs.get("perm", range(len(workload.output_shape))[::-1]))


def _channels_move_whole(workload: Workload) -> bool:
    """NCHW[b]c -> NHWC, or NHWC -> NCHW[b]c: the transposes ConvNeXt wraps its channel-last
    blocks in, which on blocked values move whole vectors of channels."""
    node = workload.node
    in_block, out_block = workload.block(node.inputs[0]), workload.block(node.outputs[0])
    perm = _perm(workload)
    return (perm == TO_CHANNEL_LAST and in_block and not out_block) or (
        perm == TO_CHANNEL_FIRST and out_block and not in_block
    )


def _blocked_transpose(workload: Workload, config: Config) -> Definition:
    node = workload.node
    in_block, out_block = workload.block(node.inputs[0]), workload.block(node.outputs[0])
    c, ci, x, y, k, n = (hl.Var(v) for v in ("c", "ci", "x", "y", "k", "n"))
    xo, xi = hl.Var("xo"), hl.Var("xi")
    out = hl.Func("Transpose")
    if in_block:  # (N, C/b, H, W, b) -> (N, H, W, C): Halide (ci, x, y, k, n) -> (c, x, y, n)
        inp = hl.ImageParam(hl.Float(32), 5, "input")
        out[c, x, y, n] = inp[c % in_block, x, y, c // in_block, n]
        co = hl.Var("co")
        out.split(c, co, ci, in_block).vectorize(ci)
    else:  # (N, H, W, C) -> (N, C/b, H, W, b)
        inp = hl.ImageParam(hl.Float(32), 4, "input")
        out[ci, x, y, k, n] = inp[k * out_block + ci, x, y, n]
        out.bound(ci, 0, out_block).vectorize(ci).reorder(ci, k, x, y, n)
    if config["unroll"] > 1:
        out.split(x, xo, xi, config["unroll"], hl.TailStrategy.GuardWithIf).unroll(xi)
    out.parallel(y)
    return Definition(out, [inp], [])


def _padded(workload: Workload, inp: hl.ImageParam) -> hl.Func:
    """The input extended beyond its bounds as Pad's mode says."""
    node = workload.node
    bounds = [hl.Range(0, extent) for extent in reversed(workload.input_shape(0))]
    mode = node.attrs.get("mode", "constant")
    if mode == "edge":
        return hl.BoundaryConditions.repeat_edge(inp, bounds)
    if mode == "reflect":
        return hl.BoundaryConditions.mirror_interior(inp, bounds)
    value = pad_value(workload.as_graph(), node)
    return hl.BoundaryConditions.constant_exterior(inp, hl.f32(value), bounds)


def _stored_output_shape(workload: Workload) -> tuple[int, ...]:
    return workload.values[workload.node.outputs[0]].stored_shape


def _stored_slice(workload: Workload) -> tuple[list[int], list[int]]:
    """Slice's starts and steps per axis of the stored arrays: on blocked values, whole blocks of
    channels (slice_keeps_blocks holds) and every lane of each."""
    bounds = slice_starts_steps(workload.as_graph(), workload.node)
    assert bounds is not None  # matches() checked it
    starts, steps = bounds
    block = workload.block(workload.node.inputs[0])
    if not block:
        return starts, steps
    return [starts[0], starts[1] // block, *starts[2:], 0], [*steps, 1]
