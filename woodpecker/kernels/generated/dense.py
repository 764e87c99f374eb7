"""Dense layers: Gemm (A not transposed, constant B) and MatMul by a constant 2-D right side (any
leading axes of the left side are rows, as in nn.Linear on a channel-last tensor).

Weights are packed once as (K, N) so the output features are contiguous and vectorized;
the fused epilogue (bias, residual add, activation) is applied on the accumulator.
"""

from __future__ import annotations

import halide as hl
import numpy as np

from woodpecker.kernels.base import is_float32
from woodpecker.kernels.generated.common import (
    MAX_ACCUMULATORS,
    Definition,
    GeneratedImplementation,
    apply_activation,
    vector_widths,
)
from woodpecker.kernels.workload import Workload
from woodpecker.search.space import Config, ConfigSpace, Knob


class HalideDense(GeneratedImplementation):
    name = "halide.dense"

    def matches(self, workload: Workload) -> bool:
        node = workload.node
        if node.op not in ("Gemm", "MatMul") or not is_float32(workload) or node.inputs[1] not in workload.constants:
            return False
        if workload.blocked:
            return False
        if len(workload.input_shape(1)) != 2 or len(workload.input_shape(0)) != 2 and node.op != "MatMul":
            return False  # MatMul: any leading axes are rows
        if node.op == "Gemm" and node.attrs.get("transA", 0):
            return False
        bias_ok = not workload.has_input(2) or (
            node.inputs[2] in workload.constants and workload.constants[node.inputs[2]].ndim <= 1
        )
        return bias_ok

    def space(self, workload: Workload) -> ConfigSpace:
        n_out = workload.output_shape[-1]
        rows = int(np.prod(workload.input_shape(0)[:-1]))

        def valid(cfg: Config) -> bool:
            return (
                cfg["vec"] * cfg["tile_n"] <= max(n_out, cfg["vec"])
                and cfg["tile_n"] * cfg["tile_m"] <= MAX_ACCUMULATORS
                and cfg["tile_m"] <= rows
            )

        # Many rows (a linear layer over every pixel, ConvNeXt's MLP): a GEMM register tile of
        # 6 rows x 2 vectors, threads over row tiles. Few rows (a classifier): threads over columns.
        # Weights larger than the input (more columns than rows): first each column panel of weights
        # read once, all row tiles inside it.
        many = {"vec": max(vector_widths()), "tile_n": 2, "tile_m": 6, "unroll_k": 1, "parallel_rows": True}
        many_weights_first = {**many, "parallel_rows": False}
        few = {"vec": max(vector_widths()), "tile_n": 2, "tile_m": 1, "unroll_k": 1, "parallel_rows": False}
        starts = (many_weights_first, many, few) if n_out > rows else (many, many_weights_first, few)
        return ConfigSpace(
            (
                Knob("vec", vector_widths()),
                Knob("tile_n", (1, 2, 4, 8)),
                # Rows per register tile: each weight vector loaded once serves tile_m rows.
                Knob("tile_m", (1, 2, 4, 6, 8)),
                Knob("unroll_k", (1, 2, 4)),
                # True: threads over row tiles, each streaming all the weights; False: threads over
                # column panels, each reading its panel of weights once for all rows.
                Knob("parallel_rows", (False, True)),
            ),
            valid,
            defaults=tuple(c for c in starts if valid(c) and (rows >= 24 or c is few)),
        )

    def define(self, workload: Workload, config: Config) -> Definition:
        node = workload.node
        *leading, k = workload.input_shape(0)
        rows = int(np.prod(leading))
        n_out = workload.output_shape[-1]
        weight = workload.constants[node.inputs[1]].astype(np.float32)
        if node.op == "Gemm" and node.attrs.get("transB", 0):
            weight = weight.T
        alpha = node.attrs.get("alpha", 1.0) if node.op == "Gemm" else 1.0
        beta = node.attrs.get("beta", 1.0) if node.op == "Gemm" else 1.0
        weight = np.ascontiguousarray(weight * alpha, np.float32)  # (K, N): Halide sees (n, k)
        bias = np.zeros(n_out, np.float32)
        if workload.has_input(2):
            bias += np.broadcast_to(workload.constants[node.inputs[2]].astype(np.float32) * beta, (n_out,))
        vec = config["vec"]
        if n_out < vec:  # too narrow to vectorize: pad the packed weights instead of over-reading
            vec = 1
        has_residual = bool(node.attrs.get("residual"))

        j, m = hl.Var("j"), hl.Var("m")
        a = hl.ImageParam(hl.Float(32), 2, "a")
        residual = hl.ImageParam(hl.Float(32), 2, "residual")
        w_param = hl.ImageParam(hl.Float(32), 2, "weight")
        b_param = hl.ImageParam(hl.Float(32), 1, "bias")

        # The algorithm
        r = hl.RDom([hl.Range(0, k)], "r")
        acc = hl.Func("acc")
        acc[j, m] = b_param[j]
        acc[j, m] += a[r.x, m] * w_param[j, r.x]
        out = hl.Func("dense")
        total = acc[j, m] + residual[j, m] if has_residual else acc[j, m]
        out[j, m] = apply_activation(workload, total)

        # How to schedule it
        jo, ji, mo, mi = hl.Var("jo"), hl.Var("ji"), hl.Var("mo"), hl.Var("mi")
        tile = vec * config["tile_n"] if n_out >= vec * config["tile_n"] else vec
        tile_m = config.get("tile_m", 1)  # records from before the knob existed meant 1
        out.split(j, jo, ji, tile).split(m, mo, mi, tile_m).unroll(mi)
        if config["parallel_rows"]:
            out.reorder(ji, mi, jo, mo)
        else:
            out.reorder(ji, mi, mo, jo)
        acc.compute_at(out, jo if config["parallel_rows"] else mo).unroll(m)  # one register tile
        acc.update().reorder(j, m, r.x).unroll(m)
        if vec > 1:
            out.vectorize(ji, vec)
            acc.vectorize(j, vec).update().vectorize(j, vec).unroll(j)
        if config["unroll_k"] > 1 and k % config["unroll_k"] == 0:
            ro, ri = hl.RVar("ro"), hl.RVar("ri")
            acc.update().split(r.x, ro, ri, config["unroll_k"]).unroll(ri)
        out.parallel(mo if config["parallel_rows"] and rows > 1 else jo)

        params = [a] + ([residual] if has_residual else []) + [w_param, b_param]
        return Definition(out, params, [weight, bias], flatten=2)
