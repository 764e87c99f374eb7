"""Memory planning: every intermediate value gets a slice of one arena, reused once it is dead.

Values are placed greedily, largest first, at the lowest offset that does not overlap any
value alive at the same time (the "greedy by size" planner of TensorFlow Lite's arena). A
value's lifetime runs from the step that writes it to the last step that reads it; graph
inputs are alive from the start and graph outputs to the end. Values internal to a library
sub-graph never reach the executor and take no memory here.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np

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
