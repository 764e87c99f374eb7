"""GroupNorm (graph/passes/fuse_group_norm.py): each group of channels of each image normalized by
its mean and variance, then scaled and shifted per channel; on plain or blocked values.

A group's values are one contiguous range in either layout (whole channel blocks make a group
when blocked), so the statistics are reductions over that range: a vector of partial sums, then
across the lanes, once for the mean and once for the squared deviations (two passes, as ONNX
Runtime, so large means do not cost precision). The normalization is then one multiply-add per
value with a factor and offset per channel, vectorized along the innermost stored axis.
"""

from __future__ import annotations

import math

import halide as hl
import numpy as np

from woodpecker.kernels.base import is_float32
from woodpecker.kernels.halide.common import Definition, HalideImplementation, add, row_reduce, vector_widths
from woodpecker.kernels.workload import Workload
from woodpecker.ops.fused import GROUP_NORM
from woodpecker.search.space import Config, ConfigSpace, Knob


class HalideGroupNorm(HalideImplementation):
    name = "halide.group_norm"

    def matches(self, workload: Workload) -> bool:
        node = workload.node
        return node.op == GROUP_NORM and is_float32(workload) and all(n in workload.constants for n in node.inputs[1:])

    def space(self, workload: Workload) -> ConfigSpace:
        knobs = (Knob("vec", vector_widths()), Knob("chunk", (1 << 12, 1 << 14, 1 << 16)))  # values per task
        widest = max(vector_widths())
        return ConfigSpace(knobs, defaults=({"vec": widest, "chunk": 1 << 14}, {"vec": widest, "chunk": 1 << 12}))

    def define(self, workload: Workload, config: Config) -> Definition:
        node = workload.node
        shape = workload.input_shape(0)
        channels, groups = shape[1], node.attrs["groups"]
        block = workload.block(node.inputs[0])
        inner = int(np.prod(shape[2:]))  # values per channel
        size = channels // groups * inner  # values per group
        x = hl.ImageParam(hl.Float(32), 1, "x")  # flat: a group is the range [row * size, (row + 1) * size)
        scale, bias = hl.ImageParam(hl.Float(32), 1, "scale"), hl.ImageParam(hl.Float(32), 1, "bias")
        i, row = hl.Var("i"), hl.Var("row")

        # The algorithm: statistics per (image, group) row, then x * factor + offset per channel
        lanes = math.gcd(config["vec"], size)
        total = row_reduce("total", lambda c: x[row * size + c], size, lanes, add, 0.0, row)
        mean = hl.Func("mean")
        mean[row] = total[0][row] / hl.f32(size)
        squares = row_reduce("squares", lambda c: (x[row * size + c] - mean[row]) ** 2, size, lanes, add, 0.0, row)
        inv = hl.Func("inv_std")
        inv[row] = 1.0 / hl.sqrt(squares[0][row] / hl.f32(size) + hl.f32(node.attrs["epsilon"]))
        channel = _channel_of(i, channels, inner, block)
        group_row = (i // (channels * inner)) * groups + channel // (channels // groups)
        factor = inv[group_row] * scale[channel]
        out = hl.Func("group_norm")
        out[i] = (x[i] - mean[group_row]) * factor + bias[channel]

        # How to schedule it: statistics first (rows across threads), then the values in vectors
        vec = config["vec"]
        for result, partial in (total, squares):
            result.compute_root()
            partial.compute_at(result, row).vectorize(partial.args()[0])
            partial.update().vectorize(partial.args()[0])
        mean.compute_root()
        inv.compute_root()
        total[0].parallel(row)
        squares[0].parallel(row)
        io, ii = hl.Var("io"), hl.Var("ii")
        out.split(i, io, ii, config["chunk"], hl.TailStrategy.GuardWithIf).parallel(io)
        out.vectorize(ii, vec, hl.TailStrategy.GuardWithIf)
        return Definition(out, [x, scale, bias], [_vector(workload, 1), _vector(workload, 2)], flatten=1)


def _channel_of(i: hl.Expr, channels: int, inner: int, block: int) -> hl.Expr:
    """The channel of flat index `i`: NC... plain, or N(C/b)HWb blocked."""
    if not block:
        return (i // inner) % channels
    return ((i // (inner * block)) % (channels // block)) * block + i % block


def _vector(workload: Workload, index: int) -> np.ndarray:
    return np.ascontiguousarray(workload.constants[workload.node.inputs[index]], np.float32)
