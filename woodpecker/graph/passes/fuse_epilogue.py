"""Fuse bias, residual Add and an activation into the producing Conv or Gemm (the kernel's epilogue).

Conv -> [Add(other)] -> [activation] becomes one node: the add and activation run on the
accumulator while it is still in registers instead of in extra passes over memory.
Activations are those of `ops.activations`: Relu, Clip, Sigmoid, HardSigmoid, HardSwish, and
SiLU, which exported models spell as y * Sigmoid(y) (EfficientNet, RegNetY's SE blocks), and
GELU, spelled 0.5 * y * (1 + Erf(y / sqrt 2)) (ConvNeXt, vision transformers). A MatMul by
constant weights (nn.Linear on more than two dimensions) takes the following bias Add too.
A BatchNormalization no convolution precedes (so it was not folded) takes an activation too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from woodpecker.graph.ir import Graph, Node, Value
from woodpecker.ops import activations
from woodpecker.ops.conv import BIAS, RESIDUAL

EPILOGUE_HOSTS = ("Conv", "Gemm", "MatMul", "BatchNormalization")  # BatchNormalization: activations only


@dataclass(frozen=True)
class Fusion:
    host_input: str  # the value of the consumer that the host produces
    attrs: dict = field(default_factory=dict)  # added to the host's attributes
    inputs: dict[int, str] = field(default_factory=dict)  # position -> value, added to the host's inputs
    absorbed: tuple[Node, ...] = ()  # nodes besides the host and the consumer that disappear
    constants: dict[str, np.ndarray] = field(default_factory=dict)  # new constants the host reads


def fuse_epilogue(graph: Graph) -> Graph:
    out = graph.copy()
    changed = True
    while changed:
        changed = _fuse_once(out)
    return out


def _fuse_once(graph: Graph) -> bool:
    consumers = graph.consumers()
    producers = graph.producers()
    for index, node in enumerate(graph.nodes):
        fusion = _fusion(graph, node, producers, consumers)
        if fusion is None:
            continue
        host = producers[fusion.host_input]
        inputs = list(host.inputs) + [""] * (max(fusion.inputs, default=-1) + 1 - len(host.inputs))
        for position, name in fusion.inputs.items():
            inputs[position] = name
        for name, array in fusion.constants.items():
            graph.constants[name] = array
            graph.values[name] = Value(name, array.shape, array.dtype.name)
        fused = host.replace(inputs=tuple(inputs), outputs=node.outputs, attrs=host.attrs | fusion.attrs)
        # The fused node takes the consumer's place: every input it reads is ready there.
        graph.nodes[index] = fused
        for gone in (host, *fusion.absorbed):
            graph.nodes.remove(gone)
        return True
    return False


def _fusion(graph: Graph, node: Node, producers, consumers) -> Fusion | None:
    if node.op == "Add":
        return _residual(graph, node, producers, consumers) or _bias(graph, node, producers, consumers)
    if node.op == "Mul":
        return _silu(graph, node, producers, consumers) or _gelu(graph, node, producers, consumers)
    attrs = activations.of_node(node, graph.constants)
    if attrs is None or _host(graph, node.inputs[0], producers, consumers) is None:
        return None
    return Fusion(node.inputs[0], attrs)


def _residual(graph: Graph, add: Node, producers, consumers) -> Fusion | None:
    """Add(y, other) with `other` computed at run time and shaped like y."""
    for name in add.inputs:
        other = add.inputs[1] if add.inputs[0] == name else add.inputs[0]
        host = _host(graph, name, producers, consumers)
        if host is None or host.op == "BatchNormalization" or host.attrs.get("residual"):
            continue
        if other in graph.constants or other == name or graph.shape(other) != graph.shape(name):
            continue
        if host.op == "Gemm" and len(graph.shape(name)) != 2:
            continue
        return Fusion(name, {"residual": True}, {RESIDUAL: other})
    return None


def _bias(graph: Graph, add: Node, producers, consumers) -> Fusion | None:
    """Add(y, b) with a constant b of one value per output column, into a Gemm/MatMul without a bias
    (the exporter writes nn.Linear on more than two dimensions as MatMul + Add)."""
    for name in add.inputs:
        bias = add.inputs[1] if add.inputs[0] == name else add.inputs[0]
        host = _host(graph, name, producers, consumers)
        if host is None or host.op not in ("Gemm", "MatMul") or bias not in graph.constants:
            continue
        if len(host.inputs) > BIAS and host.inputs[BIAS] or host.attrs.get("residual"):
            continue
        columns = graph.shape(name)[-1]
        array = np.asarray(graph.constants[bias])
        if array.size not in (1, columns) or array.ndim > len(graph.shape(name)) or host.attrs.get("beta", 1.0) != 1.0:
            continue
        vector = f"{bias}__bias"
        per_column = np.broadcast_to(array.reshape(-1), (columns,)).astype(np.float32)
        return Fusion(name, {"bias_fused": True}, {BIAS: vector}, (), {vector: per_column})
    return None


def _silu(graph: Graph, mul: Node, producers, consumers) -> Fusion | None:
    """Mul(y, Sigmoid(y)) where the host's output y feeds exactly these two nodes."""
    for name, gate in (mul.inputs, mul.inputs[::-1]):
        sigmoid = producers.get(gate)
        if sigmoid is None or sigmoid.op != "Sigmoid" or sigmoid.inputs[0] != name or gate in graph.outputs:
            continue
        if len(consumers.get(gate, [])) != 1 or {id(n) for n in consumers.get(name, [])} != {id(mul), id(sigmoid)}:
            continue
        if _host(graph, name, producers, consumers, readers=2) is not None:
            return Fusion(name, {"activation": "silu"}, {}, (sigmoid,))
    return None


