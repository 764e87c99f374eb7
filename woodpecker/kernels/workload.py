"""A Workload is one node cut out of its graph with everything needed to build and check it.

It is self-contained (shapes, attributes, constant inputs), so it can be sent to a worker
process, keyed for the tuning records, and turned into a one-node ONNX model for libraries.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np

from woodpecker.graph.ir import Graph, Node, Subgraph, Value


@dataclass(frozen=True)
class Workload:
    node: Node
    values: dict[str, Value]  # every input and output of the node
    constants: dict[str, np.ndarray]  # the node's constant inputs (weights, bias, shapes)
    opset: int

    @staticmethod
    def of(graph: Graph, node: Node) -> Workload:
        names = [n for n in node.inputs + node.outputs if n]
        return Workload(
            node,
            {n: graph.values[n] for n in names},
            {n: graph.constants[n] for n in node.inputs if n in graph.constants},
            graph.opset,
        )

    @property
    def op(self) -> str:
        return self.node.op

    def shape(self, name: str) -> tuple[int, ...]:
        return self.values[name].shape

    def input_shape(self, index: int) -> tuple[int, ...]:
        return self.shape(self.node.inputs[index])

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.shape(self.node.outputs[0])

    @property
    def dynamic_inputs(self) -> list[str]:
        """Inputs that arrive at run time (everything that is not a constant)."""
        return [n for n in self.node.inputs if n and n not in self.constants]

    @property
    def blocks(self) -> set[int]:
        """The blocks of the node's run-time inputs and outputs (0: plain NCHW)."""
        return {v.block for n, v in self.values.items() if n not in self.constants}

    @property
    def blocked(self) -> bool:
        """Whether any input or output is stored in a blocked channel layout."""
        return any(self.blocks)

    def block(self, name: str) -> int:
        return self.values[name].block

    def has_input(self, index: int) -> bool:
        return len(self.node.inputs) > index and bool(self.node.inputs[index])

    def distinct_inputs(self, arrays: list) -> list:
        """From one array per use (`dynamic_inputs` order) to one per distinct value (`as_graph`'s
        inputs): a node may read a value twice, Add(x, x), and an ONNX graph lists an input once."""
        names = self.dynamic_inputs
        return [arrays[names.index(n)] for n in dict.fromkeys(names)]

    def as_graph(self) -> Graph:
        outputs = [o for o in self.node.outputs if o]
        return Graph(
            [self.node],
            dict(self.values),
            list(dict.fromkeys(self.dynamic_inputs)),
            outputs,
            dict(self.constants),
            self.opset,
            self.node.name,
        )

    def description(self) -> dict:
        """What determines a kernel's speed: op, attributes, shapes, dtypes, constness."""
        return {
            "op": self.op,
            "attrs": {k: _jsonable(v) for k, v in sorted(self.node.attrs.items())},
            "inputs": [
                [list(self.values[n].shape), self.values[n].dtype, n in self.constants, *_block(self.values[n])]
                if n
                else None
                for n in self.node.inputs
            ],
            "outputs": [
                [list(self.values[n].shape), self.values[n].dtype, *_block(self.values[n])]
                for n in self.node.outputs
                if n
            ],
        }

    def key(self) -> str:
        text = json.dumps(self.description(), sort_keys=True)
        return f"{self.op}-" + hashlib.sha256(text.encode()).hexdigest()[:16]

    def flops(self) -> float:
        """Multiply-adds counted as two flops; used to report GFLOPS."""
        out = int(np.prod(self.output_shape))
        if self.op == "Conv":
            from woodpecker.ops.conv import conv_params  # the output before a fused pool

            p = conv_params(self)
            flops = 2.0 * p["n"] * p["c_out"] * p["h_out"] * p["w_out"] * int(np.prod(self.input_shape(1)[1:]))
            if self.node.attrs.get("expand"):  # the fused 1x1 expansion over the whole input
                flops += 2.0 * p["n"] * p["c_out"] * p["h"] * p["w"] * self.input_shape(0)[1]
            return flops
        if self.op in ("Gemm", "MatMul"):
            return 2.0 * out * self.input_shape(0)[-1]
        return float(out)


def shape_features(description: dict) -> list[float]:
    """Every number of a workload description on a log scale: nearby vectors = similar workloads."""
    numbers: list[float] = []

    def walk(value) -> None:
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return
        if isinstance(value, int | float):
            numbers.append(math.log2(1 + abs(value)))
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for key in sorted(value):
                walk(value[key])

    walk({"attrs": description["attrs"], "inputs": description["inputs"], "outputs": description["outputs"]})
    return numbers


def _block(value: Value) -> list[int]:
    """Blocked values add their block to the description; plain ones keep the keys they always had."""
    return [value.block] if value.block else []


def _jsonable(value):
    if isinstance(value, Subgraph):
        return {"subgraph": value.digest}
    if isinstance(value, list) and any(isinstance(v, Subgraph) for v in value):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float):
        return round(value, 7)
    return value
