"""Shared pieces of the Halide kernels: definitions, JIT compilation, argument passing, fused epilogues."""

from __future__ import annotations

from dataclasses import dataclass, field

import halide as hl
import numpy as np

from woodpecker.kernels.base import Capabilities, is_float32
from woodpecker.kernels.workload import Workload
from woodpecker.ops import activations
from woodpecker.runtime.kernel_library import as_views

# The element types kernels read and write besides float32 (bool is one byte, as NumPy's).
HALIDE_TYPES = {"float32": hl.Float(32), "int32": hl.Int(32), "int64": hl.Int(64), "bool": hl.Bool()}


def jit_target() -> hl.Target:
    """The host target (AVX-512, AVX2, NEON...); HL_JIT_TARGET overrides it."""
    return hl.get_jit_target_from_environment()


def native_vector_width() -> int:
    """Float lanes of one vector register of the target (16 with AVX-512, 8 with AVX2, 4 with NEON)."""
    return jit_target().natural_vector_size(hl.Float(32))


def max_accumulators() -> int:
    """Vector registers a register tile may hold, leaving room for its loads and broadcasts: 24 of
    AVX-512's (and NEON's) 32; 10 of AVX2's 16 (tiles of 12-16 vectors spill there and run
    1.2-1.9x slower than 8-10)."""
    target = jit_target()
    wide_file = target.arch != hl.TargetArch.X86 or target.has_feature(hl.TargetFeature.AVX512)
    return 24 if wide_file else 10


