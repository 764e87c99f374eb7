"""ReduceMean, ReduceSum, ReduceMax and ReduceMin over the last axis, keeping it (the statistics of
a decomposed LayerNorm in transformer exports, a mean over channels in channel-last blocks).

The tensor is seen as rows of its last axis (`Definition.flatten = 2`), each row reduced once in
a vector of partial results; rows are split across threads. Max and min propagate NaN.
"""

from __future__ import annotations

import halide as hl
import numpy as np

from woodpecker.kernels.base import is_float32
from woodpecker.kernels.halide.common import (
    Definition,
    HalideImplementation,
    add,
    nan_max,
    nan_min,
    row_reduce,
    vector_widths,
)
from woodpecker.kernels.workload import Workload
from woodpecker.search.space import Config, ConfigSpace, Knob

REDUCTIONS = {  # op -> (combine, initial value)
    "ReduceSum": (add, 0.0),
    "ReduceMean": (add, 0.0),
    "ReduceMax": (nan_max, -np.inf),
    "ReduceMin": (nan_min, np.inf),
}


def reduced_axes(workload: Workload) -> list[int] | None:
    """The axes a Reduce node reduces (an attribute, or a constant input from opset 13/18 on); None
    when they are not known at plan time or the node reduces nothing (noop_with_empty_axes)."""
    node = workload.node
    if workload.has_input(1):
        if node.inputs[1] not in workload.constants:
            return None
        axes = [int(a) for a in np.ravel(workload.constants[node.inputs[1]])]
    else:
        axes = list(node.attrs.get("axes", []))
    if not axes:
        return None if node.attrs.get("noop_with_empty_axes") else list(range(len(workload.input_shape(0))))
    return axes


class HalideReduce(HalideImplementation):
    name = "halide.reduce"

    def matches(self, workload: Workload) -> bool:
        node = workload.node
        if node.op not in REDUCTIONS or workload.blocked or not is_float32(workload):
            return False
        if not workload.dynamic_inputs or node.inputs[0] in workload.constants or not node.attrs.get("keepdims", 1):
            return False
        rank = len(workload.input_shape(0))
        axes = reduced_axes(workload)
        return rank > 0 and axes is not None and [a % rank for a in axes] == [rank - 1]

    def space(self, workload: Workload) -> ConfigSpace:
        width = workload.input_shape(0)[-1]
        rows = int(np.prod(workload.input_shape(0)[:-1]))
        knobs = (Knob("vec", (1, *vector_widths())), Knob("rows_per_task", (1, 4, 16, 64)))

        def valid(cfg: Config) -> bool:
            return cfg["vec"] <= width and cfg["rows_per_task"] <= max(rows, 1)

        widest = max(vector_widths())
        starts = [{"vec": widest, "rows_per_task": r} for r in (16, 4)] + [{"vec": 1, "rows_per_task": 16}]
        return ConfigSpace(knobs, valid, defaults=tuple(c for c in starts if valid(c)))

    def define(self, workload: Workload, config: Config) -> Definition:
        width, lanes = workload.input_shape(0)[-1], config["vec"]
        c, row = hl.Var("c"), hl.Var("row")
        inp = hl.ImageParam(hl.Float(32), 2, "input")

        # The algorithm
        combine, initial = REDUCTIONS[workload.op]
        result, partial = row_reduce("reduced", lambda col: inp[col, row], width, lanes, combine, initial, row)
        out = hl.Func(workload.op)
        out[c, row] = result[row] / hl.f32(width) if workload.op == "ReduceMean" else result[row]

        # How to schedule it: rows split across threads, each row's partial results in a vector
        ro, ri = hl.Var("ro"), hl.Var("ri")
        out.bound(c, 0, 1).split(row, ro, ri, config["rows_per_task"], hl.TailStrategy.GuardWithIf).parallel(ro)
        result.compute_at(out, ri)
        partial.compute_at(out, ri).vectorize(partial.args()[0])
        partial.update().vectorize(partial.args()[0])
        return Definition(out, [inp], flatten=2)
