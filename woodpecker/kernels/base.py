"""The one small protocol every implementation follows, Halide family or library.

`matches(workload)` says whether it can compute the node, `space(workload)` gives its knobs
(empty for library kernels) and `build(workload, config)` returns a Kernel: a callable that
reads input arrays and writes into preallocated output arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from woodpecker.kernels.workload import Workload

if TYPE_CHECKING:  # a saved plan's library kernels need no search space
    from woodpecker.search.space import ConfigSpace

Kernel = Callable[[list[np.ndarray], list[np.ndarray]], None]


@dataclass(frozen=True)
class Capabilities:
    """What the explorer, the plan and the executor may assume of an implementation: declared on
    it, never inferred from its name."""

    compiled: bool = False  # a Halide family: searchable knobs, compiled ahead of time into the plan's library
    runs_subgraphs: bool = False  # runs consecutive nodes as one model (`build_graph`); the plan merges them
    owns_threads: bool = False  # computes on a thread pool of its own: the native pool sleeps while it runs
    in_place: bool = False  # reads each element before writing the same one, so it may write over an input
    strided_outputs: bool = False  # writes outputs that are strided views (a slice of a Concat at batch > 1)
    view_ops: frozenset[str] = frozenset()  # ops it runs as a view of the input's bytes: no step, no copy
    concat_in_place: bool = False  # its Concat is a copy that producers writing into the output may replace
    plan_variants: dict[str, dict] = field(default_factory=dict)  # whole-plan candidates "all-<name>-<suffix>"
    # beside "all-<name>": suffix -> the config every segment gets


class Implementation(Protocol):
    name: str
    capabilities: Capabilities
    revision: int  # bumped when recorded measurements of the same config stop applying (registry.record_name)

    def matches(self, workload: Workload) -> bool: ...

    def space(self, workload: Workload) -> ConfigSpace: ...

    def build(self, workload: Workload, config: dict) -> Kernel: ...


class LibraryImplementation:
    """Base for library kernels: no knobs, one configuration."""

    name = "library"
    capabilities = Capabilities()
    revision = 1  # a library's own version is in the hardware fingerprint

    def space(self, workload: Workload) -> ConfigSpace:
        from woodpecker.search.space import EMPTY_SPACE

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
