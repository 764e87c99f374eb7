"""Check a plan against ONNX Runtime on the original model, on fresh random inputs.

A final-output tolerance alone is a weak test on random-weight models (their outputs barely
move with the input), so the *difference* between the outputs for two inputs is compared too:
a plan that ignores its input fails that check (error 1.0). Its tolerance is looser than the
outputs': where the outputs move little (ShuffleNet moves them by about 5e-5 of their size),
rounding at 1e-7 of the output is already 2e-3 of the difference.

A third input holds one NaN in each float input: where ONNX Runtime's outputs then hold NaN (or
+-Inf), the plan's must hold them at the same places (a fused Relu that turned NaN into 0 fails
here). In a model with max pooling or max/min reductions ONNX Runtime keeps or drops a NaN
depending on its place in the window, and the plan may hold NaN where it shows a number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from woodpecker.graph.onnx_import import with_static_inputs
from woodpecker.kernels.library.onnxruntime import session_options
from woodpecker.measure.timing import ORDER_DEPENDENT_NAN_OPS, nonfinite_mismatch, relative_error

OUTPUT_TOLERANCE = 1e-4
DIFFERENCE_TOLERANCE = 1e-2


@dataclass(frozen=True)
class Verification:
    output_error: float
    difference_error: float
    # False when ONNX Runtime's outputs are the same for both inputs (e.g. a zero-initialized
    # classifier): the comparison then cannot tell a wrong kernel from a right one.
    input_sensitive: bool = True
    nan_mismatch: str | None = None  # how the plan treated a NaN input differently, if it did
    nan_checked: bool = True  # False when ONNX Runtime's outputs held no NaN for the NaN input

    @property
    def ok(self) -> bool:
        return (
            self.output_error <= OUTPUT_TOLERANCE
            and self.difference_error <= DIFFERENCE_TOLERANCE
            and self.nan_mismatch is None
        )

    def to_json(self) -> dict:
        return {
            "output_error": self.output_error,
            "difference_error": self.difference_error,
            "input_sensitive": self.input_sensitive,
            "nan_checked": self.nan_checked,
        }

    def describe(self) -> str:
        text = (
            f"max relative error {self.output_error:.2e} (limit {OUTPUT_TOLERANCE:.0e}), "
            f"input-difference error {self.difference_error:.2e} (limit {DIFFERENCE_TOLERANCE:.0e})"
        )
        return text + (f", with a NaN in the input: {self.nan_mismatch}" if self.nan_mismatch else "")


def random_feeds(
    specs: dict[str, tuple[tuple[int, ...], str]], seed: int, bounds: dict[str, int] | None = None
) -> dict[str, np.ndarray]:
    """Standard normal floats; integers in [0, bound) (token ids below the embedding's rows, see
    `index_bounds`), 0 and 1 without a bound (attention masks); booleans either way."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, (shape, dtype) in specs.items():
        kind = np.dtype(dtype).kind
        if kind in "iu":
            feeds[name] = rng.integers(0, (bounds or {}).get(name, 2), shape).astype(dtype)
        elif kind == "b":
            feeds[name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def index_bounds(graph) -> dict[str, int]:
    """For each integer graph input that indexes a constant table (Gather: an embedding lookup), the
    number of rows it may address."""
    bounds: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "Gather" and node.inputs[1] in graph.inputs and node.inputs[0] in graph.constants:
            rows = graph.constants[node.inputs[0]].shape[node.attrs.get("axis", 0)]
            bounds[node.inputs[1]] = min(rows, bounds.get(node.inputs[1], rows))
    return bounds


def with_nan(feeds: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """`feeds` with one NaN at a random place of each float input."""
    rng = np.random.default_rng(seed)
    salted = {}
    for name, array in feeds.items():
        array = array.copy()
        if array.dtype.kind == "f" and array.size:
            array.reshape(-1)[rng.integers(array.size)] = np.nan
        salted[name] = array
    return salted


def verify(plan, model: onnx.ModelProto, batch: int | None, seed: int = 1234) -> Verification:
    reference = ort.InferenceSession(
        with_static_inputs(model, batch).SerializeToString(), session_options(), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in reference.get_outputs()]
    bounds = index_bounds(plan.graph)
    feeds = [random_feeds(plan.input_specs, seed + k, bounds) for k in range(3)]
    feeds[2] = with_nan(feeds[2], seed)
    expected = [dict(zip(names, reference.run(None, f))) for f in feeds]
    actual = [plan.run(f) for f in feeds]
    nan_expected, nan_actual = expected.pop(), actual.pop()
    spread = any(node.op_type in ORDER_DEPENDENT_NAN_OPS for node in model.graph.node)
    nan_checked = any(np.isnan(a).any() for a in nan_expected.values() if a.dtype.kind == "f")
    mismatches = [nonfinite_mismatch(nan_actual[n], nan_expected[n], spread) for n in names] if nan_checked else []
    nan_mismatch = next((f"output '{n}': {m}" for n, m in zip(names, mismatches) if m), None)
    output_error = max(relative_error(a[n], e[n]) for a, e in zip(actual, expected) for n in e)
    with np.errstate(all="ignore"):  # Inf - Inf where a model overflows: compared as NaN, no warning
        difference_error = max(
            relative_error(actual[0][n] - actual[1][n], expected[0][n] - expected[1][n]) for n in expected[0]
        )
    sensitive = any(not np.array_equal(expected[0][n], expected[1][n]) for n in expected[0])
    return Verification(output_error, difference_error, sensitive, nan_mismatch, nan_checked)
