"""Several ways of running the same thing, timed in one process in interleaved rounds.

Why interleaved: on this shared machine a slow spell lasts seconds to minutes, so timing one
way after the other would compare spells; taking turns round by round spreads them over all.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def round_medians(
    runs: dict[str, Callable[[], object]],
    rounds: int,
    repeats: int,
    warmup: int = 3,
    setups: dict[str, Callable[[], object]] | None = None,
) -> dict[str, list[float]]:
    """Each way's median seconds in every round (`setups[name]`, if any, called before its turn)."""
    medians: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            if setups and name in setups:
                setups[name]()
            for _ in range(warmup):
                run()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            medians[name].append(statistics.median(times))
    return medians
