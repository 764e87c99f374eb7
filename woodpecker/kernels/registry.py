"""Every implementation the explorer may choose from, generated first."""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from woodpecker.kernels.base import Implementation
    from woodpecker.kernels.workload import Workload

FALLBACK = "onnxruntime"

# name -> module and class, imported when first asked for: running a saved plan imports only the
# libraries it runs on (ONNX and Halide took 0.2 s of loading an all-ONNX Runtime plan).
WHERE: dict[str, tuple[str, str]] = {
    "halide.conv2d": ("woodpecker.kernels.generated.conv2d", "HalideConv2d"),
    "halide.conv2d_blocked": ("woodpecker.kernels.generated.conv2d_blocked", "HalideConv2dBlocked"),
    "halide.winograd": ("woodpecker.kernels.generated.winograd", "HalideWinograd"),
    "halide.expand_depthwise": ("woodpecker.kernels.generated.expand_depthwise", "HalideExpandDepthwise"),
    "halide.dense": ("woodpecker.kernels.generated.dense", "HalideDense"),
    "halide.pool": ("woodpecker.kernels.generated.pool", "HalidePool"),
    "halide.elementwise": ("woodpecker.kernels.generated.elementwise", "HalideElementwise"),
    "halide.channelwise": ("woodpecker.kernels.generated.channelwise", "HalideChannelwise"),
    "halide.data_movement": ("woodpecker.kernels.generated.data_movement", "HalideDataMovement"),
    "halide.normalization": ("woodpecker.kernels.generated.normalization", "HalideNormalization"),
    "halide.batched_matmul": ("woodpecker.kernels.generated.batched_matmul", "HalideBatchedMatmul"),
    "halide.resize": ("woodpecker.kernels.generated.resize", "HalideResize"),
    "onnxruntime": ("woodpecker.kernels.library.onnxruntime", "OnnxRuntimeImplementation"),
    "openvino": ("woodpecker.kernels.library.openvino", "OpenVinoImplementation"),
    "torch": ("woodpecker.kernels.library.torch", "TorchImplementation"),
    "numpy": ("woodpecker.kernels.library.numpy", "NumpyImplementation"),
}
LIBRARIES = ("onnxruntime", "openvino", "torch", "numpy")


def candidates(workload: Workload, libraries: tuple[str, ...] = LIBRARIES) -> list[Implementation]:
    """Implementations that claim this node; ONNX Runtime always does, as the fallback."""
    return [
        impl
        for impl in map(get, WHERE)
        if (impl.kind == "generated" or impl.name in libraries or impl.name == FALLBACK) and impl.matches(workload)
    ]


@cache
def get(name: str) -> Implementation:
    """The implementation called `name` (KeyError if there is none), its module imported now."""
    module, cls = WHERE[name]
    return getattr(importlib.import_module(module), cls)()


def record_name(name: str) -> str:
    """The name `name`'s measurements are recorded under: with its revision once its code changed
    what a recorded config computes or how fast it runs, so that the older records are not read."""
    revision = get(name).revision
    return name if revision == 1 else f"{name}@{revision}"
