"""Resize of the H and W axes of an NCHW tensor: nearest or (bi)linear, with ONNX's coordinate modes.

Each output row and column maps back to a source coordinate (half_pixel, pytorch_half_pixel,
asymmetric or align_corners), computed once at plan time into small index tables; nearest
rounds it as `nearest_mode` says, linear blends the two neighbours per axis (coordinates clamped
to the image, as ONNX Runtime does). The output row is vectorized; on blocked NCHW[b]c values
(HRNet's and FPN's upsampled branches) a vector of b channels is.
"""

from __future__ import annotations

import halide as hl
import numpy as np

from woodpecker.graph.passes.layout import is_spatial_resize
from woodpecker.kernels.base import is_float32
from woodpecker.kernels.halide.common import Definition, HalideImplementation, vector_widths
from woodpecker.kernels.workload import Workload
from woodpecker.search.space import Config, ConfigSpace, Knob

COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


class HalideResize(HalideImplementation):
    name = "halide.resize"

    def matches(self, workload: Workload) -> bool:
        node, attrs = workload.node, workload.node.attrs
        if node.op != "Resize" or not is_float32(workload) or not is_spatial_resize(workload.as_graph(), node):
            return False
        return (
            len(workload.blocks) == 1  # blocked alike, or plain
            and attrs.get("coordinate_transformation_mode", "half_pixel") in COORDINATE_MODES
            and attrs.get("nearest_mode", "round_prefer_floor") in NEAREST_MODES
        )

    def space(self, workload: Workload) -> ConfigSpace:
        if workload.blocked:  # vectors of a block's channels
            return ConfigSpace()
        width = workload.output_shape[3]
        return ConfigSpace((Knob("vec", (1, *vector_widths())),), lambda cfg: cfg["vec"] <= width)

    def define(self, workload: Workload, config: Config) -> Definition:
        node = workload.node
        _, _, h_in, w_in = workload.input_shape(0)
        _, _, h_out, w_out = workload.output_shape
        scale_y, scale_x = _scales(workload)
        x, y, c, n, k = hl.Var("x"), hl.Var("y"), hl.Var("c"), hl.Var("n"), hl.Var("k")
        block = workload.block(node.inputs[0])
        inp = hl.ImageParam(hl.Float(32), 5 if block else 4, "input")
        dims = [c, x, y, k, n] if block else [x, y, c, n]  # Halide's view of (N, C/b, H, W, b) or (N, C, H, W)

        def at(column, row):
            return inp[c, column, row, k, n] if block else inp[column, row, c, n]

        # Source positions per output row and column, computed once at plan time in float32 as
        # ONNX Runtime computes them (Halide would turn x / scale into x * (1 / scale), which
        # moves coordinates lying exactly on nearest's .5 rounding boundary).
        rows = _source(node.attrs, h_in, h_out, scale_y)
        columns = _source(node.attrs, w_in, w_out, scale_x)

        # The algorithm
        out = hl.Func("resize")
        if node.attrs.get("mode", "nearest") == "nearest":
            mode = node.attrs.get("nearest_mode", "round_prefer_floor")
            tables = [_nearest(columns, mode, w_in), _nearest(rows, mode, h_in)]
            sx, sy = (hl.ImageParam(hl.Int(32), 1, name) for name in ("source_x", "source_y"))
            out[dims] = at(_within(sx[x], w_in), _within(sy[y], h_in))
            params = [inp, sx, sy]
        else:
            (x0, x1, wx), (y0, y1, wy) = _linear(columns, w_in), _linear(rows, h_in)
            tables = [x0, x1, wx, y0, y1, wy]
            px0, px1, py0, py1 = (hl.ImageParam(hl.Int(32), 1, name) for name in ("x0", "x1", "y0", "y1"))
            pwx, pwy = hl.ImageParam(hl.Float(32), 1, "wx"), hl.ImageParam(hl.Float(32), 1, "wy")
            xs = [_within(p[x], w_in) for p in (px0, px1)]
            ys = [_within(p[y], h_in) for p in (py0, py1)]
            top = at(xs[0], ys[0]) * (1.0 - pwx[x]) + at(xs[1], ys[0]) * pwx[x]
            bottom = at(xs[0], ys[1]) * (1.0 - pwx[x]) + at(xs[1], ys[1]) * pwx[x]
            # Strict: fast math may rewrite a * (1 - w) + b * w as a + w * (b - a), Inf + -Inf at an Inf.
            out[dims] = hl.strict_float(top * (1.0 - pwy[y]) + bottom * pwy[y])
            params = [inp, px0, px1, pwx, py0, py1, pwy]

        # How to schedule it
        if block:
            out.bound(c, 0, block).vectorize(c)
        elif config["vec"] > 1:
            out.vectorize(x, config["vec"], hl.TailStrategy.GuardWithIf)
        out.parallel(y if h_out > 1 else k if block else c)
        return Definition(out, params, tables)


def _within(index: hl.Expr, size: int) -> hl.Expr:
    """A table entry clamped to the image: already true, but Halide must see it to bound the reads."""
    return hl.clamp(index, 0, size - 1)


def _scales(workload: Workload) -> tuple[float, float]:
    """The H and W scales ONNX's coordinate transform uses: the `scales` input when given, else out / in."""
    node = workload.node
    scales = node.inputs[2] if len(node.inputs) > 2 else ""
    if scales and workload.constants[scales].size:
        values = np.asarray(workload.constants[scales], np.float32).ravel()
        return float(values[2]), float(values[3])
    (_, _, h_in, w_in), (_, _, h_out, w_out) = workload.input_shape(0), workload.output_shape
    return h_out / h_in, w_out / w_in


def _source(attrs: dict, size_in: int, size_out: int, scale: float) -> np.ndarray:
    """The source coordinate of every output index along one axis (float32, unclamped)."""
    mode = attrs.get("coordinate_transformation_mode", "half_pixel")
    index, scale = np.arange(size_out, dtype=np.float32), np.float32(scale)
    if mode == "align_corners":
        step = np.float32((size_in - 1) / (size_out - 1)) if size_out > 1 else np.float32(0)
        return index * step
    if mode == "asymmetric":
        return index / scale
    if mode == "pytorch_half_pixel" and size_out == 1:
        return np.zeros(1, np.float32)
    return (index + np.float32(0.5)) / scale - np.float32(0.5)


def _nearest(source: np.ndarray, mode: str, size_in: int) -> np.ndarray:
    rounded = {
        "round_prefer_floor": np.ceil(source - np.float32(0.5)),
        "round_prefer_ceil": np.floor(source + np.float32(0.5)),
        "floor": np.floor(source),
        "ceil": np.ceil(source),
    }[mode]
    return np.clip(rounded, 0, size_in - 1).astype(np.int32)


def _linear(source: np.ndarray, size_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both neighbours and the second one's weight, coordinates clamped to the image. Where both are
    one edge pixel each weighs 0.5, as in ONNX Runtime: an Inf there stays Inf (not Inf * 0 = NaN)."""
    clamped = np.clip(source, 0, size_in - 1)
    first = np.floor(clamped).astype(np.int32)
    second = np.minimum(first + 1, size_in - 1).astype(np.int32)
    weight = np.where(first == second, np.float32(0.5), clamped - first).astype(np.float32)
    return first, second, weight
