"""The hardware fingerprint: records measured on one machine only count on an identical one."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from functools import cache
from importlib import metadata

from woodpecker.kernels.registry import PACKAGES

# Bumped when measurements stop being comparable with recorded ones (2: large weights timed cold;
# 3: pooling schedules changed under the same configs, so recorded pool timings no longer apply;
# 4: generated kernels' parallel loops run on the native spinning pool, not Halide's;
# 5: candidates are also checked on inputs with NaN and +-Inf, and kernels handle them as ONNX Runtime;
# 6: every Halide candidate, a batch of one and a Ray trial included, is compiled ahead of time and
# timed on the native runtime its plan uses, never JIT-compiled onto Halide's pool).
# One kernel's change bumps that kernel's `revision` instead (registry.record_name).
MEASUREMENT_METHOD = 6


@cache
def fingerprint() -> dict:
    cpu, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "fma", "sse")))
                    break
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu,
        "isa": flags,
        "cores": len(os.sched_getaffinity(0)),
        "machine": platform.machine(),
        "versions": versions,
        "method": MEASUREMENT_METHOD,
    }


def fingerprint_id() -> str:
    return hashlib.sha256(json.dumps(fingerprint(), sort_keys=True).encode()).hexdigest()[:16]
