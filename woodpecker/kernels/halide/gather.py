"""Gather: the embedding lookup that starts every transformer (a table of token vectors, constant,
read at the token ids), and gathers along any axis of float32, integer and bool tensors (the
attention mask's rearrangements), with indices known at run time or at plan time.

Each output row is a copy of the addressed slice, the innermost axis vectorized, rows split across
threads. Negative indices count from the end, as in ONNX; an index outside the table (an error in
ONNX Runtime) reads the nearest row instead of memory it does not own.
"""

from __future__ import annotations

import halide as hl
import numpy as np

from woodpecker.kernels.halide.common import HALIDE_TYPES, Definition, HalideImplementation, vector_widths
from woodpecker.kernels.workload import Workload
from woodpecker.search.space import Config, ConfigSpace, Knob

INDEX_TYPES = {"int64": hl.Int(64), "int32": hl.Int(32)}


class HalideGather(HalideImplementation):
    name = "halide.gather"

    def matches(self, workload: Workload) -> bool:
        node = workload.node
        if node.op != "Gather" or workload.blocked or len(node.inputs) != 2:
            return False
        data, indices = node.inputs
        return (
            bool(workload.dynamic_inputs)
            and workload.values[data].dtype in HALIDE_TYPES
            and workload.values[indices].dtype in INDEX_TYPES
            and len(workload.shape(indices)) >= 1
            and min(workload.output_shape, default=1) > 0
        )

    def space(self, workload: Workload) -> ConfigSpace:
        inner = workload.output_shape[-1]
        knobs = (Knob("vec", (1, *vector_widths())), Knob("rows_per_task", (1, 4, 16)))
        return ConfigSpace(knobs, lambda cfg: cfg["vec"] <= inner)

    def define(self, workload: Workload, config: Config) -> Definition:
        node = workload.node
        data_name, indices_name = node.inputs
        data_shape, indices_shape = workload.shape(data_name), workload.shape(indices_name)
        axis = node.attrs.get("axis", 0) % len(data_shape)
        rank, queries = len(workload.output_shape), len(indices_shape)
        data = hl.ImageParam(HALIDE_TYPES[workload.values[data_name].dtype], len(data_shape), "data")
        indices = hl.ImageParam(INDEX_TYPES[workload.values[indices_name].dtype], queries, "indices")
        dims = [hl.Var(f"d{k}") for k in range(rank)]  # Halide order: innermost first
        numpy_order = dims[::-1]

        # The algorithm
        rows = data_shape[axis]
        index = indices[numpy_order[axis : axis + queries][::-1]]
        index = hl.clamp(hl.select(index < 0, index + rows, index), 0, rows - 1)
        at = [*numpy_order[:axis], hl.cast(hl.Int(32), index), *numpy_order[axis + queries :]]
        out = hl.Func("gather")
        out[dims] = data[at[::-1]]

        # How to schedule it: the innermost axis in vectors, the outermost non-trivial axis in tasks
        outer = next((v for v, n in zip(numpy_order, workload.output_shape) if n > 1), dims[-1])
        if rank > 1 and outer is not dims[0]:
            task, within = hl.Var("task"), hl.Var("within")
            out.split(outer, task, within, config["rows_per_task"], hl.TailStrategy.GuardWithIf).parallel(task)
        out.vectorize(dims[0], config["vec"], hl.TailStrategy.GuardWithIf)
        # Run-time inputs first, then the constant (the embedding table, or indices known at plan time)
        params = {data_name: data, indices_name: indices}
        constants = [n for n in node.inputs if n in workload.constants]
        return Definition(
            out,
            [params[n] for n in workload.dynamic_inputs] + [params[n] for n in constants],
            [np.array(workload.constants[n]) for n in constants],
        )
