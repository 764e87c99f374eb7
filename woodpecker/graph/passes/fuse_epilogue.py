"""Fuse bias, residual Add and an activation into the producing Conv or Gemm (the kernel's epilogue).

Conv -> [Add(other)] -> [activation] becomes one node: the add and activation run on the
accumulator while it is still in registers instead of in extra passes over memory.
Activations are those of `ops.activations`: Relu, Clip, Sigmoid, HardSigmoid, HardSwish, and
SiLU, which exported models spell as y * Sigmoid(y) (EfficientNet, RegNetY's SE blocks).
A BatchNormalization no convolution precedes (so it was not folded) takes an activation too.
"""

from __future__ import annotations

from woodpecker.graph.ir import Graph, Node
from woodpecker.ops import activations

EPILOGUE_HOSTS = ("Conv", "Gemm", "BatchNormalization")  # BatchNormalization: activations only


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
        found = _fusion(graph, node, producers, consumers)
        if found is None:
            continue
        host_input, extra_attrs, absorbed = found
        host = producers[host_input]
        attrs = dict(host.attrs) | extra_attrs
        inputs = list(host.inputs) + [""] * (3 - len(host.inputs))
        if node.op == "Add":
            inputs.append(node.inputs[1] if node.inputs[0] == host_input else node.inputs[0])
        fused = host.replace(inputs=tuple(inputs), outputs=node.outputs, attrs=attrs)
        # The fused node takes the consumer's place: every input it reads is ready there.
        graph.nodes[index] = fused
        for gone in (host, *absorbed):
            graph.nodes.remove(gone)
        return True
    return False


def _fusion(graph: Graph, node: Node, producers, consumers) -> tuple[str, dict, list[Node]] | None:
    """(the input of `node` that a fusable host produces, the attributes fusing adds to the host,
    the nodes besides the host that the fused node replaces), or None."""
    if node.op == "Add":
        for name in node.inputs:
            other = node.inputs[1] if node.inputs[0] == name else node.inputs[0]
            host = _host(graph, name, producers, consumers)
            if host is None or host.op == "BatchNormalization" or host.attrs.get("residual"):
                continue
            if other in graph.constants or other == name:
                continue
            if graph.shape(other) != graph.shape(name) or (host.op == "Gemm" and len(graph.shape(name)) != 2):
                continue
            return name, {"residual": True}, []
        return None
    if node.op == "Mul":
        return _silu(graph, node, producers, consumers)
    attrs = activations.of_node(node, graph.constants)
    if attrs is None or _host(graph, node.inputs[0], producers, consumers) is None:
        return None
    return node.inputs[0], attrs, []


def _silu(graph: Graph, mul: Node, producers, consumers) -> tuple[str, dict, list[Node]] | None:
    """Mul(y, Sigmoid(y)) where the host's output y feeds exactly these two nodes."""
    for name, gate in (mul.inputs, mul.inputs[::-1]):
        sigmoid = producers.get(gate)
        if sigmoid is None or sigmoid.op != "Sigmoid" or sigmoid.inputs[0] != name or gate in graph.outputs:
            continue
        if len(consumers.get(gate, [])) != 1 or {id(n) for n in consumers.get(name, [])} != {id(mul), id(sigmoid)}:
            continue
        if _host(graph, name, producers, consumers, readers=2) is not None:
            return name, {"activation": "silu"}, [sigmoid]
    return None


def _host(graph: Graph, name: str, producers, consumers, readers: int = 1) -> Node | None:
    """The Conv/Gemm producing `name`, if its epilogue can still take an op reading `name`."""
    host = producers.get(name)
    if host is None or host.op not in EPILOGUE_HOSTS or name in graph.outputs:
        return None
    if len(consumers.get(name, [])) != readers or host.attrs.get("activation"):
        return None
    return host
