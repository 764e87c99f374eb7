"""Check a plan against ONNX Runtime on the original model, on fresh random inputs.

A final-output tolerance alone is a weak test on random-weight models (their outputs barely
move with the input), so the *difference* between the outputs for two inputs is compared too:
a plan that ignores its input fails that check (error 1.0). Its tolerance is looser than the
outputs': where the outputs move little (ShuffleNet moves them by about 5e-5 of their size),
rounding at 1e-7 of the output is already 2e-3 of the difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from woodpecker.graph.onnx_import import with_static_inputs
from woodpecker.kernels.library.onnxruntime import session_options
from woodpecker.measure.timing import relative_error

OUTPUT_TOLERANCE = 1e-4
DIFFERENCE_TOLERANCE = 1e-2


@dataclass(frozen=True)
class Verification:
    output_error: float
    difference_error: float
    # False when ONNX Runtime's outputs are the same for both inputs (e.g. a zero-initialized
    # classifier): the comparison then cannot tell a wrong kernel from a right one.
    input_sensitive: bool = True

    @property
    def ok(self) -> bool:
        return self.output_error <= OUTPUT_TOLERANCE and self.difference_error <= DIFFERENCE_TOLERANCE

    def describe(self) -> str:
        return (
            f"max relative error {self.output_error:.2e} (limit {OUTPUT_TOLERANCE:.0e}), "
            f"input-difference error {self.difference_error:.2e} (limit {DIFFERENCE_TOLERANCE:.0e})"
        )


def random_feeds(specs: dict[str, tuple[tuple[int, ...], str]], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(dtype) for name, (shape, dtype) in specs.items()}


def verify(plan, model: onnx.ModelProto, batch: int | None, seed: int = 1234) -> Verification:
    reference = ort.InferenceSession(
        with_static_inputs(model, batch).SerializeToString(), session_options(), providers=["CPUExecutionProvider"]
    )
    feeds = [random_feeds(plan.input_specs, seed), random_feeds(plan.input_specs, seed + 1)]
    expected = [dict(zip([o.name for o in reference.get_outputs()], reference.run(None, f))) for f in feeds]
    actual = [plan.run(f) for f in feeds]
    output_error = max(relative_error(a[n], e[n]) for a, e in zip(actual, expected) for n in e)
    difference_error = max(
        relative_error(actual[0][n] - actual[1][n], expected[0][n] - expected[1][n]) for n in expected[0]
    )
    sensitive = any(not np.array_equal(expected[0][n], expected[1][n]) for n in expected[0])
    return Verification(output_error, difference_error, sensitive)