def vector_widths() -> tuple[int, ...]:
    """Float lanes worth trying: the native width, half of it, and 4 for narrow layers."""
    native = native_vector_width()
    return tuple(sorted({4, max(4, native // 2), native}))


@dataclass
class Definition:
    """A scheduled Halide pipeline before compilation: what JIT and ahead-of-time builds share."""

    output: hl.Func
    params: list[hl.ImageParam]  # run-time inputs first, then one per constant array
    constants: list[np.ndarray] = field(default_factory=list)  # packed once, at plan time
    # Inputs and outputs are passed as views with this many dimensions: 0 as stored, 1 flat
    # (element-wise kernels), 2 as rows of the last axis (dense layers, normalizations), 3 as a
    # batch of matrices (batched MatMul).
    flatten: int = 0

    def arguments(self) -> list[hl.Argument]:
        return [hl.Argument(p) for p in self.params]


class HalideImplementation:
    """Base of the Halide kernel families: `define` the pipeline, `build` JIT-compiles it."""

    name = "halide"
    capabilities = Capabilities(compiled=True, strided_outputs=True)
    revision = 1

    def define(self, workload: Workload, config: dict) -> Definition:
        raise NotImplementedError

    def build(self, workload: Workload, config: dict) -> HalideKernel:
        return jit(self.define(workload, config))


class HalideKernel:
    """A JIT-compiled pipeline plus its constant buffers.

    Called with the node's run-time inputs and preallocated outputs (NumPy arrays, which
    Halide sees with axes reversed: NCHW arrives as x, y, c, n).
    """

    def __init__(self, callable_: hl.Callable, definition: Definition):
        self._callable = callable_
        self._flatten = definition.flatten
        self._constants = [np.ascontiguousarray(c) for c in definition.constants]  # keep memory alive
        self._constant_buffers = [hl.Buffer(c) for c in self._constants]

    def __call__(self, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> None:
        inputs, outputs = as_views(inputs, self._flatten), as_views(outputs, self._flatten)
        self._callable(*[hl.Buffer(a) for a in inputs], *self._constant_buffers, *[hl.Buffer(o) for o in outputs])


def jit(definition: Definition) -> HalideKernel:
    callable_ = hl.Pipeline(definition.output).compile_to_callable(definition.arguments(), jit_target())
    return HalideKernel(callable_, definition)


def apply_activation(workload: Workload, value: hl.Expr) -> hl.Expr:
    return activations.halide(workload.node.attrs, value)


def divisors(n: int, limit: int) -> tuple[int, ...]:
    return tuple(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def fix_layout(param: hl.ImageParam, shape: tuple[int, ...]) -> None:
    """`param` is a dense C-order array of `shape` (the packed constants, a whole input buffer):
    strides and extents known at compile time become immediate offsets, freeing address registers."""
    stride = 1
    for i, extent in enumerate(reversed(tuple(shape))):
        param.dim(i).set_bounds(0, extent).set_stride(stride)
        stride *= extent


def is_constant_conv(workload: Workload) -> bool:
    """A 2-D float32 Conv with constant weights and bias and explicit padding: what every generated
    convolution kernel needs before its own conditions."""
    node = workload.node
    return (
        node.op == "Conv"
        and len(workload.input_shape(0)) == 4
        and is_float32(workload)
        and node.inputs[1] in workload.constants
        and node.attrs.get("auto_pad", "NOTSET") == "NOTSET"
        and (not workload.has_input(2) or node.inputs[2] in workload.constants)
    )


def conv_bias(workload: Workload, index: int, channels: int) -> np.ndarray:
    """A Conv's bias at input `index` as float32, or zeros where the node has none."""
    if workload.has_input(index):
        return workload.constants[workload.node.inputs[index]].astype(np.float32)
    return np.zeros(channels, np.float32)


def depthwise_constants(workload: Workload, block: int, weight: int, bias: int) -> tuple[np.ndarray, np.ndarray]:
    """A depthwise Conv's weights (inputs[`weight`]) packed (C/b, KH, KW, b) in the order the
    kernels read them, and its bias (inputs[`bias`], zeros if none)."""
    array = workload.constants[workload.node.inputs[weight]].astype(np.float32)
    channels, _, kh, kw = array.shape
    packed = np.ascontiguousarray(array.reshape(channels // block, block, kh, kw).transpose(0, 2, 3, 1))
    return packed, conv_bias(workload, bias, channels)


def row_tile(width: int, vectors: int = 1) -> int:
    """Pixels per register tile along a row of `vectors` accumulators each: 7 where 7 divides the row
    and 8 does not (7, 14, 28, 35 wide: no partial tile), else 8 (56 and 112 wide too); where 8 do not
    fit the register file, the widest of 5 and 4 that divides the row, else 5."""
    if 8 * vectors <= max_accumulators():
        return 7 if width % 7 == 0 and width % 8 != 0 else 8
    fitting = [t for t in (5, 4) if t * vectors <= max_accumulators()] or [max(1, max_accumulators() // vectors)]
    return next((t for t in fitting if width % t == 0), fitting[0])


NAN = float("nan")
is_nan = activations.halide_is_nan


def is_nonfinite(value: hl.Expr) -> hl.Expr:
    """NaN or +-Inf, told by the exponent bits (see activations.halide_is_nan)."""
    return (hl.reinterpret(hl.UInt(32), value) & 0x7F800000) == 0x7F800000


def nan_max(a: hl.Expr, b: hl.Expr) -> hl.Expr:
    """max(a, b), NaN where either is NaN, as ONNX Runtime's Max and NumPy's maximum: the max Halide
    compiles (with fast-math flags) returns the other operand."""
    return hl.select(is_nan(a) | is_nan(b), hl.f32(NAN), hl.max(a, b))


def nan_min(a: hl.Expr, b: hl.Expr) -> hl.Expr:
    """min(a, b), NaN where either is NaN (see nan_max)."""
    return hl.select(is_nan(a) | is_nan(b), hl.f32(NAN), hl.min(a, b))


def window_max(taps: list[hl.Expr]) -> hl.Expr:
    """The max of a pooling window's taps, NaN if any is NaN (NumPy's and PyTorch's max pooling; ONNX
    Runtime's keeps or drops a NaN depending on where it falls in the window, see docs)."""
    value, nan = taps[0], is_nan(taps[0])
    for tap in taps[1:]:
        value, nan = hl.max(value, tap), nan | is_nan(tap)
    return hl.select(nan, hl.f32(NAN), value)


def add(a: hl.Expr, b: hl.Expr) -> hl.Expr:
    return a + b


def row_reduce(
    name: str, value_at, width: int, lanes: int, combine, initial: float, row: hl.Var | list[hl.Var]
) -> tuple[hl.Func, hl.Func]:
    """(result, partial): `value_at(column)` reduced over a row with `combine` from `initial`, first
    into `lanes` partial results (a vector: column c goes to lane c % lanes, over the columns that
    fill whole vectors), then across the lanes and the leftover columns. `row`: the row's Var, or
    several (rows of a higher-dimensional tensor)."""
    rows = row if isinstance(row, list) else [row]
    start = hl.f32(initial)
    lane = hl.Var(f"{name}_lane")
    whole = width // lanes * lanes
    partial, result = hl.Func(f"{name}_partial"), hl.Func(name)
    partial[[lane, *rows]] = start
    if whole:
        chunk = hl.RDom([hl.Range(0, whole // lanes)], f"{name}_chunk")
        partial[[lane, *rows]] = combine(partial[[lane, *rows]], value_at(chunk.x * lanes + lane))
    across = hl.RDom([hl.Range(0, lanes)], f"{name}_across")
    result[rows] = start
    result[rows] = combine(result[rows], partial[[across.x, *rows]])
    if whole < width:
        rest = hl.RDom([hl.Range(whole, width - whole)], f"{name}_rest")
        result[rows] = combine(result[rows], value_at(rest.x))
    return result, partial
