"""Memory planning: every intermediate value gets a slice of one arena, reused once it is dead.

Values are placed greedily, largest first, at the lowest offset that does not overlap any
value alive at the same time (the "greedy by size" planner of TensorFlow Lite's arena). A
value's lifetime runs from the step that writes it to the last step that reads it; graph
inputs are alive from the start and graph outputs to the end. Values internal to a library
sub-graph never reach the executor and take no memory here.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from woodpecker.errors import MemoryLimitError
from woodpecker.graph.ir import Graph, Value

ALIGNMENT = 64  # bytes: a cache line, and a full AVX-512 vector
HUGE_PAGE = 2**21  # bytes: x86-64's transparent huge page


@dataclass(frozen=True)
class Lifetime:
    name: str
    nbytes: int
    first: int  # index of the step that writes it (-1: a graph input)
    last: int  # index of the last step that reads it (len(steps): a graph output)

    def overlaps(self, other: Lifetime) -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class MemoryPlan:
    offsets: dict[str, int]
    arena_bytes: int
    total_bytes: int  # what one buffer per value would have needed

    def describe(self) -> str:
        return (
            f"{self.arena_bytes / 2**20:.1f} MiB arena for {len(self.offsets)} values "
            f"({self.total_bytes / 2**20:.1f} MiB without reuse)"
        )


def aligned_empty(nbytes: int) -> np.ndarray:
    """Bytes starting on an ALIGNMENT boundary; from HUGE_PAGE up, in memory the kernel may back with
    huge pages. NumPy's own buffers start 16 or 48 bytes past a cache line here, which splits every
    full-vector load and store of the kernels across two lines; and a batch-1 plan streams its
    weights from L2/L3 every run, where 4 KiB pages cost TLB walks: ResNet-18's generated plan took
    0.91x the time with its kernels' weights in one huge-page block (median of 10 process pairs).
    Only whole huge pages are advised, so a block never holds more than its bytes' pages."""
    if nbytes < HUGE_PAGE:
        raw = np.empty(nbytes + ALIGNMENT, np.uint8)
        start = -raw.ctypes.data % ALIGNMENT
        return raw[start : start + nbytes]
    block = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # zero until written
    raw = np.frombuffer(block, np.uint8)
    start = -raw.ctypes.data % HUGE_PAGE
    if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux
        block.madvise(mmap.MADV_HUGEPAGE, start, nbytes // HUGE_PAGE * HUGE_PAGE)
    return raw[start : start + nbytes]


def _aligned(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def plan_memory(lifetimes: list[Lifetime]) -> MemoryPlan:
    placed: list[tuple[int, Lifetime]] = []
    offsets: dict[str, int] = {}
    for value in sorted(lifetimes, key=lambda v: (-v.nbytes, v.first, v.name)):
        size = _aligned(max(value.nbytes, 1))
        offset = 0
        for start, other in sorted((p for p in placed if p[1].overlaps(value)), key=lambda p: p[0]):
            if offset + size <= start:
                break  # fits in the gap before this neighbour
            offset = max(offset, start + _aligned(max(other.nbytes, 1)))
        offsets[value.name] = offset
        placed.append((offset, value))
    arena = max((offset + _aligned(max(v.nbytes, 1)) for offset, v in placed), default=0)
    return MemoryPlan(offsets, arena, sum(_aligned(max(v.nbytes, 1)) for v in lifetimes))


def available_bytes() -> int:
    """Memory this process can still get: the kernel's MemAvailable, lowered by a cgroup limit."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            available = min(available, int(limit) - int(used))
    except (OSError, ValueError):
        pass
    return available


def check_memory(needed: int, what: str, limit: int | None = None) -> None:
    """Refuse, before allocating, to need more than `limit` bytes (--max-memory) or than is available."""
    if limit is not None and needed > limit:
        raise MemoryLimitError(f"{what} need {_size(needed)}, more than --max-memory {_size(limit)}")
    available = available_bytes()
    if needed > available:
        raise MemoryLimitError(f"{what} need {_size(needed)}; this machine has {_size(available)} available")


def check_model_memory(graph: Graph, limit: int | None = None) -> None:
    """The least any plan of `graph` needs (its weights, and the largest node's inputs and outputs at
    once), checked before optimizing: a model declaring a 20000 x 20000 image fails here in a second,
    not after growing past the machine's memory."""
    weights = sum(_nbytes(graph.values[n]) for n in graph.constants if n in graph.values)
    largest = max(
        (
            sum(_nbytes(graph.values[n]) for n in {*node.inputs, *node.outputs} if n and n not in graph.constants)
            for node in graph.nodes
        ),
        default=0,
    )
    inputs = sum(_nbytes(graph.values[n]) for n in graph.inputs)
    check_memory(weights + max(largest, inputs), "the model's weights and largest layer", limit)


def _nbytes(value: Value) -> int:
    return value.size * np.dtype(value.dtype).itemsize


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"
