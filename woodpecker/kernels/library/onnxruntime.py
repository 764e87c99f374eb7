"""ONNX Runtime (MLAS) as a kernel for one node or a sub-graph; the fallback for any op."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from woodpecker.graph.ir import Graph
from woodpecker.kernels.base import Capabilities, LibraryImplementation, per_use
from woodpecker.kernels.workload import Workload


def session_options(threads: int | None = None, spinning: bool = False, prepack: bool = True) -> ort.SessionOptions:
    """Options that coexist with other thread pools: no spinning workers left behind, unless the
    session has the cores to itself (`spinning`, ONNX Runtime's default). Without `prepack` the
    session keeps the weights as stored instead of adding re-packed copies: VGG-16's session was
    created in 0.14-0.24 s instead of 0.6-0.73 and peaked 270 MiB lower, at the same speed."""
    options = ort.SessionOptions()
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # Fatal only: a failing session raises, and Woodpecker reports it (ONNX Runtime's own error lines
    # on standard error would come on top of that one line).
    options.log_severity_level = 4
    ort.set_default_logger_severity(4)
    if threads:
        options.intra_op_num_threads = threads
    return options


class OnnxRuntimeKernel:
    """Runs a small graph, reading and writing the caller's arrays in place (IO binding)."""

    def __init__(
        self,
        graph: Graph,
        threads: int | None = None,
        model_file: Path | None = None,
        spinning: bool = False,
        prepack: bool = True,
    ):
        if model_file is not None:  # a saved plan's segment: no need to import onnx
            model = str(model_file)
        else:
            from woodpecker.graph.onnx_export import graph_to_onnx

            model = graph_to_onnx(graph).SerializeToString()
        options = session_options(threads, spinning, prepack)
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input_names, self.output_names = graph.inputs, graph.outputs
        self._binding = None
        self._bound: tuple[int, ...] = ()

    def __call__(self, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> None:
        pointers = tuple(a.ctypes.data for a in inputs + outputs)
        if pointers != self._bound:  # the executor's buffers never move: bind once
            self._binding = self.session.io_binding()
            for name, array in zip(self.input_names, inputs):
                self._binding.bind_input(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
            for name, array in zip(self.output_names, outputs):
                self._binding.bind_output(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
            self._bound = pointers
        self.session.run_with_iobinding(self._binding)


class OnnxRuntimeImplementation(LibraryImplementation):
    name = "onnxruntime"
    capabilities = Capabilities(runs_subgraphs=True, owns_threads=True, plan_variants={"unpacked": {"prepack": False}})

    def matches(self, workload: Workload) -> bool:
        return True  # checked for real when the session is built

    def build(self, workload: Workload, config: dict) -> OnnxRuntimeKernel:
        return per_use(workload, self.build_graph(workload.as_graph()))

    def build_graph(
        self, graph: Graph, model_file: Path | None = None, alone: bool = False, config: dict | None = None
    ) -> OnnxRuntimeKernel:
        """`model_file`: the graph saved as ONNX (a saved plan's, weights read from its file);
        `alone`: no other thread pool runs in the plan, so the session's workers may spin;
        `config`: the segment's, `{"prepack": False}` for a session without re-packed weights."""
        prepack = (config or {}).get("prepack", True)
        return OnnxRuntimeKernel(graph, model_file=model_file, spinning=alone, prepack=prepack)
