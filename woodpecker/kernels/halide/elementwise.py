"""Element-wise ops, over a flat view when every operand is shaped like the output (either layout).
In the plain layout operands may broadcast (NumPy's rules: Swin's attention bias and mask) and be
constants; a scalar constant is baked into the code."""

from __future__ import annotations

import halide as hl
import numpy as np

from woodpecker.graph.ir import broadcasts_to
from woodpecker.kernels.base import Capabilities, is_float32
from woodpecker.kernels.halide.common import Definition, HalideImplementation, nan_max, nan_min, vector_widths
from woodpecker.kernels.workload import Workload
from woodpecker.ops import activations
from woodpecker.search.space import Config, ConfigSpace, Knob

BINARY = {
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": lambda a, b: a / b,
    "Max": nan_max,
    "Min": nan_min,
}
UNARY = {  # besides the activations of ops.activations; NaN passes through, +-Inf as ONNX Runtime maps it
    "Tanh": lambda a: activations.halide_nonfinite(a, hl.tanh(a), 1.0, -1.0),
    "Exp": lambda a: activations.halide_nonfinite(a, hl.exp(a), float("inf"), 0.0),
    "Neg": lambda a: -a,
    "Abs": hl.abs,
}


# Clip reads its bounds from constant inputs: it runs here only fused into a Conv/Gemm.
ACTIVATIONS = tuple(op for op in activations.UNARY_ACTIVATIONS if op != "Clip")


class HalideElementwise(HalideImplementation):
    name = "halide.elementwise"
    capabilities = Capabilities(compiled=True, strided_outputs=True, in_place=True)

    def matches(self, workload: Workload) -> bool:
        node = workload.node
        if node.op not in BINARY and node.op not in UNARY and node.op not in ACTIVATIONS:
            return False
        if len(node.inputs) != (2 if node.op in BINARY else 1) or not workload.dynamic_inputs:
            return False
        if not is_float32(workload) or len(workload.blocks) != 1:  # one layout
            return False
        if workload.blocked:  # same-shape run-time values; a constant only as a scalar
            return all(
                workload.constants[n].size == 1
                if n in workload.constants
                else workload.shape(n) == workload.output_shape
                for n in node.inputs
            )
        return all(broadcasts_to(workload.shape(n), workload.output_shape) for n in node.inputs)

    def space(self, workload: Workload) -> ConfigSpace:
        size = int(workload.values[workload.node.outputs[0]].size)
        return ConfigSpace(
            (Knob("vec", vector_widths()), Knob("chunk", (1024, 4096, 16384))),
            lambda cfg: cfg["vec"] <= size and cfg["chunk"] <= max(size, 1024),
        )

    def define(self, workload: Workload, config: Config) -> Definition:
        node, out_shape = workload.node, workload.output_shape
        arrays = [n for n in node.inputs if not (n in workload.constants and workload.constants[n].size == 1)]
        # Flat when every array operand is shaped like the output; else indexed per axis, an
        # operand's size-1 axes read at 0 (NumPy broadcasting; Halide sees the axes reversed).
        flat = all(workload.shape(n) == out_shape for n in arrays)
        dims = [hl.Var(f"d{k}") for k in range(1 if flat else len(out_shape))]
        runtime, constant_params, constants, values = [], [], [], []  # values: one per node input
        for name in node.inputs:
            if name not in arrays:  # a scalar constant, baked into the code
                values.append(hl.f32(float(np.ravel(workload.constants[name])[0])))
                continue
            shape = (workload.values[name].size,) if flat else workload.shape(name)
            param = hl.ImageParam(hl.Float(32), len(shape), f"in{len(values)}")
            values.append(
                param[[dims[d] if flat or shape[-1 - d] == out_shape[-1 - d] else 0 for d in range(len(shape))]]
            )
            if name in workload.constants:
                constant_params.append(param)
                constants.append(np.array(workload.constants[name], np.float32).reshape(shape))
            else:
                runtime.append(param)
        params = runtime + constant_params  # run-time inputs first, then one per constant array

        # The algorithm
        out = hl.Func(workload.op)
        if workload.op in BINARY:
            out[dims] = BINARY[workload.op](*values)
        elif workload.op in UNARY:
            out[dims] = UNARY[workload.op](*values)
        else:
            out[dims] = activations.halide(activations.of_node(workload.node, {}), *values)

        # How to schedule it
        size = int(np.prod(out_shape))
        inner, io, ii = dims[0], hl.Var("io"), hl.Var("ii")
        # Guarded tails: every element is computed exactly once, which running in place needs
        # (a shifted-inwards last vector would re-read inputs the first one already overwrote).
        guard = hl.TailStrategy.GuardWithIf
        if flat and size > config["chunk"]:
            out.split(inner, io, ii, config["chunk"], guard).parallel(io)
            inner = ii
        elif len(dims) > 1:
            out.parallel(next((v for d, v in reversed(list(enumerate(dims))) if out_shape[-1 - d] > 1), dims[-1]))
        out.vectorize(inner, config["vec"], guard)
        return Definition(out, params, constants, flatten=1 if flat else 0)
