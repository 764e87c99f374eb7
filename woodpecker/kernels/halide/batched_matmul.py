"""MatMul of two run-time tensors over shared leading axes: attention's scores = q @ k^T and
scores @ v, one matrix product per (batch, head).

Seen as (batch, M, K) @ (batch, K, N) (`Definition.flatten = 3`); the register tile is `tile_m`
rows times `tile_n` vectors of output columns, accumulated over K with one broadcast of A and
one vector load of B per multiply-add.
"""

from __future__ import annotations

import halide as hl
import numpy as np

from woodpecker.kernels.base import is_float32
from woodpecker.kernels.halide.common import (
    Definition,
    HalideImplementation,
    max_accumulators,
    vector_widths,
)
from woodpecker.kernels.workload import Workload
from woodpecker.search.space import Config, ConfigSpace, Knob


class HalideBatchedMatmul(HalideImplementation):
    name = "halide.batched_matmul"

    def matches(self, workload: Workload) -> bool:
        node = workload.node
        if node.op != "MatMul" or len(node.inputs) != 2 or workload.blocked or not is_float32(workload):
            return False
        if any(n in workload.constants for n in node.inputs) or node.inputs[0] == node.inputs[1]:
            return False
        a, b = workload.input_shape(0), workload.input_shape(1)
        return len(a) == len(b) >= 3 and a[:-2] == b[:-2] and a[-1] == b[-2]

    def space(self, workload: Workload) -> ConfigSpace:
        m, n = workload.output_shape[-2:]
        batch = int(np.prod(workload.output_shape[:-2]))
        knobs = (
            Knob("vec", vector_widths()),
            Knob("tile_m", (1, 2, 4, 6, 8)),
            Knob("tile_n", (1, 2)),
            Knob("parallel", ("batch", "rows")),
        )

        def valid(cfg: Config) -> bool:
            return (
                cfg["vec"] * cfg["tile_n"] <= n
                and cfg["tile_m"] <= m
                and cfg["tile_m"] * cfg["tile_n"] <= max_accumulators()
                and (cfg["parallel"] == "rows" or batch > 1)
            )

        return ConfigSpace(knobs, valid)

    def define(self, workload: Workload, config: Config) -> Definition:
        k = workload.input_shape(0)[-1]
        col, row, mat = hl.Var("col"), hl.Var("row"), hl.Var("mat")
        a = hl.ImageParam(hl.Float(32), 3, "a")  # (K, M, batch) as Halide sees (batch, M, K)
        b = hl.ImageParam(hl.Float(32), 3, "b")  # (N, K, batch)

        # The algorithm
        r = hl.RDom([hl.Range(0, k)], "r")
        acc = hl.Func("acc")
        acc[col, row, mat] = hl.f32(0.0)
        acc[col, row, mat] += a[r.x, row, mat] * b[col, r.x, mat]
        out = hl.Func("matmul")
        out[col, row, mat] = acc[col, row, mat]

        # How to schedule it: a tile_m x (tile_n vectors) register tile
        vec, width = config["vec"], config["vec"] * config["tile_n"]
        co, ci, ro, ri = hl.Var("co"), hl.Var("ci"), hl.Var("ro"), hl.Var("ri")
        out.split(col, co, ci, width).split(row, ro, ri, config["tile_m"]).reorder(ci, ri, co, ro, mat)
        out.vectorize(ci, vec).unroll(ri)
        acc.compute_at(out, co).vectorize(col, vec).unroll(col).unroll(row)
        acc.update().reorder(col, row, r.x, mat).vectorize(col, vec).unroll(col).unroll(row)
        out.parallel(mat if config["parallel"] == "batch" else ro)
        return Definition(out, [a, b], [], flatten=3)
