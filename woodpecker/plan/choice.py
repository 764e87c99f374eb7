"""What the explorer decided for one node, and why (the measured candidates)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Choice:
    node: str
    impl: str
    config: dict[str, Any]
    status: str  # "generated", "library", or "fallback" (no kernel but ONNX Runtime covers the op)
    median_s: float | None = None
    compile_s: float | None = None
    workload: str = ""
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "impl": self.impl,
            "config": self.config,
            "status": self.status,
            "median_s": self.median_s,
            "compile_s": self.compile_s,
            "workload": self.workload,
            "candidates": self.candidates,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> Choice:
        return Choice(**data)
