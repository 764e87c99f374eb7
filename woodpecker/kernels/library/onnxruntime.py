"""ONNX Runtime (MLAS) as a per-node kernel, and the fallback for any op nothing else covers."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from woodpecker.graph.onnx_export import node_model
from woodpecker.kernels.base import LibraryImplementation
from woodpecker.kernels.workload import Workload
from woodpecker.search.space import Config


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Options that coexist with other thread pools: no spinning workers left behind."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return options


class OnnxRuntimeKernel:
    """Runs a one-node model, reading and writing the caller's arrays in place (IO binding)."""

    def __init__(self, workload: Workload, threads: int | None = None):
        model = node_model(workload.as_graph(), workload.node)
        self.session = ort.InferenceSession(
            model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"]
        )
        self.input_names = workload.dynamic_inputs
        self.output_names = [o for o in workload.node.outputs if o]

    def __call__(self, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> None:
        binding = self.session.io_binding()
        for name, array in zip(self.input_names, inputs):
            binding.bind_input(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        for name, array in zip(self.output_names, outputs):
            binding.bind_output(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        self.session.run_with_iobinding(binding)


class OnnxRuntimeImplementation(LibraryImplementation):
    name = "onnxruntime"

    def matches(self, workload: Workload) -> bool:
        return True  # checked for real when the session is built

    def build(self, workload: Workload, config: Config) -> OnnxRuntimeKernel:
        return OnnxRuntimeKernel(workload)
