"""Concat over channels, Slice, and Gather of channels of 4-D values stored in different channel layouts.

Where channel counts no block divides meet blocked ones (GhostNet-050's 18 + 18 channels
concatenated into a blocked 36, ReXNet's shortcut added to the first 84 of 89 plain channels),
converting each part first and copying it again costs two passes and a Relayout node per part.
Here the copy reads each part in its own layout (plain NCHW or NCHW[b]c of any b) and writes
the output in its own: one pass, no conversion (graph/passes/layout.py lets these nodes read
values as they come).
"""

from __future__ import annotations

import halide as hl
import numpy as np

from woodpecker.graph.passes.canonicalize import slice_starts_steps
from woodpecker.graph.passes.layout import copies_channels
from woodpecker.kernels.base import is_float32
from woodpecker.kernels.halide.common import Definition, HalideImplementation
from woodpecker.kernels.workload import Workload
from woodpecker.search.space import Config, ConfigSpace, Knob


class HalideChannelCopy(HalideImplementation):
    name = "halide.channel_copy"

    def matches(self, workload: Workload) -> bool:  # the nodes the layout pass lets copy between layouts
        return workload.blocked and is_float32(workload) and copies_channels(workload.as_graph(), workload.node)

    def space(self, workload: Workload) -> ConfigSpace:
        if not workload.block(workload.node.outputs[0]):
            return ConfigSpace()
        # Lanes gathered from the parts, or from a staged row (GhostNet-050's plain halves: 1.7-2x).
        return ConfigSpace((Knob("rows", (False, True)),))

    def define(self, workload: Workload, config: Config) -> Definition:
        node = workload.node
        x, y, c, n = hl.Var("x"), hl.Var("y"), hl.Var("c"), hl.Var("n")
        tables: list[np.ndarray] = []
        if node.op == "Gather":  # the channel each output channel reads, from a table
            param, block = _param(workload, node.inputs[0], "input")
            channels = workload.values[node.inputs[0]].shape[1]
            indices = hl.ImageParam(hl.Int(32), 1, "indices")
            params, tables = [(param, block), (indices, 0)], [_wrapped(workload.constants[node.inputs[1]], channels)]
            logical = _read(param, block, x, y, hl.clamp(indices[c], 0, channels - 1), n)
        elif node.op == "Concat":
            params = [_param(workload, name, f"part{i}") for i, name in enumerate(node.inputs)]
            pieces, start = [], 0
            for (param, block), name in zip(params, node.inputs):
                channels = workload.values[name].shape[1]
                value = _read(param, block, x, y, hl.clamp(c - start, 0, channels - 1), n)
                pieces.append((c < start + channels, value))
                start += channels
            conditions = [e for condition, value in pieces[:-1] for e in (condition, value)]
            logical = hl.select(*conditions, pieces[-1][1]) if len(pieces) > 1 else pieces[0][1]
        else:
            starts, steps = slice_starts_steps(workload.as_graph(), node)
            param, block = _param(workload, node.inputs[0], "input")
            params = [(param, block)]
            n0, c0, y0, x0 = starts
            logical = _read(param, block, x0 + x * steps[3], y0 + y * steps[2], c0 + c * steps[1], n0 + n * steps[0])

        # The output in its own layout, the innermost stored axis vectorized; rows in parallel.
        logical_func = hl.Func("logical")
        logical_func[x, y, c, n] = logical
        out = hl.Func(node.op)
        out_block = workload.block(node.outputs[0])
        if out_block:
            lane, k = hl.Var("lane"), hl.Var("k")
            out[lane, x, y, k, n] = logical_func[x, y, k * out_block + lane, n]
            out.bound(lane, 0, out_block).reorder(lane, x, k, y, n).parallel(y)
            out.vectorize(lane)
            if config.get("rows"):  # a row of every channel read along x (plain parts: dense loads), then lanes
                logical_func.compute_at(out, y).vectorize(x, 8, hl.TailStrategy.GuardWithIf)
        else:
            out[x, y, c, n] = logical_func[x, y, c, n]
            out.vectorize(x, 8, hl.TailStrategy.GuardWithIf).reorder(x, c, y, n).parallel(y)
        return Definition(out, [param for param, _ in params], tables)


def _param(workload: Workload, name: str, label: str) -> tuple[hl.ImageParam, int]:
    block = workload.block(name)
    return hl.ImageParam(hl.Float(32), 5 if block else 4, label), block


def _wrapped(indices: np.ndarray, size: int) -> np.ndarray:
    """Gather's indices with negative ones counted from the end."""
    return np.where(indices < 0, indices + size, indices).astype(np.int32)


def _read(param: hl.ImageParam, block: int, x, y, c, n) -> hl.Expr:
    """The value at logical (n, c, y, x) of a stored array, plain or NCHW[block]c."""
    return param[c % block, x, y, c / block, n] if block else param[x, y, c, n]
