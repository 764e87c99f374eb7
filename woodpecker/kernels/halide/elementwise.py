"""Element-wise ops, over a flat view when every operand is shaped like the output (either layout).
In the plain layout operands may broadcast (NumPy's rules: Swin's attention bias and mask) and be
constants; a scalar constant is baked into the code. Besides float32 arithmetic: comparisons, logic,
Where, IsNaN/IsInf and Cast over float32, int32/int64 and bool values (attention masks).

Halide compiles with fast-math flags, which promise no NaN: NaN is tested on the bits
(`activations.halide_is_nan`) wherever ONNX Runtime gives it a meaning of its own."""

from __future__ import annotations

import halide as hl
import numpy as np

from woodpecker.graph.ir import broadcasts_to
from woodpecker.kernels.base import Capabilities
from woodpecker.kernels.halide.common import (
    HALIDE_TYPES,
    Definition,
    HalideImplementation,
    nan_max,
    nan_min,
    vector_widths,
)
from woodpecker.kernels.workload import Workload
from woodpecker.ops import activations
from woodpecker.ops.activations import halide_is_inf, halide_is_nan, halide_nonfinite
from woodpecker.search.space import Config, ConfigSpace, Knob

INF = float("inf")


def _unordered(a: hl.Expr, b: hl.Expr) -> hl.Expr:
    """Whether a comparison involves NaN (then it is false, as in IEEE and ONNX Runtime)."""
    nan = [halide_is_nan(v) for v in (a, b) if v.type().is_float()]
    return hl.Expr(False) if not nan else nan[0] if len(nan) == 1 else nan[0] | nan[1]


def _pow(a: hl.Expr, exponent: float) -> hl.Expr:
    """x^exponent for the constant integer exponents exported models use (GELU's x^3, spelled-out
    norms' x^2) as products. Other exponents are left to the library (C's pow(-Inf, 0.5) is +Inf;
    a select around Halide's sqrt did not keep it at every vector width)."""
    return a if exponent == 1.0 else a * a if exponent == 2.0 else a * a * a


POW_EXPONENTS = (1.0, 2.0, 3.0)


def _sqrt(a: hl.Expr) -> hl.Expr:
    """sqrt, +Inf kept (Halide's, x * rsqrt(x), makes it NaN); NaN for negative numbers as it is."""
    return hl.select(halide_is_inf(a) & (a > 0), hl.f32(INF), hl.sqrt(a))


def _is_inf(a: hl.Expr, positive: int, negative: int) -> hl.Expr:
    """ONNX's IsInf: +Inf where `positive`, -Inf where `negative`."""
    if positive and negative:
        return halide_is_inf(a)
    return halide_is_inf(a) & (a > 0 if positive else a < 0) if positive or negative else hl.Expr(False)


def _compare(relation):
    return lambda a, b: hl.select(_unordered(a, b), hl.Expr(False), relation(a, b))


FLOAT_BINARY = {
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": lambda a, b: a / b,
    "Max": nan_max,
    "Min": nan_min,
    "PRelu": lambda a, slope: hl.select(a < 0, a * slope, a),
}
COMPARISONS = {  # any numeric operands -> bool
    "Equal": _compare(lambda a, b: a == b),
    "Less": _compare(lambda a, b: a < b),
    "LessOrEqual": _compare(lambda a, b: a <= b),
    "Greater": _compare(lambda a, b: a > b),
    "GreaterOrEqual": _compare(lambda a, b: a >= b),
}
LOGIC = {"And": lambda a, b: a & b, "Or": lambda a, b: a | b, "Xor": lambda a, b: a != b, "Not": lambda a: ~a}
UNARY = {  # float32; NaN passes through, +-Inf as ONNX Runtime maps it
    "Tanh": lambda a, _: halide_nonfinite(a, hl.tanh(a), 1.0, -1.0),
    "Exp": lambda a, _: halide_nonfinite(a, hl.exp(a), INF, 0.0),
    "Neg": lambda a, _: -a,
    "Abs": lambda a, _: hl.abs(a),
    "Sqrt": lambda a, _: _sqrt(a),
    "Reciprocal": lambda a, _: 1.0 / a,
    "Erf": lambda a, _: halide_nonfinite(a, activations.halide_erf(a), 1.0, -1.0),
    "Softplus": lambda a, _: halide_nonfinite(a, hl.max(a, 0.0) + hl.log(1.0 + hl.exp(-hl.abs(a))), INF, 0.0),
    "Softsign": lambda a, _: halide_nonfinite(a, a / (1.0 + hl.abs(a)), 1.0, -1.0),
    "LeakyRelu": lambda a, attrs: hl.select(a < 0, a * hl.f32(attrs.get("alpha", 0.01)), a),
    "Elu": lambda a, attrs: halide_nonfinite(
        a, hl.select(a < 0, hl.f32(attrs.get("alpha", 1.0)) * (hl.exp(a) - 1.0), a), INF, -attrs.get("alpha", 1.0)
    ),
    "IsNaN": lambda a, _: halide_is_nan(a),
    "IsInf": lambda a, attrs: _is_inf(a, attrs.get("detect_positive", 1), attrs.get("detect_negative", 1)),
}
# Clip's bounds are plan-time constants (optional inputs 1 and 2): only its input is an operand.
ACTIVATIONS = tuple(activations.UNARY_ACTIVATIONS)
ARITY = {
    **dict.fromkeys((*FLOAT_BINARY, "Pow"), 2),
    **dict.fromkeys(COMPARISONS, 2),
    **{op: 1 if op == "Not" else 2 for op in LOGIC},
    **dict.fromkeys(UNARY, 1),
    **dict.fromkeys(ACTIVATIONS, 1),
    "Where": 3,
    "Cast": 1,
}


