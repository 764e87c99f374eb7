"""OpenVINO's CPU plugin (oneDNN) as a kernel for one node or a sub-graph, pinned to fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from woodpecker.graph.ir import Graph
from woodpecker.kernels.base import Capabilities, LibraryImplementation, importable, is_float32, per_use
from woodpecker.kernels.workload import Workload
from woodpecker.ops.fused import ATTENTION

COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool", ATTENTION)
FP32_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}


class OpenVinoImplementation(LibraryImplementation):
    name = "openvino"
    capabilities = Capabilities(runs_subgraphs=True, owns_threads=True)

    def matches(self, workload: Workload) -> bool:
        return workload.op in COMPUTE_OPS and is_float32(workload) and importable("openvino")

    def build(self, workload: Workload, config: dict):
        return per_use(workload, self.build_graph(workload.as_graph()))

    def build_graph(
        self, graph: Graph, model_file: Path | None = None, alone: bool = False, config: dict | None = None
    ):
        """`model_file`: the graph saved as ONNX (a saved plan's, weights mapped from its file).
        `alone` and `config` change nothing: OpenVINO's pool has one policy whether or not it
        shares the cores, and its segments have no options."""
        import openvino as ov

        core = ov.Core()
        if model_file is not None:
            model = core.read_model(str(model_file))
        else:  # only a graph without a file (the optimizer's) needs ONNX
            from woodpecker.graph.onnx_export import graph_to_onnx

            model = core.read_model(graph_to_onnx(graph).SerializeToString(), b"")  # the bytes die here
        compiled = core.compile_model(model, "CPU", FP32_CONFIG)
        del model  # the compiled model holds its own (re-packed) weights
        request = compiled.create_infer_request()
        ports = [compiled.output(name) for name in graph.outputs]

        def run(inputs: list[np.ndarray], outputs: list[np.ndarray]) -> None:
            request.infer([ov.Tensor(a, shared_memory=True) for a in inputs])
            for port, out in zip(ports, outputs):
                np.copyto(out, request.get_tensor(port).data.reshape(out.shape))

        return run
