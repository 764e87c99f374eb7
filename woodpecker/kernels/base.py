"""The one small protocol every implementation follows, generated or library.

`matches(workload)` says whether it can compute the node, `space(workload)` gives its knobs
(empty for library kernels) and `build(workload, config)` returns a Kernel: a callable that
reads input arrays and writes into preallocated output arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from woodpecker.kernels.workload import Workload
from woodpecker.search.space import EMPTY_SPACE, Config, ConfigSpace

Kernel = Callable[[list[np.ndarray], list[np.ndarray]], None]


class Implementation(Protocol):
    name: str
    kind: str  # "generated" or "library"
    revision: int  # bumped when recorded measurements of the same config stop applying (registry.record_name)

    def matches(self, workload: Workload) -> bool: ...

    def space(self, workload: Workload) -> ConfigSpace: ...

    def build(self, workload: Workload, config: Config) -> Kernel: ...


class LibraryImplementation:
    """Base for library kernels: no knobs, one configuration."""

    name = "library"
    kind = "library"
    revision = 1  # a library's own version is in the hardware fingerprint

    def space(self, workload: Workload) -> ConfigSpace:
        return EMPTY_SPACE


def per_use(workload: Workload, kernel: Kernel) -> Kernel:
    """`kernel`, built from `workload.as_graph()`, called like every node kernel: one array per use."""
    if len(set(workload.dynamic_inputs)) == len(workload.dynamic_inputs):
        return kernel
    return lambda inputs, outputs: kernel(workload.distinct_inputs(inputs), outputs)


def importable(module: str) -> bool:
    """Whether an optional library (OpenVINO, PyTorch) is installed."""
    import importlib.util

    return importlib.util.find_spec(module) is not None


def is_float32(workload: Workload) -> bool:
    return all(v.dtype == "float32" for n, v in workload.values.items() if n not in workload.constants)
