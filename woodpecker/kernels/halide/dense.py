"""Dense layers: Gemm (A not transposed, constant B) and MatMul by a constant 2-D right side (any
leading axes of the left side are rows, as in nn.Linear on a channel-last tensor).

Weights are packed once as (K, N) so the output features are contiguous and vectorized, or (knob
`panels`) as column panels: each register tile's columns for every k in one contiguous block, so a
tile streams its weights front to back (read row by row from (K, N), every k is another page once
N is large: the prefetchers and the TLB lose the stream, as in a classifier or BERT's 3072-wide
feed-forward output). The fused epilogue (bias, residual add, activation) is applied on the
accumulator.
"""

from __future__ import annotations

import halide as hl
import numpy as np

from woodpecker.kernels.base import is_float32
from woodpecker.kernels.halide.common import (
    Definition,
    HalideImplementation,
    apply_activation,
    max_accumulators,
    vector_widths,
)
from woodpecker.kernels.workload import Workload
from woodpecker.search.space import Config, ConfigSpace, Knob

PANEL_ROWS = 16  # column-panel weights are a knob up to this many rows (classifiers, batch <= 16)


class HalideDense(HalideImplementation):
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
                and cfg["tile_n"] * cfg["tile_m"] <= max_accumulators()
                and cfg["tile_m"] <= rows
                and not (cfg.get("panels") and cfg["parallel_rows"] and rows <= PANEL_ROWS)
            )

        # Many rows (a linear layer over every pixel, ConvNeXt's MLP): a GEMM register tile of
        # 6 (AVX2: 4) rows x 2 vectors, threads over row tiles. Few rows (a classifier): threads over columns,
        # first with column-panel weights (4 vectors x 1-2 rows, or 2 vectors x up to 8 rows).
        # Weights larger than the input (more columns than rows): first each column panel of weights
        # read once, all row tiles inside it. Many rows: first with column-panel weights.
        vec = max(vector_widths())
        tile_rows = 6 if max_accumulators() >= 12 else 4  # 2 x 6 spills AVX2's 16 registers
        many = {"vec": vec, "tile_n": 2, "tile_m": tile_rows, "unroll_k": 1, "parallel_rows": True, "panels": False}
        many_weights_first = {**many, "parallel_rows": False}
        few = {"vec": vec, "tile_n": 2, "tile_m": 1, "unroll_k": 1, "parallel_rows": False, "panels": False}
        tile_m = max(m for m in (1, 2, 4, 8) if m <= rows and 2 * m <= max_accumulators())
        tile_n = max(t for t in (1, 2, 4 if tile_m < 4 else 2) if vec * t <= max(n_out, vec))
        few_panels = {**few, "tile_n": tile_n, "tile_m": tile_m, "panels": True}
        many_panels = {**many_weights_first, "panels": True}
        starts = (many_panels, many_weights_first, many, few) if n_out > rows else (many_panels, many, few)
        if rows <= PANEL_ROWS:
            starts = (few_panels, *starts)
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
                # Weights as column panels (threads over rows with few rows: not tried).
                Knob("panels", (False, True)),
            ),
            valid,
            defaults=tuple(c for c in starts if valid(c) and (rows >= 24 or c in (few, few_panels))),
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

        tile = vec * config["tile_n"] if n_out >= vec * config["tile_n"] else vec
        tile_m = config.get("tile_m", 1)  # records from before the knob existed meant 1
        panels = config.get("panels", False)  # ... and (K, N) weights

        j, m = hl.Var("j"), hl.Var("m")
        a = hl.ImageParam(hl.Float(32), 2, "a")
        residual = hl.ImageParam(hl.Float(32), 2, "residual")
        w_param = hl.ImageParam(hl.Float(32), 3 if panels else 2, "weight")
        b_param = hl.ImageParam(hl.Float(32), 2 if panels else 1, "bias")

        # The algorithm
        r = hl.RDom([hl.Range(0, k)], "r")
        acc = hl.Func("acc")
        if panels:  # acc[t, p, m]: column p * tile + t, weights (panel, K, tile) seen as (t, k, p)
            weight, bias = _column_panels(weight, bias, tile)
            lanes, p = hl.Var("t"), hl.Var("p")
            acc[lanes, p, m] = b_param[lanes, p]
            acc[lanes, p, m] += a[r.x, m] * w_param[lanes, r.x, p]
            value = acc[j % tile, j // tile, m]
        else:
            lanes = j
            acc[j, m] = b_param[j]
            acc[j, m] += a[r.x, m] * w_param[j, r.x]
            value = acc[j, m]
        out = hl.Func("dense")
        out[j, m] = apply_activation(workload, value + residual[j, m] if has_residual else value)

        # How to schedule it: a register tile of tile_m rows x tile columns per accumulator
        jo, ji, mo, mi = hl.Var("jo"), hl.Var("ji"), hl.Var("mo"), hl.Var("mi")
        # Panels: tiles start at multiples of `tile` (a shifted last tile would straddle two panels).
        tail = hl.TailStrategy.GuardWithIf if panels else hl.TailStrategy.Auto
        out.split(j, jo, ji, tile, tail).split(m, mo, mi, tile_m).unroll(mi)
        if config["parallel_rows"]:
            out.reorder(ji, mi, jo, mo)
        else:
            out.reorder(ji, mi, mo, jo)
        acc.compute_at(out, jo if config["parallel_rows"] else mo).unroll(m)  # one register tile
        acc.update().reorder(lanes, m, r.x).unroll(m)
        if vec > 1:
            out.vectorize(ji, vec)
            acc.vectorize(lanes, vec).update().vectorize(lanes, vec).unroll(lanes)
        if config["unroll_k"] > 1 and k % config["unroll_k"] == 0:
            ro, ri = hl.RVar("ro"), hl.RVar("ri")
            acc.update().split(r.x, ro, ri, config["unroll_k"]).unroll(ri)
        out.parallel(mo if config["parallel_rows"] and rows > 1 else jo)
        if panels:  # output columns from 0: a tile of columns is one panel, the accumulators one tile
            out.output_buffer().dim(0).set_min(0)
            acc.bound(lanes, 0, tile).bound_extent(p, 1)

        params = [a] + ([residual] if has_residual else []) + [w_param, b_param]
        return Definition(out, params, [weight, bias], flatten=2)


def _column_panels(weight: np.ndarray, bias: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) weights as (N / tile, K, tile) panels and the bias as (N / tile, tile), N padded with zeros."""
    k, n = weight.shape
    count = -(-n // tile)
    padded = np.zeros((k, count * tile), np.float32)
    padded[:, :n] = weight
    panels = np.ascontiguousarray(padded.reshape(k, count, tile).transpose(1, 0, 2))
    return panels, np.pad(bias, (0, count * tile - n)).reshape(count, tile)
