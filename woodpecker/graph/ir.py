"""The graph IR: values with static shapes, nodes in topological order, constants as arrays.

Passes treat a Graph as immutable input and return a new one (`Graph.copy` is cheap: node
objects are shared until a pass replaces them).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from woodpecker.ops import activations


@dataclass(frozen=True)
class Value:
    """A tensor. `shape` is always the ONNX (logical) shape; `block` > 0 means the bytes are laid
    out NCHW[block]c (channels split into blocks, the block innermost), see graph/passes/layout.py."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # a NumPy dtype name, e.g. "float32"
    block: int = 0

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def stored_shape(self) -> tuple[int, ...]:
        """The shape of the array that holds the value: (N, C/b, H, W, b) when blocked."""
        if not self.block:
            return self.shape
        n, c, h, w = self.shape
        return (n, c // self.block, h, w, self.block)


def broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether an array of `shape` broadcasts (NumPy's rules) to exactly `target`."""
    try:
        return np.broadcast_shapes(shape, target) == target
    except ValueError:
        return False


@dataclass(frozen=True)
class Subgraph:
    """A graph-valued attribute (If's branches, Loop's and Scan's body), kept as serialized ONNX: no
    pass looks inside, and the node runs whole on ONNX Runtime."""

    proto: bytes

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.proto).hexdigest()


@dataclass(frozen=True)
class Node:
    """One operation. `op` is the ONNX op type; fused epilogues live in `attrs`.

    Fused conv/gemm nodes carry `activation` (a name from `ops.activations`, with its parameters)
    and, for a fused residual add, a fourth input after X, W, B; a Conv whose input was scaled per
    channel (`input_scale`) reads the scale as its fifth. A Conv may end with a pooling layer
    (`pool`: the pool's op and ONNX attributes), applied after the activation, and a 1x1 Conv
    may start with a depthwise one (`depthwise`: its attributes and activation; its weights and
    bias are its sixth and seventh inputs). A depthwise Conv may start with a 1x1 expansion
    (`expand`: its activation; its weights and bias at the same sixth and seventh places).
    A node with subgraphs (If, Loop, Scan) lists the outer values its subgraphs read after its own
    inputs, so that liveness, segments and dead-node elimination see them; `outer_names` holds the
    names the subgraphs call them by (passes may rename the inputs).
    """

    name: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> Node:
        return dataclasses.replace(self, **changes)

    @property
    def has_subgraphs(self) -> bool:
        return any(
            isinstance(v, Subgraph) or isinstance(v, list) and any(isinstance(g, Subgraph) for g in v)
            for v in self.attrs.values()
        )

    @property
    def explicit_inputs(self) -> tuple[str, ...]:
        """The inputs the ONNX node lists (without the outer values its subgraphs read)."""
        implicit = len(self.attrs.get("outer_names", ()))
        return self.inputs[: len(self.inputs) - implicit] if implicit else self.inputs

    @property
    def fused(self) -> list[str]:
        """The epilogue operations folded into this node, in order."""
        parts = ["Mul"] if self.attrs.get("input_scale") else []  # a scale of the input, before the op
        if self.attrs.get("expand"):  # a 1x1 Conv (and its activation) before the depthwise op
            parts += ["Conv(1x1)", *self._activation(self.attrs["expand"])]
        if self.attrs.get("depthwise"):  # a depthwise Conv (and its activation) before the op
            parts += ["Conv(depthwise)", *self._activation(self.attrs["depthwise"])]
        if self.attrs.get("bias_folded"):
            parts.append("BatchNormalization")
        if self.attrs.get("bias_fused"):
            parts.append("Add")
        if self.attrs.get("residual"):
            parts.append("Add")
        parts += self._activation(self.attrs)
        if self.attrs.get("pool"):
            parts.append(self.attrs["pool"]["op"])
        return parts

    @staticmethod
    def _activation(attrs: dict[str, Any]) -> list[str]:
        return [activations.DISPLAY[attrs["activation"]]] if attrs.get("activation") else []


@dataclass
class Graph:
    nodes: list[Node]
    values: dict[str, Value]
    inputs: list[str]
    outputs: list[str]
    constants: dict[str, np.ndarray]
    opset: int = 17
    name: str = "graph"
    # Each step that changed the number of nodes: (step, nodes before, nodes after). Import and the
    # named passes are the only steps that may remove a node (tests/test_import.py checks this).
    history: list[tuple[str, int, int]] = field(default_factory=list)

    def copy(self) -> Graph:
        return Graph(
            list(self.nodes),
            dict(self.values),
            list(self.inputs),
            list(self.outputs),
            dict(self.constants),
            self.opset,
            self.name,
            list(self.history),
        )

    def producers(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    users.setdefault(name, []).append(node)
        return users

    def replace_nodes(self, absorbed: list[Node], node: Node) -> None:
        """Put `node` in place of the `absorbed` nodes (a fusion), where the last of them stood: every
        input the absorbed nodes read is ready there."""
        gone = {id(n) for n in absorbed}
        last = max(i for i, n in enumerate(self.nodes) if id(n) in gone)
        self.nodes = [node if i == last else n for i, n in enumerate(self.nodes) if id(n) not in gone or i == last]

    def single_use(self, name: str, consumers: dict[str, list[Node]]) -> bool:
        """`name` is read once, by one node, and is no graph output: the node producing it can be
        merged into that reader without the value being needed anywhere else."""
        return len(consumers.get(name, [])) == 1 and name not in self.outputs

    def is_constant(self, name: str) -> bool:
        return name in self.constants

    def shape(self, name: str) -> tuple[int, ...]:
        return self.values[name].shape

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.op] = counts.get(node.op, 0) + 1
        return counts
