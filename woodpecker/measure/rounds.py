"""Timing whole runs the way selection, `wpk bench` and the benchmarks all do: interleaved rounds,
medians of repeated runs, and the memory a process adds.

Why interleaved: on a shared machine a slow spell lasts seconds to minutes, so timing one thing
after another would compare spells; taking turns round by round (in a rotating order) spreads
them over all.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def interleaved_rounds(
    names: list[str], rounds: int, turn: Callable[[str], T], after_turn: Callable[[], None] | None = None
) -> list[dict[str, T]]:
    """`rounds` rounds in which every name takes one turn, each round starting one name later."""
    results: list[dict[str, T]] = []
    for i in range(rounds):
        results.append({})
        shift = i % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            results[-1][name] = turn(name)
            if after_turn is not None:
                after_turn()
    return results


def run_times(
    run: Callable[[], object], warmup: int, runs: int, min_seconds: float = 0.0, max_seconds: float = float("inf")
) -> list[float]:
    """Seconds of each run after `warmup` runs: at least `runs` and `min_seconds` (at most ten times
    `runs`), stopping early at `max_seconds`."""
    for _ in range(warmup):
        run()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs or time.perf_counter() - start < min_seconds:
        if times and time.perf_counter() - start >= max_seconds or len(times) >= 10 * runs:
            break
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return times


def median_of_runs(run: Callable[[], object], warmup: int, runs: int, **limits: float) -> float:
    return statistics.median(run_times(run, warmup, runs, **limits))


def round_medians(
    runs: dict[str, Callable[[], object]],
    rounds: int,
    repeats: int,
    warmup: int = 3,
    setups: dict[str, Callable[[], object]] | None = None,
) -> dict[str, list[float]]:
    """Several ways of running the same thing in this process: each way's median seconds in every
    round (`setups[name]`, if any, called before its turn)."""

    def turn(name: str) -> float:
        if setups and name in setups:
            setups[name]()
        return median_of_runs(runs[name], warmup, repeats)

    results = interleaved_rounds(list(runs), rounds, turn)
    return {name: [one[name] for one in results] for name in runs}


class MemoryProbe:
    """The memory this process adds from now on: resident now and peak (VmHWM), less the resident
    size at the start, so that the libraries imported before do not count (Linux)."""

    def __init__(self):
        self.baseline = resident_mib()
        self.peak_reset = _reset_peak()  # False where the peak cannot be restarted: it then includes imports

    def resident_mib(self) -> float:
        return resident_mib() - self.baseline

    def peak_mib(self) -> float:
        return peak_mib() - self.baseline


def resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mib() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would carry the parent's peak across exec)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024  # kB


def _reset_peak() -> bool:
    """Start this process's peak resident memory afresh (writing 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True
