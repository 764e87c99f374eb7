"""NumPy kernels: BLAS for dense layers, and the data-movement ops (Concat, Reshape, Flatten, Relayout)."""

from __future__ import annotations

import numpy as np

from woodpecker.graph.ir import Value
from woodpecker.graph.passes.layout import RESHAPE_OPS, is_one_by_one
from woodpecker.kernels.base import Capabilities, LibraryImplementation, is_float32
from woodpecker.kernels.workload import Workload
from woodpecker.ops import activations


class NumpyImplementation(LibraryImplementation):
    name = "numpy"
    capabilities = Capabilities(view_ops=frozenset(RESHAPE_OPS), concat_in_place=True)

    def matches(self, workload: Workload) -> bool:
        node = workload.node
        if node.op in RESHAPE_OPS:  # blocked: an (N, C, 1, 1) input, whose bytes are the plain value's
            source = workload.values[node.inputs[0]] if workload.has_input(0) else None
            if source is None or node.inputs[0] in workload.constants:
                return False
            return not workload.blocked or bool(source.block) and is_one_by_one(source)
        if node.op == "Relayout":
            return True
        if node.op == "Concat":  # blocked: the stored arrays concatenate along their block axis
            if workload.blocked:
                return not workload.constants and len(workload.blocks) == 1 and node.attrs["axis"] in (1, -3)
            return bool(workload.dynamic_inputs)  # constants (a transformer's class token) in place
        if node.op == "Gemm":
            return (
                is_float32(workload)
                and not node.attrs.get("transA", 0)
                and node.inputs[1] in workload.constants
                and len(workload.input_shape(0)) == 2
                and (not workload.has_input(2) or node.inputs[2] in workload.constants)
            )
        return False

    def build(self, workload: Workload, config: dict):
        node = workload.node
        if node.op == "Relayout":
            return _relayout(workload.values[node.inputs[0]], workload.values[node.outputs[0]])
        if node.op == "Concat":
            axis = node.attrs["axis"] % len(workload.output_shape)

            constants = {i: workload.constants[n] for i, n in enumerate(node.inputs) if n in workload.constants}

            def concat(inputs, outputs):
                arrays = iter(inputs)
                parts = [constants[i] if i in constants else next(arrays) for i in range(len(node.inputs))]
                np.concatenate(parts, axis=axis, out=outputs[0])

            return concat
        if node.op != "Gemm":

            def reshape(inputs, outputs):
                np.copyto(outputs[0], inputs[0].reshape(outputs[0].shape))

            return reshape
        weight = workload.constants[node.inputs[1]].astype(np.float32) * node.attrs.get("alpha", 1.0)
        weight = np.ascontiguousarray(weight.T if node.attrs.get("transB", 0) else weight)
        n_out = workload.output_shape[1]
        bias = np.zeros(n_out, np.float32)
        if workload.has_input(2):
            bias += np.broadcast_to(workload.constants[node.inputs[2]] * node.attrs.get("beta", 1.0), (n_out,))

        def gemm(inputs, outputs):
            out = outputs[0]
            np.matmul(inputs[0], weight, out=out)
            out += bias
            if node.attrs.get("residual"):
                out += inputs[1]
            activations.numpy_inplace(node.attrs, out)

        return gemm


def _relayout(source: Value, target: Value):
    """Copy between NCHW and NCHW[b]c or between two blocks, each seen as (N, C/b, b, H, W) for the
    target's b (no temporary to or from plain; one between two blocks)."""
    n, c, h, w = source.shape
    b = target.block or source.block

    def split(array: np.ndarray, block: int) -> np.ndarray:
        if not block:
            return array.reshape(n, c // b, b, h, w)
        channels_first = array.transpose(0, 1, 4, 2, 3)  # (N, C/block, block, H, W)
        return channels_first if block == b else channels_first.reshape(n, c // b, b, h, w)

    def relayout(inputs, outputs):
        np.copyto(split(outputs[0], target.block), split(inputs[0], source.block))

    return relayout
