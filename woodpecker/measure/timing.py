"""Check a kernel against a reference on random input, then time it. Runs inside the worker."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from woodpecker.kernels.workload import Workload

REL_TOLERANCE = 1e-4


@dataclass(frozen=True)
class TimingSettings:
    warmup: int = 2
    min_runs: int = 5
    max_runs: int = 200
    min_seconds: float = 0.1
    max_seconds: float = 1.0


def random_inputs(workload: Workload, seed: int) -> list[np.ndarray]:
    """Fresh random values for the node's run-time inputs (never zeros)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for name in workload.dynamic_inputs:
        value = workload.values[name]
        if np.issubdtype(np.dtype(value.dtype), np.floating):
            arrays.append(rng.standard_normal(value.shape).astype(value.dtype))
        else:
            arrays.append(rng.integers(0, 4, value.shape).astype(value.dtype))
    return arrays


def empty_outputs(workload: Workload) -> list[np.ndarray]:
    """Outputs pre-filled with a sentinel (NaN) so a kernel that skips writes cannot pass."""
    outputs = []
    for name in workload.node.outputs:
        if name:
            value = workload.values[name]
            fill = np.nan if np.issubdtype(np.dtype(value.dtype), np.floating) else -7
            outputs.append(np.full(value.shape, fill, value.dtype))
    return outputs


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |a - e| / max |e|: NaN anywhere (an unwritten sentinel) counts as infinitely wrong."""
    if actual.shape != expected.shape:
        return float("inf")
    if actual.size == 0:
        return 0.0
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    if not np.all(np.isfinite(diff)):
        return float("inf")
    return float(diff.max() / max(float(np.abs(expected).max()), 1e-12))


def check(kernel: Callable, inputs: list[np.ndarray], reference: list[np.ndarray]) -> float:
    outputs = [np.full_like(r, np.nan) if r.dtype.kind == "f" else np.full_like(r, -7) for r in reference]
    kernel(inputs, outputs)
    return max((relative_error(o, r) for o, r in zip(outputs, reference)), default=0.0)


def time_kernel(
    kernel: Callable, inputs: list[np.ndarray], outputs: list[np.ndarray], settings: TimingSettings
) -> tuple[float, ...]:
    for _ in range(settings.warmup):
        kernel(inputs, outputs)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < settings.max_runs:
        t0 = time.perf_counter()
        kernel(inputs, outputs)
        times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        if (len(times) >= settings.min_runs and elapsed >= settings.min_seconds) or elapsed >= settings.max_seconds:
            break
    return tuple(times)
