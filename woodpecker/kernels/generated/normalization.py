"""Softmax and LayerNormalization over the last axis (the classifier's softmax, ConvNeXt's and the
vision transformers' channel-last LayerNorm, attention scores).

The tensor is seen as rows of its last axis (`Definition.flatten = 2`); each row's statistics
(max and sum, or mean and variance) are reduced once, then the row is written vectorized.
Rows are independent, so they are split across threads.
"""

from __future__ import annotations

import halide as hl
import numpy as np

from woodpecker.kernels.base import is_float32
from woodpecker.kernels.generated.common import Definition, GeneratedImplementation, vector_widths
from woodpecker.kernels.workload import Workload
from woodpecker.search.space import Config, ConfigSpace, Knob


class HalideNormalization(GeneratedImplementation):
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
        return ConfigSpace(knobs, lambda cfg: cfg["vec"] <= width and cfg["rows_per_task"] <= max(rows, 1))

    def define(self, workload: Workload, config: Config) -> Definition:
        node = workload.node
        width = workload.input_shape(0)[-1]
        c, row = hl.Var("c"), hl.Var("row")
        inp = hl.ImageParam(hl.Float(32), 2, "input")
        r = hl.RDom([hl.Range(0, width)], "r")

        # The algorithm
        out = hl.Func(node.op)
        stats: list[hl.Func] = []
        constants: list[np.ndarray] = []
        params = [inp]
        if node.op == "Softmax":
            peak, exp, total = hl.Func("peak"), hl.Func("exp"), hl.Func("total")
            peak[row] = hl.maximum(inp[r.x, row])
            exp[c, row] = hl.exp(inp[c, row] - peak[row])
            total[row] = hl.sum(exp[r.x, row])
            out[c, row] = exp[c, row] / total[row]
            stats = [peak, total]
        else:
            mean, variance = hl.Func("mean"), hl.Func("variance")
            mean[row] = hl.sum(inp[r.x, row]) / hl.f32(width)
            centered = inp[r.x, row] - mean[row]
            variance[row] = hl.sum(centered * centered) / hl.f32(width)
            scale, bias = hl.ImageParam(hl.Float(32), 1, "scale"), hl.ImageParam(hl.Float(32), 1, "bias")
            inv = 1.0 / hl.sqrt(variance[row] + hl.f32(node.attrs.get("epsilon", 1e-5)))
            out[c, row] = (inp[c, row] - mean[row]) * inv * scale[c] + bias[c]
            params += [scale, bias]
            constants = [_per_column(workload, 1, width, 1.0), _per_column(workload, 2, width, 0.0)]
            stats = [mean, variance]

        # How to schedule it
        guard = hl.TailStrategy.GuardWithIf
        ro, ri = hl.Var("ro"), hl.Var("ri")
        out.split(row, ro, ri, config["rows_per_task"], guard).parallel(ro)
        if config["vec"] > 1:
            out.vectorize(c, config["vec"], guard)
        for func in stats:
            func.compute_at(out, ri)
        if node.op == "Softmax":
            exp.compute_at(out, ri)
            if config["vec"] > 1:
                exp.vectorize(c, config["vec"], guard)
        return Definition(out, params, constants, flatten=2)


def _per_column(workload: Workload, index: int, width: int, default: float) -> np.ndarray:
    """LayerNormalization's scale or bias broadcast to one value per column."""
    node = workload.node
    if not workload.has_input(index):
        return np.full(width, default, np.float32)
    return np.array(np.broadcast_to(workload.constants[node.inputs[index]], (width,)), np.float32)
