"""Check a kernel against a reference on random input, then time it. Runs inside the worker."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from woodpecker.kernels.workload import Workload

REL_TOLERANCE = 1e-4
# Ops whose ONNX Runtime kernels keep or drop a NaN depending on where it falls in the reduction
# (MLAS's vector max returns its second operand when one is NaN); Woodpecker's always keep it.
ORDER_DEPENDENT_NAN_OPS = ("MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin", "ArgMax", "ArgMin")


@dataclass(frozen=True)
class TimingSettings:
    warmup: int = 2
    warmup_seconds: float = 0.05  # and at least this long: the first kernel in a process read ~10% slow
    rounds: int = 3  # the budget below is split into rounds and the best round kept (see time_kernel)
    min_runs: int = 5
    max_runs: int = 200
    min_seconds: float = 0.1
    max_seconds: float = 1.0
    # Weights above this many bytes are evicted from the caches before every timed run (see ColdCaches).
    flush_above_bytes: int = 1 << 20


SCRATCH_CAP = 128 << 20  # bytes written to evict the caches (see ColdCaches)


def last_level_cache_bytes() -> int:
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            text = f.read().strip()
        return int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}[text[-1]]
    except (OSError, ValueError, KeyError):
        return 32 << 20


class ColdCaches:
    """Evicts every cache line before a run, then re-reads the inputs.

    Timed in isolation, a kernel finds its weights in the caches from the previous run; inside a
    plan the other layers' weights have evicted them (ResNet-18 holds 45 MB of weights, this CPU
    32 MB of L3): ResNet-18's 7x7 convolutions ran 1.9x slower in the plan than timed warm.
    TVM's runner flushes the CPU cache for the same reason (`enable_cpu_cache_flush`). The inputs
    are read back afterwards: in a plan they were just written by the previous kernel.
    The scratch is 1.5x the last-level cache, but at most SCRATCH_CAP: a machine here reports a
    300 MB L3, and writing 450 MB took 66-75 ms before every timed run (about 1 s per measured
    configuration of a large layer), while after 128 MB ResNet-18's kernels ran as after 450 MB
    (its 2 MB dense layer 0.27 vs 0.28 ms, 1x1 and 3x3 layers within 3 %, interleaved in one process).
    """

    def __init__(self):
        self._scratch = np.empty(min(last_level_cache_bytes() * 3 // 2, SCRATCH_CAP) // 8, np.float64)

    def __call__(self, inputs: list[np.ndarray]) -> None:
        self._scratch.fill(1.0)
        for array in inputs:
            float(array.sum())


def random_inputs(workload: Workload, seed: int) -> list[np.ndarray]:
    """Fresh random values for the node's run-time inputs (never zeros)."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}  # a value read twice (Add(x, x)) is one array
    for name in dict.fromkeys(workload.dynamic_inputs):
        value = workload.values[name]
        if np.issubdtype(np.dtype(value.dtype), np.floating):
            arrays[name] = rng.standard_normal(value.stored_shape).astype(value.dtype)
        else:
            arrays[name] = rng.integers(0, 4, value.stored_shape).astype(value.dtype)
    return [arrays[name] for name in workload.dynamic_inputs]


def nonfinite_inputs(workload: Workload, seed: int) -> list[np.ndarray]:
    """`random_inputs` with a NaN, a +Inf and a -Inf at random places of each float input: every
    candidate must treat them as ONNX Runtime does (`nonfinite_mismatch`)."""
    arrays = random_inputs(workload, seed)
    rng = np.random.default_rng(seed + 1)
    for array in {id(a): a for a in arrays}.values():
        if array.dtype.kind == "f" and array.size:
            flat = array.reshape(-1)
            places = rng.choice(flat.size, size=min(flat.size, 3), replace=False)
            flat[places] = np.array([np.nan, np.inf, -np.inf], array.dtype)[: len(places)]
    return arrays


