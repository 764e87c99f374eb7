"""The activations an epilogue can apply, each written once for every runtime that computes it.

A fused node names its activation in `attrs["activation"]` with its parameters beside it
(`clip_min`/`clip_max`, `hardsigmoid_alpha`/`hardsigmoid_beta`). Halide kernels, the NumPy and
PyTorch library kernels and the ONNX the libraries run all read this table, so a fused
activation cannot mean one thing in a generated kernel and another in its reference.
`silu` (x * sigmoid(x)) and `gelu` have no ONNX op at opset 17: exported models spell them
Sigmoid + Mul and Div, Erf, Add, Mul, Mul (graph/passes/fuse_epilogue.py recognizes both).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from onnx import NodeProto

    from woodpecker.graph.ir import Node

# ONNX op -> activation name, for ops that are one activation on their own.
UNARY_ACTIVATIONS = {
    "Relu": "relu",
    "Clip": "clip",
    "Sigmoid": "sigmoid",
    "HardSigmoid": "hardsigmoid",
    "HardSwish": "hardswish",
}
DISPLAY = {
    "relu": "Relu",
    "clip": "Clip",
    "sigmoid": "Sigmoid",
    "silu": "SiLU",
    "hardsigmoid": "HardSigmoid",
    "hardswish": "HardSwish",
    "gelu": "GELU",
}
# Abramowitz & Stegun 7.1.26: erf within 1.5e-7 everywhere, from one exp (Halide has no erf).
ERF_P = 0.3275911
ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
# Attribute names that belong to a fused activation, not to the op that hosts it.
PARAMETERS = ("activation", "clip_min", "clip_max", "hardsigmoid_alpha", "hardsigmoid_beta")
FLOAT_MAX = 3.4e38


def of_node(node: Node, constants: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
    """The epilogue attributes that compute this unary ONNX node, or None when it is not one
    (an unknown op, or a Clip whose bounds are not plan-time constants)."""
    name = UNARY_ACTIVATIONS.get(node.op)
    attrs = node.attrs
    if name == "clip":
        bounds = _clip_bounds(attrs, constants, node.inputs)
        return None if bounds is None else {"activation": "clip", "clip_min": bounds[0], "clip_max": bounds[1]}
    if name == "hardsigmoid":
        alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
        return {"activation": name, "hardsigmoid_alpha": alpha, "hardsigmoid_beta": beta}
    return None if name is None else {"activation": name}


def halide(attrs: dict[str, Any], x):
    """`x` (a Halide expression) with the activation applied, NaN and +-Inf as ONNX Runtime treats
    them (see `limits`): Halide compiles with fast-math flags, under which max(NaN, 0) is 0 and its
    exp(Inf) is 0, so non-finite inputs are selected apart from the formula for finite ones."""
    import halide as hl

    name = attrs.get("activation")
    if not name:
        return x
    if name == "relu":
        value = hl.max(x, 0.0)
    elif name == "clip":
        value = hl.clamp(x, *(hl.f32(bound) for bound in clip_range(attrs)))
    elif name == "sigmoid":
        value = 1.0 / (1.0 + hl.exp(-x))
    elif name == "silu":
        value = x / (1.0 + hl.exp(-x))
    elif name == "hardsigmoid":
        value = hl.clamp(x * hl.f32(attrs["hardsigmoid_alpha"]) + hl.f32(attrs["hardsigmoid_beta"]), 0.0, 1.0)
    elif name == "hardswish":
        value = x * hl.clamp(x * hl.f32(1.0 / 6.0) + 0.5, 0.0, 1.0)
    elif name == "gelu":
        value = 0.5 * x * (1.0 + halide_erf(x * hl.f32(np.sqrt(0.5))))
    else:
        raise ValueError(f"unknown activation {name!r}")
    return halide_nonfinite(x, value, *limits(attrs))


def limits(attrs: dict[str, Any]) -> tuple[float, float]:
    """The activation's value at +Inf and at -Inf, as ONNX Runtime computes it from the ONNX ops
    (`onnx_nodes`): x * sigmoid(x) at -Inf is -Inf * 0, NaN."""
    name = attrs["activation"]
    nan, inf = float("nan"), float("inf")
    if name == "clip":
        low, high = clip_range(attrs)
        return high, low
    if name == "hardsigmoid":
        alpha, beta = attrs["hardsigmoid_alpha"], attrs["hardsigmoid_beta"]
        if alpha == 0:
            return float(np.clip(beta, 0, 1)), float(np.clip(beta, 0, 1))
        return (1.0, 0.0) if alpha > 0 else (0.0, 1.0)
    return {"relu": (inf, 0.0), "sigmoid": (1.0, 0.0), "silu": (inf, nan), "hardswish": (inf, nan), "gelu": (inf, nan)}[
        name
    ]


def clip_range(attrs: dict[str, Any]) -> tuple[float, float]:
    """A Clip's bounds; where the model gave none (stored as -+FLOAT_MAX), float32's extremes, which
    is what ONNX Runtime clamps +-Inf to."""
    largest = float(np.finfo(np.float32).max)
    low, high = attrs["clip_min"], attrs["clip_max"]
    return -largest if low <= -FLOAT_MAX else low, largest if high >= FLOAT_MAX else high


def halide_nonfinite(x, value, at_inf: float, at_minus_inf: float):
    """`value`, computed for finite `x`, where `x` is finite; `x` itself where it is NaN, and the given
    limits where it is +-Inf."""
    import halide as hl

    value = hl.select(halide_is_inf(x), hl.select(x > 0, hl.f32(at_inf), hl.f32(at_minus_inf)), value)
    return hl.select(halide_is_nan(x), x, value)


def halide_erf(x):
    """erf(x) for finite `x` (Halide has none; see `_erf_magnitude`)."""
    import halide as hl

    magnitude = _erf_magnitude(hl.abs(x), hl.exp, hl.f32)
    return hl.select(x < 0, -magnitude, magnitude)


def halide_is_nan(x):
    """Whether `x` is NaN, tested on its bits: Halide's is_nan is folded to false by LLVM when `x` comes
    from arithmetic compiled with fast-math flags (a convolution's sum), which promise no NaN."""
    import halide as hl

    return (hl.reinterpret(hl.UInt(32), x) & 0x7FFFFFFF) > 0x7F800000


def halide_is_inf(x):
    """Whether `x` is +-Inf, tested on its bits (see halide_is_nan)."""
    import halide as hl

    return (hl.reinterpret(hl.UInt(32), x) & 0x7FFFFFFF) == 0x7F800000


def _erf_magnitude(a, exp, const=float):
    """erf(a) for a >= 0 by Abramowitz & Stegun; plain arithmetic, so Halide and NumPy share it
    (`const` makes the coefficients float32 Halide constants)."""
    c = [const(v) for v in ERF_A]
    t = 1.0 / (1.0 + const(ERF_P) * a)
    poly = t * (c[0] + t * (c[1] + t * (c[2] + t * (c[3] + t * c[4]))))
    return 1.0 - poly * exp(-a * a)


def numpy_inplace(attrs: dict[str, Any], out: np.ndarray) -> None:
    """`out` with the activation applied in place; NaN and +-Inf as IEEE arithmetic gives them,
    which is what ONNX Runtime computes (no warnings: they are expected values, not accidents)."""
    with np.errstate(all="ignore"):
        _numpy_inplace(attrs, out)


def _numpy_inplace(attrs: dict[str, Any], out: np.ndarray) -> None:
    name = attrs.get("activation")
    if name == "relu":
        np.maximum(out, 0, out=out)
    elif name == "clip":
        np.clip(out, *clip_range(attrs), out=out)
    elif name == "sigmoid":
        out[...] = 1.0 / (1.0 + np.exp(-out))
    elif name == "silu":
        out *= 1.0 / (1.0 + np.exp(-out))
    elif name == "hardsigmoid":
        np.clip(out * attrs["hardsigmoid_alpha"] + attrs["hardsigmoid_beta"], 0.0, 1.0, out=out)
    elif name == "hardswish":
        out *= np.clip(out * (1.0 / 6.0) + 0.5, 0.0, 1.0)
    elif name == "gelu":
        scaled = out * np.float32(np.sqrt(0.5))
        out *= 0.5 * (1.0 + np.copysign(_erf_magnitude(np.abs(scaled), np.exp), scaled))


def torch_inplace(attrs: dict[str, Any], out) -> None:
    import torch

    name = attrs.get("activation")
    if name == "relu":
        out.relu_()
    elif name == "clip":
        out.clamp_(*clip_range(attrs))
    elif name == "sigmoid":
        out.sigmoid_()
    elif name == "silu":
        out.mul_(out.sigmoid())
    elif name == "hardsigmoid":
        out.mul_(attrs["hardsigmoid_alpha"]).add_(attrs["hardsigmoid_beta"]).clamp_(0.0, 1.0)
    elif name == "hardswish":
        out.mul_((out * (1.0 / 6.0) + 0.5).clamp_(0.0, 1.0))
    elif name == "gelu":
        out.copy_(torch.nn.functional.gelu(out))


def onnx_nodes(attrs: dict[str, Any], source: str, target: str, prefix: str) -> list[NodeProto]:
    """Standard ONNX nodes computing `target` = activation(`source`)."""
    from onnx import helper  # here, not above: loading and running a plan never imports onnx

    name = attrs["activation"]
    if name in ("relu", "sigmoid", "hardswish"):
        return [helper.make_node(DISPLAY[name], [source], [target], name=f"{prefix}/{name}")]
    if name == "hardsigmoid":
        alpha, beta = attrs["hardsigmoid_alpha"], attrs["hardsigmoid_beta"]
        return [helper.make_node("HardSigmoid", [source], [target], name=f"{prefix}/{name}", alpha=alpha, beta=beta)]
    if name == "gelu":  # 0.5 x (1 + erf(x / sqrt 2)), as the exporter writes it before opset 20
        half, one, root = (f"{target}__{n}" for n in ("half", "one", "root2"))
        constants = ((half, 0.5), (one, 1.0), (root, np.sqrt(2.0)))
        steps = ("scaled", "erf", "plus", "times")
        scaled, erf, plus, times = (f"{target}__{n}" for n in steps)
        return [
            *[_constant(n, v) for n, v in constants],
            helper.make_node("Div", [source, root], [scaled], name=f"{prefix}/gelu_div"),
            helper.make_node("Erf", [scaled], [erf], name=f"{prefix}/gelu_erf"),
            helper.make_node("Add", [erf, one], [plus], name=f"{prefix}/gelu_add"),
            helper.make_node("Mul", [source, plus], [times], name=f"{prefix}/gelu_mul"),
            helper.make_node("Mul", [times, half], [target], name=f"{prefix}/gelu_half"),
        ]
    if name == "silu":
        gate = f"{target}__sigmoid"
        return [
            helper.make_node("Sigmoid", [source], [gate], name=f"{prefix}/sigmoid"),
            helper.make_node("Mul", [source, gate], [target], name=f"{prefix}/silu"),
        ]
    lo, hi = f"{target}__lo", f"{target}__hi"
    low, high = clip_range(attrs)
    return [
        _constant(lo, low),
        _constant(hi, high),
        helper.make_node("Clip", [source, lo, hi], [target], name=f"{prefix}/clip"),
    ]


def _constant(name: str, value: float) -> NodeProto:
    from onnx import helper, numpy_helper

    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(value, np.float32)))


def _clip_bounds(attrs, constants, inputs) -> tuple[float, float] | None:
    if "min" in attrs or "max" in attrs:  # opset < 11
        return float(attrs.get("min", -FLOAT_MAX)), float(attrs.get("max", FLOAT_MAX))
    bounds = []
    for position, default in ((1, -FLOAT_MAX), (2, FLOAT_MAX)):
        name = inputs[position] if len(inputs) > position else ""
        if not name:
            bounds.append(default)
        elif name in constants:
            bounds.append(float(constants[name]))
        else:
            return None
    return bounds[0], bounds[1]
