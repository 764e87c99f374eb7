"""OpenVINO's CPU plugin (oneDNN) as a per-node kernel, pinned to fp32."""

from __future__ import annotations

import numpy as np

from woodpecker.graph.onnx_export import node_model
from woodpecker.kernels.base import LibraryImplementation, importable, is_float32
from woodpecker.kernels.workload import Workload
from woodpecker.search.space import Config

COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool")
FP32_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}


class OpenVinoImplementation(LibraryImplementation):
    name = "openvino"

    def matches(self, workload: Workload) -> bool:
        return workload.op in COMPUTE_OPS and is_float32(workload) and importable("openvino")

    def build(self, workload: Workload, config: Config):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(node_model(workload.as_graph(), workload.node).SerializeToString(), b"")
        compiled = core.compile_model(model, "CPU", FP32_CONFIG)
        request = compiled.create_infer_request()

        def run(inputs: list[np.ndarray], outputs: list[np.ndarray]) -> None:
            results = request.infer([ov.Tensor(a, shared_memory=True) for a in inputs])
            for index, out in enumerate(outputs):
                np.copyto(out, results[compiled.outputs[index]].reshape(out.shape))

        return run