def _gelu(graph: Graph, last: Node, producers, consumers) -> Fusion | None:
    """Mul(Mul(y, Add(Erf(Div(y, sqrt 2)), 1)), 0.5): the exporter's GELU before opset 20."""
    times = producers.get(_operand_besides(graph, last, 0.5) or "")
    if times is None or times.op != "Mul":
        return None
    for name, gate in (times.inputs, times.inputs[::-1]):
        plus = producers.get(gate)
        erf = producers.get(_operand_besides(graph, plus, 1.0) or "") if plus and plus.op == "Add" else None
        div = producers.get(erf.inputs[0]) if erf and erf.op == "Erf" else None
        if div is None or div.op != "Div" or _operand_besides(graph, div, np.sqrt(2.0)) != name:
            continue
        if div.inputs[0] != name:  # sqrt(2) / y is not GELU
            continue
        chain = (times, plus, erf, div)
        if not all(graph.single_use(n.outputs[0], consumers) for n in chain):
            continue
        if {id(n) for n in consumers.get(name, [])} != {id(times), id(div)}:
            continue
        if _host(graph, name, producers, consumers, readers=2) is not None:
            return Fusion(name, {"activation": "gelu"}, {}, chain)
    return None


def _operand_besides(graph: Graph, node: Node, value: float) -> str | None:
    """The other input of a binary node one of whose inputs is the scalar constant `value`."""
    if len(node.inputs) != 2:
        return None
    for constant, other in (node.inputs, node.inputs[::-1]):
        array = graph.constants.get(constant)
        if array is not None and np.size(array) == 1 and np.isclose(float(np.ravel(array)[0]), value, rtol=1e-6):
            return other
    return None


def _host(graph: Graph, name: str, producers, consumers, readers: int = 1) -> Node | None:
    """The node producing `name` if its epilogue can still take an op reading `name`: a Conv, a
    Gemm, a MatMul by constant weights (a linear layer) or a BatchNormalization, with no activation."""
    host = producers.get(name)
    if host is None or host.op not in EPILOGUE_HOSTS or name in graph.outputs:
        return None
    if len(consumers.get(name, [])) != readers or host.attrs.get("activation"):
        return None
    if host.op == "MatMul" and (host.inputs[1] not in graph.constants or len(graph.shape(host.inputs[1])) != 2):
        return None
    return host
