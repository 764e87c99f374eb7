"""What a measurement returns: times, or the reason the candidate failed. Never an exception."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MeasureResult:
    impl: str
    config: dict[str, Any]
    error: str | None = None  # "compile: ...", "wrong result: ...", "timeout after 60s", "crashed: ..."
    compile_s: float = 0.0
    times_s: tuple[float, ...] = field(default=())
    max_rel_error: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s) if self.times_s else float("inf")

    def to_json(self) -> dict[str, Any]:
        return {
            "impl": self.impl,
            "config": self.config,
            "error": self.error,
            "compile_s": round(self.compile_s, 4),
            "median_s": self.median_s if self.ok else None,
            "runs": len(self.times_s),
            "max_rel_error": self.max_rel_error,
        }
