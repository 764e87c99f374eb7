"""Every implementation the explorer may choose from, Halide families first: one line each."""

from __future__ import annotations

import importlib
import importlib.util
from functools import cache
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from woodpecker.kernels.base import Capabilities, Implementation
    from woodpecker.kernels.workload import Workload

FALLBACK = "onnxruntime"
HALIDE = "halide"  # the package of the Halide families


class Entry(NamedTuple):
    module: str
    cls: str
    package: str  # the package it runs on: its version is part of the hardware fingerprint


# name -> where it lives, imported when first asked for: running a saved plan imports only the
# libraries it runs on (ONNX and Halide took 0.2 s of loading an all-ONNX Runtime plan).
WHERE: dict[str, Entry] = {
    "halide.conv2d": Entry("woodpecker.kernels.halide.conv2d", "HalideConv2d", HALIDE),
    "halide.conv2d_blocked": Entry("woodpecker.kernels.halide.conv2d_blocked", "HalideConv2dBlocked", HALIDE),
    "halide.winograd": Entry("woodpecker.kernels.halide.winograd", "HalideWinograd", HALIDE),
    "halide.expand_depthwise": Entry("woodpecker.kernels.halide.expand_depthwise", "HalideExpandDepthwise", HALIDE),
    "halide.dense": Entry("woodpecker.kernels.halide.dense", "HalideDense", HALIDE),
    "halide.pool": Entry("woodpecker.kernels.halide.pool", "HalidePool", HALIDE),
    "halide.elementwise": Entry("woodpecker.kernels.halide.elementwise", "HalideElementwise", HALIDE),
    "halide.channelwise": Entry("woodpecker.kernels.halide.channelwise", "HalideChannelwise", HALIDE),
    "halide.data_movement": Entry("woodpecker.kernels.halide.data_movement", "HalideDataMovement", HALIDE),
    "halide.channel_copy": Entry("woodpecker.kernels.halide.channel_copy", "HalideChannelCopy", HALIDE),
    "halide.normalization": Entry("woodpecker.kernels.halide.normalization", "HalideNormalization", HALIDE),
    "halide.batched_matmul": Entry("woodpecker.kernels.halide.batched_matmul", "HalideBatchedMatmul", HALIDE),
    "halide.resize": Entry("woodpecker.kernels.halide.resize", "HalideResize", HALIDE),
    "halide.reduce": Entry("woodpecker.kernels.halide.reduce", "HalideReduce", HALIDE),
    "halide.gather": Entry("woodpecker.kernels.halide.gather", "HalideGather", HALIDE),
    "halide.attention": Entry("woodpecker.kernels.halide.attention", "HalideAttention", HALIDE),
    "halide.group_norm": Entry("woodpecker.kernels.halide.group_norm", "HalideGroupNorm", HALIDE),
    "onnxruntime": Entry("woodpecker.kernels.library.onnxruntime", "OnnxRuntimeImplementation", "onnxruntime"),
    "openvino": Entry("woodpecker.kernels.library.openvino", "OpenVinoImplementation", "openvino"),
    "torch": Entry("woodpecker.kernels.library.torch", "TorchImplementation", "torch"),
    "numpy": Entry("woodpecker.kernels.library.numpy", "NumpyImplementation", "numpy"),
}
LIBRARIES = tuple(name for name, entry in WHERE.items() if entry.package != HALIDE)
PACKAGES = tuple(dict.fromkeys(entry.package for entry in WHERE.values()))


def candidates(workload: Workload, libraries: tuple[str, ...] = LIBRARIES) -> list[Implementation]:
    """Implementations that claim this node; ONNX Runtime always does, as the fallback."""
    return [
        impl
        for impl in map(get, WHERE)
        if (impl.capabilities.compiled or impl.name in libraries or impl.name == FALLBACK) and impl.matches(workload)
    ]


@cache
def get(name: str) -> Implementation:
    """The implementation called `name` (KeyError if there is none), its module imported now."""
    entry = WHERE[name]
    return getattr(importlib.import_module(entry.module), entry.cls)()


def capabilities(name: str) -> Capabilities:
    return get(name).capabilities


def installed(name: str) -> bool:
    """Whether the package `name` runs on is installed (OpenVINO and PyTorch are optional)."""
    return importlib.util.find_spec(WHERE[name].package) is not None


def graph_libraries() -> tuple[str, ...]:
    """The installed libraries that run whole sub-graphs: each gives an "all-<name>" plan candidate."""
    return tuple(n for n in LIBRARIES if installed(n) and capabilities(n).runs_subgraphs)


def status(name: str) -> str:
    """A chosen implementation's `Choice.status` when the op is covered natively."""
    return "generated" if capabilities(name).compiled else "library"


def record_name(name: str) -> str:
    """The name `name`'s measurements are recorded under: with its revision once its code changed
    what a recorded config computes or how fast it runs, so that the older records are not read."""
    revision = get(name).revision
    return name if revision == 1 else f"{name}@{revision}"
