"""One thread count for every library in a process, and no spinning pools left behind.

Must run before torch, OpenVINO or Halide start their pools: a spinning pool from one
library was measured here to make another library's convolution 3x slower.
"""

from __future__ import annotations

import os


def configure_threads(threads: int | None = None) -> int:
    threads = threads or len(os.sched_getaffinity(0))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["HL_NUM_THREADS"] = str(threads)
    os.environ.setdefault("KMP_BLOCKTIME", "0")
    return threads
