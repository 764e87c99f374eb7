"""Fused attention (graph/passes/fuse_attention.py): softmax(q kᵀ · scale + mask) v in one kernel.

Each task takes one head of one batch item, or one block of its query rows: it computes the
scores of `tile_q` query rows against every key, their softmax and the product with v, keeping
those rows of scores in cache, so the sequence x sequence matrix is never written to memory.
q, k and v are read where the exporter's Transposes would have read them (heads interleaved), k
once per task transposed into a block whose keys are contiguous, so both products run as
register tiles of vectors: keys across the lanes for q kᵀ, output features for the product with v.
Softmax matches ONNX Runtime's on non-finite scores (a row masked out entirely gives NaN, or 0
where the graph replaced NaN with 0).
"""

from __future__ import annotations

import halide as hl
import numpy as np

from woodpecker.kernels.base import is_float32
from woodpecker.kernels.halide.common import (
    Definition,
    HalideImplementation,
    add,
    max_accumulators,
    row_reduce,
    vector_widths,
)
from woodpecker.kernels.workload import Workload
from woodpecker.ops import activations
from woodpecker.ops.fused import ATTENTION
from woodpecker.runtime.kernel_library import pool_threads
from woodpecker.search.space import Config, ConfigSpace, Knob

TILE_Q = (1, 2, 4, 6, 8)
LOGICAL = "bhsd"  # the attention's own axis order: batch, head, sequence, feature


class HalideAttention(HalideImplementation):
    name = "halide.attention"

    def matches(self, workload: Workload) -> bool:
        node = workload.node
        return node.op == ATTENTION and is_float32(workload) and not workload.blocked

    def space(self, workload: Workload) -> ConfigSpace:
        b, h, sq, _ = _logical_shape(workload, 0)
        sk, dv = _logical_shape(workload, 2)[2:]

        def valid(cfg: Config) -> bool:
            return (
                cfg["tile_q"] <= sq
                and cfg["tile_q"] * max(cfg["key_vectors"], cfg["feature_vectors"]) <= max_accumulators()
                and cfg["vec"] * cfg["key_vectors"] <= max(sk, cfg["vec"])
                and cfg["vec"] * cfg["feature_vectors"] <= max(dv, cfg["vec"])
                and (cfg["tasks"] == "heads" or sq > cfg["tile_q"])
            )

        vec = max(vector_widths())

        def fitted(tile_q: int, tasks: str) -> Config:
            """The widest register tiles that fit the keys and features, for `tile_q` rows."""
            tile_q = max(t for t in TILE_Q if t <= min(tile_q, sq))
            cap = min(12, max_accumulators())  # accumulators per phase (scores, then the output)
            keys = max((n for n in (1, 2, 4) if vec * n <= max(sk, vec) and tile_q * n <= cap), default=1)
            features = max((n for n in (1, 2, 4) if vec * n <= max(dv, vec) and tile_q * n <= cap), default=1)
            return {"vec": vec, "tile_q": tile_q, "key_vectors": keys, "feature_vectors": features, "tasks": tasks}

        starts = [fitted(4, "heads"), fitted(2, "heads"), fitted(4, "rows"), fitted(8, "heads")]
        # A task per head leaves cores idle when heads do not share out evenly (3 heads, 2 cores).
        if b * h % pool_threads() and b * h < 4 * pool_threads():
            starts = [fitted(8, "rows"), fitted(2, "rows"), *starts]
        knobs = (
            Knob("vec", vector_widths()),
            Knob("tile_q", TILE_Q),  # query rows per register tile and per block of scores
            Knob("key_vectors", (1, 2, 4)),  # vectors of keys per register tile of q kᵀ
            Knob("feature_vectors", (1, 2, 4)),  # vectors of output features per tile of p v
            # heads: a task per head (k transposed in it); rows: a task per block of query rows
            # (more tasks when there are few heads; k transposed for all heads first)
            Knob("tasks", ("heads", "rows")),
        )
        defaults = [c for k, c in enumerate(starts) if valid(c) and c not in starts[:k]]
        return ConfigSpace(knobs, valid, defaults=tuple(defaults))

    def define(self, workload: Workload, config: Config) -> Definition:
        node = workload.node
        _, _, sq, depth = _logical_shape(workload, 0)
        sk, dv = _logical_shape(workload, 2)[2:]
        vec, tile_q = config["vec"], config["tile_q"]
        has_mask = workload.has_input(3)
        q_in, k_in, v_in = (hl.ImageParam(hl.Float(32), 4, n) for n in ("q", "k", "v"))
        mask_in = hl.ImageParam(hl.Float(32), len(workload.input_shape(3)), "mask") if has_mask else None
        key, query, feature, head, batch = (hl.Var(n) for n in ("key", "query", "feature", "head", "batch"))

        def q(s, d):
            return _read(q_in, node.attrs["q_perm"], (batch, head, s, d))

        def v(s, d):
            return _read(v_in, node.attrs["v_perm"], (batch, head, s, d))

        # The algorithm
        kt = hl.Func("k_transposed")  # kt[key, d]: keys contiguous
        kt[key, feature, head, batch] = _read(k_in, node.attrs["k_perm"], (batch, head, feature, key))
        rd = hl.RDom([hl.Range(0, depth)], "rd")
        dot = hl.Func("dot")
        dot[key, query, head, batch] = hl.f32(0)
        dot[key, query, head, batch] += q(query, rd.x) * kt[key, rd.x, head, batch]

        scores = hl.Func("scores")
        scores[key, query, head, batch] = dot[key, query, head, batch] * hl.f32(node.attrs["scale"])
        if has_mask:
            mask = _broadcast_read(mask_in, workload.input_shape(3), (batch, head, query, key))
            scores[key, query, head, batch] += mask

        def score(k):
            return scores[k, query, head, batch]

        rows = [query, head, batch]
        lanes = min(vec, sk)
        peak = row_reduce("peak", score, sk, lanes, hl.max, -np.inf, rows)
        shifted = score(key) - peak[0][query, head, batch]  # NaN where the row is -Inf throughout
        exp = hl.Func("exp")
        exp[key, query, head, batch] = activations.halide_nonfinite(shifted, hl.exp(shifted), np.inf, 0.0)
        total = row_reduce("total", lambda k: exp[k, query, head, batch], sk, lanes, add, 0.0, rows)
        p = exp[key, query, head, batch] / total[0][query, head, batch]
        if node.attrs["nan_to_zero"]:
            p = hl.select(activations.halide_is_nan(p), hl.f32(0), p)
        prob = hl.Func("probabilities")
        prob[key, query, head, batch] = p
        rk = hl.RDom([hl.Range(0, sk)], "rk")
        acc = hl.Func("weighted")
        acc[feature, query, head, batch] = hl.f32(0)
        acc[feature, query, head, batch] += prob[rk.x, query, head, batch] * v(rk.x, feature)
        logical = dict(zip(LOGICAL, (batch, head, query, feature)))
        out = hl.Func("attention")
        out[[logical[LOGICAL[axis]] for axis in node.attrs["out_perm"]][::-1]] = acc[feature, query, head, batch]

        # How to schedule it: a task per head (or per block of query rows), tile_q rows at a time;
        # each product in register tiles (dot inside the block of scores, acc inside the output)
        qo, qi, heads, task = hl.Var("qo"), hl.Var("qi"), hl.Var("heads"), hl.Var("task")
        out.split(query, qo, qi, tile_q).reorder(feature, qi, qo, head, batch).fuse(head, batch, heads)
        if config["tasks"] == "heads":
            out.parallel(heads)
            kt.compute_at(out, heads)
            block = qo
        else:  # k transposed for all heads first, shared by the tasks
            out.fuse(qo, heads, task).parallel(task)
            kt.compute_root().parallel(batch).parallel(head)
            block = task
        kt.vectorize(key, lanes, hl.TailStrategy.GuardWithIf)
        for stage in (scores, exp, prob, peak[0], peak[1], total[0], total[1]):
            stage.compute_at(out, block)
        for stage in (exp, prob):
            stage.vectorize(key, lanes, hl.TailStrategy.GuardWithIf)
        for _, partial in (peak, total):
            partial.vectorize(partial.args()[0]).update().vectorize(partial.args()[0])
        key_tile = _register_tile(scores, key, query, lanes, config["key_vectors"], sk)
        if has_mask:
            scores.update().vectorize(key, lanes, hl.TailStrategy.GuardWithIf)
        _accumulate(dot, scores, key_tile, key, query, rd.x, lanes)
        features = min(vec, dv)
        feature_tile = _register_tile(out, feature, qi, features, config["feature_vectors"], dv)
        _accumulate(acc, out, feature_tile, feature, query, rk.x, features)
        params = [q_in, k_in, v_in] + ([mask_in] if has_mask else [])
        return Definition(out, params)


