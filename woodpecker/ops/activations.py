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
    """`x` (a Halide expression) with the activation applied."""
    import halide as hl

    name = attrs.get("activation")
    if name == "relu":
        return hl.max(x, 0.0)
    if name == "clip":
        return hl.clamp(x, hl.f32(max(attrs["clip_min"], -FLOAT_MAX)), hl.f32(min(attrs["clip_max"], FLOAT_MAX)))
    if name == "sigmoid":
        return 1.0 / (1.0 + hl.exp(-x))
    if name == "silu":
        return x / (1.0 + hl.exp(-x))
    if name == "hardsigmoid":
        return hl.clamp(x * hl.f32(attrs["hardsigmoid_alpha"]) + hl.f32(attrs["hardsigmoid_beta"]), 0.0, 1.0)
    if name == "hardswish":
        return x * hl.clamp(x * hl.f32(1.0 / 6.0) + 0.5, 0.0, 1.0)
    if name == "gelu":
        scaled = x * hl.f32(np.sqrt(0.5))
        magnitude = _erf_magnitude(hl.abs(scaled), hl.exp, hl.f32)
        return 0.5 * x * (1.0 + hl.select(scaled < 0, -magnitude, magnitude))
    return x


def _erf_magnitude(a, exp, const=float):
    """erf(a) for a >= 0 by Abramowitz & Stegun; plain arithmetic, so Halide and NumPy share it
    (`const` makes the coefficients float32 Halide constants)."""
    c = [const(v) for v in ERF_A]
    t = 1.0 / (1.0 + const(ERF_P) * a)
    poly = t * (c[0] + t * (c[1] + t * (c[2] + t * (c[3] + t * c[4]))))
    return 1.0 - poly * exp(-a * a)


def numpy_inplace(attrs: dict[str, Any], out: np.ndarray) -> None:
    name = attrs.get("activation")
    if name == "relu":
        np.maximum(out, 0, out=out)
    elif name == "clip":
        np.clip(out, attrs["clip_min"], attrs["clip_max"], out=out)
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
        out.clamp_(attrs["clip_min"], attrs["clip_max"])
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
    return [
        _constant(lo, attrs["clip_min"]),
        _constant(hi, attrs["clip_max"]),
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
