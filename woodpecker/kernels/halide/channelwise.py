"""Ops that combine a feature map with one number per channel, plain or blocked.

- Add / Sub / Mul / Div of x (N, C, H, W) and s (N, C, 1, 1) computed at run time: the
  scaling of a squeeze-and-excitation block (EfficientNet, MobileNetV3, RegNetY);
- the same with a constant per-channel operand, and BatchNormalization that no convolution
  precedes (DenseNet's pre-activation): both become x * scale[c] + shift[c] at plan time.
A fused activation (`ops.activations`) is applied on the result. Each element is read once
and written once (tails are guarded), so the executor may run these in place on x.
"""

from __future__ import annotations

import halide as hl
import numpy as np

from woodpecker.graph.passes.layout import is_per_channel
from woodpecker.kernels.base import Capabilities, is_float32
from woodpecker.kernels.halide.common import Definition, HalideImplementation, apply_activation, vector_widths
from woodpecker.kernels.workload import Workload
from woodpecker.search.space import Config, ConfigSpace, Knob

BINARY = {"Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b, "Div": lambda a, b: a / b}


class HalideChannelwise(HalideImplementation):
    name = "halide.channelwise"
    capabilities = Capabilities(compiled=True, strided_outputs=True, in_place=True)

    def matches(self, workload: Workload) -> bool:
        node = workload.node
        if not is_float32(workload) or len(workload.output_shape) != 4 or len(workload.dynamic_inputs) == 0:
            return False
        full_at = _full_position(workload)
        if full_at is None or workload.block(node.inputs[full_at]) != workload.block(node.outputs[0]):
            return False
        full = node.inputs[full_at]
        if node.op == "BatchNormalization":
            return not node.attrs.get("training_mode", 0) and all(n in workload.constants for n in node.inputs[1:5])
        if node.op not in BINARY or len(node.inputs) != 2:
            return False
        other = node.inputs[1 - full_at]
        n, c = workload.output_shape[:2]
        if other in workload.constants:  # folded to scale and shift; c / x is not affine
            return is_per_channel(workload.constants[other].shape, c) and not (node.op == "Div" and full_at == 1)
        return workload.shape(other) == (n, c, 1, 1) and workload.block(other) == workload.block(full)

    def space(self, workload: Workload) -> ConfigSpace:
        width = workload.output_shape[3]
        if workload.blocked:  # the vector is a channel block
            knobs = (Knob("unroll", (1, 2, 4)), Knob("parallel", ("c", "y")))
            return ConfigSpace(knobs, lambda cfg: cfg["unroll"] <= width)
        knobs = (Knob("vec", vector_widths()), Knob("parallel", ("c", "y")))
        return ConfigSpace(knobs, lambda cfg: cfg["vec"] <= max(width, 4))

    def define(self, workload: Workload, config: Config) -> Definition:
        node = workload.node
        block = workload.block(node.outputs[0])
        dims = 5 if block else 4
        x, y, c, n, ci = hl.Var("x"), hl.Var("y"), hl.Var("c"), hl.Var("n"), hl.Var("ci")
        full_param = hl.ImageParam(hl.Float(32), dims, "input")
        # Stored coordinates: blocked (ci, x, y, c, n) with c the block index, plain (x, y, c, n).
        at = (ci, x, y, c, n) if block else (x, y, c, n)
        channel = c * block + ci if block else c
        value = full_param[at]
        params, constants = [full_param], []

        # The algorithm
        affine = _affine(workload)
        if affine is not None:
            scale, shift = (hl.ImageParam(hl.Float(32), 1, name) for name in ("scale", "shift"))
            params += [scale, shift]
            constants = [affine[0], affine[1]]
            result = value * scale[channel] + shift[channel]
        else:  # one parameter per use, in the node's input order
            other_param = hl.ImageParam(hl.Float(32), dims, "other")
            full_at = _full_position(workload)
            params = [full_param, other_param] if full_at == 0 else [other_param, full_param]
            other = other_param[(ci, 0, 0, c, n) if block else (0, 0, c, n)]
            result = BINARY[node.op](value, other) if full_at == 0 else BINARY[node.op](other, value)
        out = hl.Func(node.op)
        out[at] = apply_activation(workload, result)

        # How to schedule it (guarded tails: running in place must compute each element once)
        guard = hl.TailStrategy.GuardWithIf
        xo, xi = hl.Var("xo"), hl.Var("xi")
        if block:
            out.bound(ci, 0, block).vectorize(ci)
            if config["unroll"] > 1:
                out.split(x, xo, xi, config["unroll"], guard).unroll(xi)
        else:
            out.vectorize(x, config["vec"], guard)
        out.parallel(c if config["parallel"] == "c" or workload.output_shape[2] == 1 else y)
        return Definition(out, params, constants)


def _full_position(workload: Workload) -> int | None:
    """Which input is the whole feature map (the first run-time input shaped like the output)."""
    node = workload.node
    return next(
        (
            i
            for i, name in enumerate(node.inputs)
            if name and name not in workload.constants and workload.shape(name) == workload.output_shape
        ),
        None,
    )


def _affine(workload: Workload) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift), one per channel, when the op is x * scale + shift with constants; else None."""
    node = workload.node
    channels = workload.output_shape[1]
    if node.op == "BatchNormalization":
        gamma, beta, mean, var = (workload.constants[n].astype(np.float64) for n in node.inputs[1:5])
        scale = gamma / np.sqrt(var + node.attrs.get("epsilon", 1e-5))
        return scale.astype(np.float32), (beta - mean * scale).astype(np.float32)
    constant = next((n for n in node.inputs if n in workload.constants), None)
    if constant is None:
        return None
    per_channel = np.broadcast_to(workload.constants[constant], (1, channels, 1, 1)).reshape(channels)
    per_channel = per_channel.astype(np.float32)
    ones, zeros = np.ones(channels, np.float32), np.zeros(channels, np.float32)
    constant_first = node.inputs[0] == constant
    if node.op == "Add":
        return ones, per_channel
    if node.op == "Sub":
        return (-ones, per_channel) if constant_first else (ones, -per_channel)
    if node.op == "Mul":
        return per_channel, zeros
    return 1.0 / per_channel, zeros  # x / constant
