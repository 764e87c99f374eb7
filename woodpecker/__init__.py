"""Woodpecker: a hardware-aware optimizer that makes trained networks run faster at inference."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# NumPy's OpenBLAS keeps its threads spinning ~0.1 s after each call, which made every Halide
# kernel after a NumPy Gemm in a ResNet-18 plan 2x slower. Read when NumPy loads, so set here,
# before any Woodpecker module imports it (see measure/threads.py for the other libraries).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

if TYPE_CHECKING:
    from woodpecker.api import load, optimize
    from woodpecker.plan.plan import Plan

__all__ = ["Plan", "WoodpeckerError", "load", "optimize", "tune"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import lazily: `wpk --help` should not pay for Halide, ONNX Runtime and PyTorch."""
    if name == "load":  # not through api: running a plan needs neither the optimizer nor ONNX
        from woodpecker.plan.plan import Plan

        return Plan.load
    if name in ("optimize", "tune"):
        from woodpecker import api

        return getattr(api, name)
    if name == "Plan":
        from woodpecker.plan.plan import Plan

        return Plan
    if name == "WoodpeckerError":
        from woodpecker.errors import WoodpeckerError

        return WoodpeckerError
    raise AttributeError(name)
