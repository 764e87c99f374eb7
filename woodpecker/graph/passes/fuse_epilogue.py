"""Fuse bias, residual Add and ReLU/Clip into the producing Conv or Gemm (the kernel's epilogue).

Conv -> [Add(other)] -> [Relu | Clip] becomes one node: the add and activation run on the
accumulator while it is still in registers instead of in extra passes over memory.
"""

from __future__ import annotations

from woodpecker.graph.ir import Graph, Node

EPILOGUE_HOSTS = ("Conv", "Gemm")


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
        host_input = _host_input(graph, node, producers, consumers)
        if host_input is None:
            continue
        host = producers[host_input]
        attrs = dict(host.attrs)
        inputs = list(host.inputs) + [""] * (3 - len(host.inputs))
        if node.op == "Add":
            other = node.inputs[1] if node.inputs[0] == host_input else node.inputs[0]
            inputs.append(other)
            attrs["residual"] = True
        elif node.op == "Relu":
            attrs["activation"] = "relu"
        else:
            lo, hi = _clip_bounds(graph, node)
            attrs.update(activation="clip", clip_min=lo, clip_max=hi)
        fused = host.replace(inputs=tuple(inputs), outputs=node.outputs, attrs=attrs)
        # The fused node takes the consumer's place: every input it reads is ready there.
        graph.nodes[index] = fused
        graph.nodes.remove(host)
        return True
    return False


def _host_input(graph: Graph, node: Node, producers, consumers) -> str | None:
    """The input of `node` that comes from a Conv/Gemm it can be fused into, if any."""
    if node.op == "Add":
        candidates = list(node.inputs)
    elif node.op == "Relu" or (node.op == "Clip" and _clip_bounds(graph, node) is not None):
        candidates = [node.inputs[0]]
    else:
        return None
    for name in candidates:
        host = producers.get(name)
        if host is None or host.op not in EPILOGUE_HOSTS or name in graph.outputs:
            continue
        if len(consumers.get(name, [])) != 1 or host.attrs.get("activation"):
            continue
        if node.op == "Add":
            if host.attrs.get("residual"):
                continue
            other = node.inputs[1] if node.inputs[0] == name else node.inputs[0]
            if other in graph.constants or graph.shape(other) != graph.shape(name) or other == name:
                continue
            if host.op == "Gemm" and len(graph.shape(name)) != 2:
                continue
        return name
    return None


def _clip_bounds(graph: Graph, node: Node) -> tuple[float, float] | None:
    """Clip's min/max as floats, or None when they are not plan-time constants."""
    if "min" in node.attrs or "max" in node.attrs:  # opset < 11
        return float(node.attrs.get("min", -3.4e38)), float(node.attrs.get("max", 3.4e38))
    bounds = []
    for position, default in ((1, -3.4e38), (2, 3.4e38)):
        name = node.inputs[position] if len(node.inputs) > position else ""
        if not name:
            bounds.append(default)
        elif name in graph.constants:
            bounds.append(float(graph.constants[name]))
        else:
            return None
    return bounds[0], bounds[1]
