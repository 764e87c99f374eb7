"""Element-wise ops on same-shape float tensors, computed over a flat view."""

from __future__ import annotations

import halide as hl

from woodpecker.kernels.base import is_float32
from woodpecker.kernels.generated.common import Definition, GeneratedImplementation, vector_widths
from woodpecker.kernels.workload import Workload
from woodpecker.ops import activations
from woodpecker.search.space import Config, ConfigSpace, Knob

BINARY = {
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": lambda a, b: a / b,
    "Max": hl.max,
    "Min": hl.min,
}
UNARY = {  # besides the activations of ops.activations
    "Tanh": hl.tanh,
    "Exp": hl.exp,
    "Neg": lambda a: -a,
    "Abs": hl.abs,
}


ACTIVATIONS = ("Relu", "Sigmoid", "HardSigmoid", "HardSwish")  # Clip reads its bounds from constant inputs


class HalideElementwise(GeneratedImplementation):
    name = "halide.elementwise"

    def matches(self, workload: Workload) -> bool:
        node = workload.node
        if node.op not in BINARY and node.op not in UNARY and node.op not in ACTIVATIONS:
            return False
        arity = 2 if node.op in BINARY else 1
        shapes = {workload.shape(n) for n in node.inputs}
        return (
            len(node.inputs) == arity
            and shapes == {workload.output_shape}
            and len(workload.blocks) == 1  # one layout: the flat views agree
            and is_float32(workload)
            and not any(n in workload.constants for n in node.inputs)
        )

    def space(self, workload: Workload) -> ConfigSpace:
        size = int(workload.values[workload.node.outputs[0]].size)
        return ConfigSpace(
            (Knob("vec", vector_widths()), Knob("chunk", (1024, 4096, 16384))),
            lambda cfg: cfg["vec"] <= size and cfg["chunk"] <= max(size, 1024),
        )

    def define(self, workload: Workload, config: Config) -> Definition:
        i = hl.Var("i")
        params = [hl.ImageParam(hl.Float(32), 1, f"in{k}") for k in range(len(workload.node.inputs))]

        # The algorithm
        out = hl.Func(workload.op)
        if workload.op in BINARY:
            out[i] = BINARY[workload.op](params[0][i], params[1][i])
        elif workload.op in UNARY:
            out[i] = UNARY[workload.op](params[0][i])
        else:
            out[i] = activations.halide(activations.of_node(workload.node, {}), params[0][i])

        # How to schedule it
        size = workload.values[workload.node.outputs[0]].size
        io, ii = hl.Var("io"), hl.Var("ii")
        # Guarded tails: every element is computed exactly once, which running in place needs
        # (a shifted-inwards last vector would re-read inputs the first one already overwrote).
        guard = hl.TailStrategy.GuardWithIf
        if size > config["chunk"]:
            out.split(i, io, ii, config["chunk"], guard).parallel(io).vectorize(ii, config["vec"], guard)
        else:
            out.vectorize(i, config["vec"], guard)
        return Definition(out, params, flatten=1)
