"""One thread count for every library in a process, and no spinning pools left behind.

Must run before torch, OpenVINO or Halide start their pools: a spinning pool from one
library was measured here to make another library's convolution 3x slower. A peer timed in
a process of its own shares the cores with nothing, so it keeps its library's own waiting
policy (ONNX Runtime's spinning pool ran MobileNetV2 1.16x faster than a sleeping one).
"""

from __future__ import annotations

import os

# Thread pools that sleep as soon as their work is done, for processes that mix libraries.
SHARING = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


def configure_threads(threads: int | None = None, shared: bool = True) -> int:
    """`shared`: the process mixes libraries' pools (a plan, the optimizer); otherwise the
    settings SHARING would make, inherited from Woodpecker's own process, are taken back."""
    threads = threads or len(os.sched_getaffinity(0))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["HL_NUM_THREADS"] = str(threads)
    for name, value in SHARING.items():
        if shared:
            os.environ.setdefault(name, value)
        elif os.environ.get(name) == value:
            del os.environ[name]
    return threads