def empty_outputs(workload: Workload) -> list[np.ndarray]:
    """Outputs pre-filled with a sentinel (NaN) so a kernel that skips writes cannot pass."""
    outputs = []
    for name in workload.node.outputs:
        if name:
            value = workload.values[name]
            fill = np.nan if np.issubdtype(np.dtype(value.dtype), np.floating) else -7
            outputs.append(np.full(value.stored_shape, fill, value.dtype))
    return outputs


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |a - e| / max |e| over the finite values. NaN and +-Inf count as right where the reference
    holds the same (a mask filled with -Inf, a layer that overflows), and as infinitely wrong
    elsewhere: an output left unwritten (its NaN sentinel) can never pass."""
    if actual.shape != expected.shape:
        return float("inf")
    if actual.size == 0:
        return 0.0
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    finite = np.isfinite(a) & np.isfinite(e)
    if not finite.all():
        same = (a == e) | (np.isnan(a) & np.isnan(e))
        if not np.all(same | finite):
            return float("inf")
    if not finite.any():
        return 0.0
    diff = np.abs(a[finite] - e[finite])
    return float(diff.max() / max(float(np.abs(e[finite]).max()), 1e-12))


def nan_may_spread(op: str, attrs: dict) -> bool:
    """Whether a node reduces with an order-dependent max (a fused MaxPool included)."""
    return op in ORDER_DEPENDENT_NAN_OPS or (attrs.get("pool") or {}).get("op") == "MaxPool"


def nonfinite_mismatch(actual: np.ndarray, expected: np.ndarray, nan_may_spread: bool = False) -> str | None:
    """How `actual` treats NaN and +-Inf differently from `expected`, or None: every NaN of the reference
    must stay NaN, every +-Inf the same infinity, and the finite values agree within REL_TOLERANCE.
    `nan_may_spread`: for max reductions, where ONNX Runtime keeps or drops a NaN depending on its
    place in the window, `actual` may be NaN where the reference is a number (a NaN propagated)."""
    if actual.shape != expected.shape:
        return f"shape {actual.shape} instead of {expected.shape}"
    if expected.dtype.kind != "f":
        return None if np.array_equal(actual, expected) else "different values"
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    lost = np.isnan(e) & ~np.isnan(a)
    if lost.any():
        return f"{int(lost.sum())} NaN of the reference became numbers (e.g. {a[lost][0]:g})"
    added = np.isnan(a) & ~np.isnan(e)
    if added.any() and not nan_may_spread:
        return f"{int(added.sum())} values became NaN (e.g. {e[added][0]:g} expected)"
    both = ~np.isnan(a) & ~np.isnan(e)
    infinite = both & (np.isinf(a) | np.isinf(e))
    if np.any(a[infinite] != e[infinite]):
        where = infinite & (a != e)
        return f"{int(where.sum())} infinities differ (e.g. {a[where][0]:g} instead of {e[where][0]:g})"
    finite = both & ~infinite
    error = relative_error(a[finite], e[finite])
    return None if error <= REL_TOLERANCE else f"max relative error {error:.2e} on the finite values"


def check(kernel: Callable, inputs: list[np.ndarray], reference: list[np.ndarray]) -> float:
    outputs = [np.full_like(r, np.nan) if r.dtype.kind == "f" else np.full_like(r, -7) for r in reference]
    kernel(inputs, outputs)
    return max((relative_error(o, r) for o, r in zip(outputs, reference)), default=0.0)


def check_nonfinite(
    kernel: Callable, inputs: list[np.ndarray], reference: list[np.ndarray], nan_may_spread: bool = False
) -> str | None:
    """Run `kernel` on `nonfinite_inputs` and compare with the reference's outputs (`nonfinite_mismatch`)."""
    outputs = [np.full_like(r, -7) for r in reference]  # not NaN: an unwritten output must not look right
    kernel(inputs, outputs)
    for actual, expected in zip(outputs, reference):
        mismatch = nonfinite_mismatch(actual, expected, nan_may_spread)
        if mismatch:
            return mismatch
    return None


def time_kernel(
    kernel: Callable,
    inputs: list[np.ndarray],
    outputs: list[np.ndarray],
    settings: TimingSettings,
    cold: ColdCaches | None = None,
) -> tuple[float, ...]:
    """Per-run times of the best of `rounds` short rounds (lowest median); `cold` runs before each.

    On two cores a transient load on one of them was seen to halve a whole short measurement;
    keeping the best round (as timeit advises) discards such windows at no extra cost.
    """
    start = time.perf_counter()
    runs = 0
    while runs < settings.warmup or time.perf_counter() - start < settings.warmup_seconds:
        kernel(inputs, outputs)
        runs += 1
    rounds = max(1, settings.rounds)
    best: list[float] = []
    for _ in range(rounds):
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < max(1, settings.max_runs // rounds):
            if cold is not None:
                cold(inputs)
            t0 = time.perf_counter()
            kernel(inputs, outputs)
            times.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start
            enough = len(times) >= settings.min_runs and elapsed >= settings.min_seconds / rounds
            if enough or elapsed >= settings.max_seconds / rounds:
                break
        if not best or statistics.median(times) < statistics.median(best):
            best = times
    return tuple(best)
