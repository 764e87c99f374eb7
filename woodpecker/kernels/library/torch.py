"""PyTorch (oneDNN / MKL) kernels for convolution, dense layers and pooling, with the epilogue."""

from __future__ import annotations

import numpy as np

from woodpecker.kernels.base import Capabilities, LibraryImplementation, importable, is_float32
from woodpecker.kernels.workload import Workload
from woodpecker.ops import activations
from woodpecker.ops.conv import conv_params


class TorchImplementation(LibraryImplementation):
    name = "torch"
    capabilities = Capabilities(owns_threads=True)

    def matches(self, workload: Workload) -> bool:
        node = workload.node
        if not is_float32(workload) or workload.blocked or not importable("torch"):
            return False
        if node.op == "Conv":
            return (
                len(workload.input_shape(0)) == 4
                and node.inputs[1] in workload.constants
                and node.attrs.get("auto_pad", "NOTSET") == "NOTSET"
                and (not workload.has_input(2) or node.inputs[2] in workload.constants)
                and not node.attrs.get("pool")  # fused pool or depthwise: the graph libraries and Halide run those
                and not node.attrs.get("depthwise")
                and not node.attrs.get("expand")
            )
        if node.op == "Gemm":
            return (
                not node.attrs.get("transA", 0)
                and node.inputs[1] in workload.constants
                and (not workload.has_input(2) or node.inputs[2] in workload.constants)
            )
        return node.op in ("GlobalAveragePool",)

    def build(self, workload: Workload, config: dict):
        import torch
        import torch.nn.functional as F

        node = workload.node
        consts = {k: torch.from_numpy(np.array(v)) for k, v in workload.constants.items()}
        bias = consts.get(node.inputs[2]) if workload.has_input(2) else None
        if node.op == "Conv":
            p = conv_params(workload)
            pads = node.attrs.get("pads", [0, 0, 0, 0])
            symmetric = pads[0] == pads[2] and pads[1] == pads[3]
            weight = consts[node.inputs[1]]

            def compute(x):
                if not symmetric:
                    x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
                return F.conv2d(
                    x, weight, bias, p["strides"], (pads[0], pads[1]) if symmetric else 0, p["dilations"], p["groups"]
                )
        elif node.op == "Gemm":
            weight = consts[node.inputs[1]] * node.attrs.get("alpha", 1.0)
            weight = weight if node.attrs.get("transB", 0) else weight.T.contiguous()
            gemm_bias = None if bias is None else bias * node.attrs.get("beta", 1.0)

            def compute(x):
                return F.linear(x, weight, gemm_bias)
        else:

            def compute(x):
                return x.mean(dim=(2, 3), keepdim=True)

        @torch.inference_mode()
        def run(inputs: list[np.ndarray], outputs: list[np.ndarray]) -> None:
            x = torch.from_numpy(inputs[0])
            if node.attrs.get("input_scale"):  # run-time inputs: X, [residual], scale
                x = x * torch.from_numpy(inputs[-1])
            result = compute(x)
            if node.attrs.get("residual"):
                result += torch.from_numpy(inputs[1])
            activations.torch_inplace(node.attrs, result)
            torch.from_numpy(outputs[0]).copy_(result)

        return run
