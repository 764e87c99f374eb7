"""Softmax and LayerNormalization over the last axis (the classifier's softmax, ConvNeXt's and the
vision transformers' channel-last LayerNorm, attention scores).

The tensor is seen as rows of its last axis (`Definition.flatten = 2`); each row's statistics
(max and sum, or mean and variance) are reduced once, in a vector of partial results, then the
row is written vectorized.
Rows are independent, so they are split across threads.
"""

from __future__ import annotations

import halide as hl
import numpy as np

from woodpecker.kernels.base import is_float32
from woodpecker.kernels.halide.common import Definition, HalideImplementation, add, row_reduce, vector_widths
from woodpecker.kernels.workload import Workload
from woodpecker.ops import activations
from woodpecker.search.space import Config, ConfigSpace, Knob


class HalideNormalization(HalideImplementation):
    name = "halide.normalization"

    def matches(self, workload: Workload) -> bool:
        node = workload.node
        if node.op not in ("Softmax", "LayerNormalization") or workload.blocked or not is_float32(workload):
            return False
        rank = len(workload.input_shape(0))
        if rank == 0 or node.attrs.get("axis", -1) % rank != rank - 1 or len([o for o in node.outputs if o]) != 1:
            return False
        if node.op == "Softmax":
            return workload.opset >= 13 or rank <= 2  # before 13, Softmax flattened from `axis` on
        return all(n in workload.constants for n in node.inputs[1:] if n)

    def space(self, workload: Workload) -> ConfigSpace:
        width = workload.input_shape(0)[-1]
        rows = int(np.prod(workload.input_shape(0)[:-1]))
        knobs = (Knob("vec", (1, *vector_widths())), Knob("rows_per_task", (1, 4, 16)))

        def valid(cfg: Config) -> bool:
            return cfg["vec"] <= width and cfg["rows_per_task"] <= max(rows, 1)

        # Measured on ConvNeXt's LayerNorms: 8 or 16 lanes, 4 or 16 rows per task, 2.5-3x ONNX Runtime.
        widest = max(vector_widths())
        starts = [{"vec": v, "rows_per_task": r} for v, r in ((widest // 2, 16), (widest, 4), (widest, 16))]
        return ConfigSpace(knobs, valid, defaults=tuple(c for c in starts if valid(c)))

    def define(self, workload: Workload, config: Config) -> Definition:
        node = workload.node
        width = workload.input_shape(0)[-1]
        lanes = config["vec"]
        c, row = hl.Var("c"), hl.Var("row")
        inp = hl.ImageParam(hl.Float(32), 2, "input")

        # The algorithm
        out = hl.Func(node.op)
        constants: list[np.ndarray] = []
        params = [inp]
        if node.op == "Softmax":
            peak = row_reduce("peak", lambda col: inp[col, row], width, lanes, hl.max, -np.inf, row)
            exp = hl.Func("exp")
            shifted = inp[c, row] - peak[0][row]  # NaN where the row holds NaN or +Inf: the row is then NaN
            exp[c, row] = activations.halide_nonfinite(shifted, hl.exp(shifted), np.inf, 0.0)
            total = row_reduce("total", lambda col: exp[col, row], width, lanes, add, 0.0, row)
            out[c, row] = exp[c, row] / total[0][row]
            reductions = [peak, total]
        else:
            total = row_reduce("total", lambda col: inp[col, row], width, lanes, add, 0.0, row)
            mean = hl.Func("mean")
            mean[row] = total[0][row] / hl.f32(width)
            squares = row_reduce("squares", lambda col: (inp[col, row] - mean[row]) ** 2, width, lanes, add, 0.0, row)
            scale, bias = hl.ImageParam(hl.Float(32), 1, "scale"), hl.ImageParam(hl.Float(32), 1, "bias")
            inv = 1.0 / hl.sqrt(squares[0][row] / hl.f32(width) + hl.f32(node.attrs.get("epsilon", 1e-5)))
            out[c, row] = (inp[c, row] - mean[row]) * inv * scale[c] + bias[c]
            params += [scale, bias]
            constants = [_per_column(workload, 1, width, 1.0), _per_column(workload, 2, width, 0.0)]
            reductions = [total, squares]

        # How to schedule it: per row, the reductions in vectors of partial results, then the row
        guard = hl.TailStrategy.GuardWithIf
        ro, ri = hl.Var("ro"), hl.Var("ri")
        out.split(row, ro, ri, config["rows_per_task"], guard).parallel(ro)
        if lanes > 1:
            out.vectorize(c, lanes, guard)
        for result, partial in reductions:
            result.compute_at(out, ri)
            partial.compute_at(out, ri).vectorize(partial.args()[0])
            partial.update().vectorize(partial.args()[0])  # there is one: the space keeps vec <= width
        if node.op == "LayerNormalization":
            mean.compute_at(out, ri)
        if node.op == "Softmax":
            exp.compute_at(out, ri)
            if lanes > 1:
                exp.vectorize(c, lanes, guard)
        return Definition(out, params, constants, flatten=2)


def _per_column(workload: Workload, index: int, width: int, default: float) -> np.ndarray:
    """LayerNormalization's scale or bias broadcast to one value per column."""
    node = workload.node
    if not workload.has_input(index):
        return np.full(width, default, np.float32)
    return np.array(np.broadcast_to(workload.constants[node.inputs[index]], (width,)), np.float32)