def _register_tile(func: hl.Func, lane_var: hl.Var, row: hl.Var, lanes: int, vectors: int, width: int) -> hl.Var:
    """Split `func` along `lane_var` into tiles of `vectors` vectors, each written for all rows of the
    block before the next; returns the loop of tiles, for the reduction to be computed at."""
    tile = lanes * vectors if width >= lanes * vectors else lanes
    outer, inner = hl.Var(f"{lane_var.name()}_tile"), hl.Var(f"{lane_var.name()}_in")
    tail = hl.TailStrategy.ShiftInwards if width >= tile else hl.TailStrategy.GuardWithIf
    func.split(lane_var, outer, inner, tile, tail).reorder(inner, row, outer)
    func.vectorize(inner, lanes, hl.TailStrategy.GuardWithIf)
    return outer


def _accumulate(
    func: hl.Func, consumer: hl.Func, at: hl.Var, lane_var: hl.Var, row: hl.Var, reduction: hl.RVar, lanes: int
) -> None:
    """`func` (a sum) computed per register tile of `consumer`: the accumulators of the tile stay in
    registers over the reduction (vectors along `lane_var`, every row of the block)."""
    func.compute_at(consumer, at).vectorize(lane_var, lanes, hl.TailStrategy.GuardWithIf).unroll(row)
    update = func.update().reorder(lane_var, row, reduction)
    update.vectorize(lane_var, lanes, hl.TailStrategy.GuardWithIf).unroll(lane_var).unroll(row)


def _logical_shape(workload: Workload, index: int) -> tuple[int, ...]:
    """Input `index` in the attention's order ([B, H, S, D]; k as [B, H, D, Sk])."""
    perm = workload.node.attrs[("q_perm", "k_perm", "v_perm")[index]]
    shape = workload.input_shape(index)
    return tuple(shape[axis] for axis in perm)


def _read(param: hl.ImageParam, perm: list[int], at: tuple) -> hl.Expr:
    """The element at logical coordinates `at` (NumPy order) of the input transposed by `perm`."""
    index = [None] * 4
    for axis, coordinate in zip(perm, at):
        index[axis] = coordinate
    return param[index[::-1]]


def _broadcast_read(param: hl.ImageParam, shape: tuple[int, ...], at: tuple) -> hl.Expr:
    """The element of a mask broadcast (NumPy's rules) to the scores' shape, at `at`."""
    at = at[len(at) - len(shape) :]
    index = [0 if size == 1 else coordinate for size, coordinate in zip(shape, at)]
    return param[index[::-1]] if index else param[()]