def _cast(x: hl.Expr, to: hl.Type) -> hl.Expr:
    """ONNX's Cast: to bool, anything but zero (NaN included) is true."""
    if to.is_bool():
        return hl.select(halide_is_nan(x), hl.Expr(True), x != 0) if x.type().is_float() else x != 0
    return hl.cast(to, x)


def _pow_exponent(workload: Workload) -> float | None:
    exponent = workload.constants.get(workload.node.inputs[1])
    return float(exponent.reshape(-1)[0]) if exponent is not None and exponent.size == 1 else None


def _float_only(op: str) -> bool:
    return op in FLOAT_BINARY or op in UNARY or op in ACTIVATIONS or op == "Pow"


class HalideElementwise(HalideImplementation):
    name = "halide.elementwise"
    capabilities = Capabilities(compiled=True, strided_outputs=True, in_place=True)

    def matches(self, workload: Workload) -> bool:
        node = workload.node
        if node.op == "Clip":
            bounded = activations.of_node(node, workload.constants) is not None
            return bounded and workload.dynamic_inputs == [node.inputs[0]] and self._matches_operands(workload, 1)
        if node.op not in ARITY or len(node.inputs) != ARITY[node.op] or not workload.dynamic_inputs:
            return False
        return self._matches_operands(workload, len(node.inputs))

    def _matches_operands(self, workload: Workload, count: int) -> bool:
        """Whether the node's first `count` inputs (its operands) and its output have a kernel here."""
        node = workload.node
        operands = node.inputs[:count]
        dtypes = {workload.values[n].dtype for n in (*operands, *node.outputs)}
        if not dtypes <= set(HALIDE_TYPES) or len(workload.blocks) != 1:  # one layout
            return False
        if _float_only(node.op) and {workload.values[n].dtype for n in operands} != {"float32"}:
            return False
        if dtypes != {"float32"} and workload.blocked:
            return False
        if node.op == "Pow" and _pow_exponent(workload) not in POW_EXPONENTS:
            return False
        if workload.blocked:  # same-shape run-time values; a constant only as a scalar
            return all(
                workload.constants[n].size == 1
                if n in workload.constants
                else workload.shape(n) == workload.output_shape
                for n in operands
            )
        return all(broadcasts_to(workload.shape(n), workload.output_shape) for n in operands)

    def space(self, workload: Workload) -> ConfigSpace:
        size = int(workload.values[workload.node.outputs[0]].size)
        return ConfigSpace(
            (Knob("vec", vector_widths()), Knob("chunk", (1024, 4096, 16384))),
            lambda cfg: cfg["vec"] <= size and cfg["chunk"] <= max(size, 1024),
        )

    def define(self, workload: Workload, config: Config) -> Definition:
        node, out_shape = workload.node, workload.output_shape
        operands = node.inputs[:1] if node.op == "Clip" else node.inputs
        arrays = [n for n in operands if not (n in workload.constants and workload.constants[n].size == 1)]
        # Flat when every array operand is shaped like the output; else indexed per axis, an
        # operand's size-1 axes read at 0 (NumPy broadcasting; Halide sees the axes reversed).
        flat = all(workload.shape(n) == out_shape for n in arrays)
        dims = [hl.Var(f"d{k}") for k in range(1 if flat else len(out_shape))]
        runtime, constant_params, constants, values = [], [], [], []  # values: one per node input
        for name in operands:
            dtype = workload.values[name].dtype
            if name not in arrays:  # a scalar constant, baked into the code
                values.append(hl.cast(HALIDE_TYPES[dtype], np.ravel(workload.constants[name])[0].item()))
                continue
            shape = (workload.values[name].size,) if flat else workload.shape(name)
            param = hl.ImageParam(HALIDE_TYPES[dtype], len(shape), f"in{len(values)}")
            values.append(
                param[[dims[d] if flat or shape[-1 - d] == out_shape[-1 - d] else 0 for d in range(len(shape))]]
            )
            if name in workload.constants:
                constant_params.append(param)
                constants.append(np.array(workload.constants[name], dtype).reshape(shape))
            else:
                runtime.append(param)
        params = runtime + constant_params  # run-time inputs first, then one per constant array

        # The algorithm
        out = hl.Func(workload.op)
        op, attrs = workload.op, node.attrs
        if op == "Pow":
            out[dims] = _pow(values[0], _pow_exponent(workload))
        elif op in FLOAT_BINARY:
            out[dims] = FLOAT_BINARY[op](*values)
        elif op in COMPARISONS:
            out[dims] = COMPARISONS[op](*values)
        elif op in LOGIC:
            out[dims] = LOGIC[op](*values)
        elif op in UNARY:
            out[dims] = UNARY[op](values[0], attrs)
        elif op == "Where":
            out[dims] = hl.select(*values)
        elif op == "Cast":
            out[dims] = _cast(values[0], HALIDE_TYPES[workload.values[node.outputs[0]].dtype])
        else:
            out[dims] = activations.halide(activations.of_node(node, workload.constants), values[0])

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
