"""Every implementation the explorer may choose from, generated first."""

from __future__ import annotations

from woodpecker.kernels.base import Implementation
from woodpecker.kernels.generated.batched_matmul import HalideBatchedMatmul
from woodpecker.kernels.generated.channelwise import HalideChannelwise
from woodpecker.kernels.generated.conv2d import HalideConv2d
from woodpecker.kernels.generated.conv2d_blocked import HalideConv2dBlocked
from woodpecker.kernels.generated.data_movement import HalideDataMovement
from woodpecker.kernels.generated.dense import HalideDense
from woodpecker.kernels.generated.elementwise import HalideElementwise
from woodpecker.kernels.generated.normalization import HalideNormalization
from woodpecker.kernels.generated.pool import HalidePool
from woodpecker.kernels.generated.resize import HalideResize
from woodpecker.kernels.library.numpy import NumpyImplementation
from woodpecker.kernels.library.onnxruntime import OnnxRuntimeImplementation
from woodpecker.kernels.library.openvino import OpenVinoImplementation
from woodpecker.kernels.library.torch import TorchImplementation
from woodpecker.kernels.workload import Workload

FALLBACK = "onnxruntime"

IMPLEMENTATIONS: dict[str, Implementation] = {
    impl.name: impl
    for impl in (
        HalideConv2d(),
        HalideConv2dBlocked(),
        HalideDense(),
        HalidePool(),
        HalideElementwise(),
        HalideChannelwise(),
        HalideDataMovement(),
        HalideNormalization(),
        HalideBatchedMatmul(),
        HalideResize(),
        OnnxRuntimeImplementation(),
        OpenVinoImplementation(),
        TorchImplementation(),
        NumpyImplementation(),
    )
}
LIBRARIES = ("onnxruntime", "openvino", "torch", "numpy")


def candidates(workload: Workload, libraries: tuple[str, ...] = LIBRARIES) -> list[Implementation]:
    """Implementations that claim this node; ONNX Runtime always does, as the fallback."""
    return [
        impl
        for impl in IMPLEMENTATIONS.values()
        if (impl.kind == "generated" or impl.name in libraries or impl.name == FALLBACK) and impl.matches(workload)
    ]


def get(name: str) -> Implementation:
    return IMPLEMENTATIONS[name]


def record_name(name: str) -> str:
    """The name `name`'s measurements are recorded under: with its revision once its code changed
    what a recorded config computes or how fast it runs, so that the older records are not read."""
    revision = get(name).revision
    return name if revision == 1 else f"{name}@{revision}"
