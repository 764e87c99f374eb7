"""Fuse scaled dot-product attention into one FusedAttention node.

    [Transpose] q -> [Mul/Div by a scalar] --.
                                              MatMul -> [Mul/Div by a scalar] -> [Add mask] -> Softmax
    [Transpose] k -> [Mul/Div by a scalar] --'        -> [Where(IsNaN(p), 0, p)] -> MatMul(p, v) -> [Transpose]
    [Transpose] v ---------------------------------------------------------------------'

as exported by PyTorch's scaled_dot_product_attention and by hand-written attention (BERT, ViT,
DistilBERT, timm). The fused node reads q, k and v where the heads are still interleaved ([B, S,
H, D] before the exporter's Transposes) and writes the output the last Transpose wrote, so the
head split and merge cost no pass over memory; its kernel never writes the score matrix out.

Attributes: `q_perm`, `k_perm`, `v_perm` take each input to [B, H, Sq, D], [B, H, D, Sk] and
[B, H, Sk, Dv] (as Transpose's `perm`); `out_perm` takes the [B, H, Sq, Dv] result to the output;
`scale` multiplies the scores; `nan_to_zero` replaces NaN probabilities (a row masked out
entirely) with 0. The optional fourth input is added to the scaled scores (broadcast).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from woodpecker.graph.ir import Graph, Node, broadcasts_to
from woodpecker.ops.fused import ATTENTION

IDENTITY = (0, 1, 2, 3)


@dataclass
class _Operand:
    source: str  # the value the fused node reads
    perm: tuple[int, ...]  # its Transpose into the attention's order
    scale: float  # scalar factors met on the way
    absorbed: list[Node]


def fuse_attention(graph: Graph) -> Graph:
    out = graph.copy()
    changed = True
    while changed:
        changed = False
        producers, consumers = out.producers(), out.consumers()
        for softmax in out.nodes:
            fused = _match(out, softmax, producers, consumers) if softmax.op == "Softmax" else None
            if fused is not None:
                node, absorbed = fused
                out.replace_nodes(absorbed, node)
                changed = True
                break
    return out


def _match(graph: Graph, softmax: Node, producers, consumers) -> tuple[Node, list[Node]] | None:
    scores = softmax.inputs[0]
    if len(graph.shape(scores)) != 4 or softmax.attrs.get("axis", -1) % 4 != 3:
        return None
    if graph.values[scores].dtype != "float32" or not graph.single_use(scores, consumers):
        return None
    absorbed = [softmax]
    mask = ""
    node = producers.get(scores)
    if node is not None and node.op == "Add":
        for own, other in (node.inputs, node.inputs[::-1]):
            if _reaches_matmul(graph, own, producers) and graph.single_use(own, consumers) and own != other:
                mask, scores = other, own
                absorbed.append(node)
                break
        else:
            return None
    scaled = _through_scalars(graph, scores, producers, consumers)
    first = producers.get(scaled.source)
    if first is None or first.op != "MatMul" or not graph.single_use(scaled.source, consumers):
        return None
    absorbed += [*scaled.absorbed, first]
    q = _operand(graph, first.inputs[0], producers, consumers)
    k = _operand(graph, first.inputs[1], producers, consumers)
    probabilities, nan_to_zero = _after_softmax(graph, softmax, producers, consumers)
    if probabilities is None:
        return None
    second = consumers[probabilities][0]
    if second.op != "MatMul" or second.inputs[0] != probabilities or second.inputs[1] == probabilities:
        return None
    absorbed += nan_to_zero + [second]
    v = _operand(graph, second.inputs[1], producers, consumers, scalars=False)
    output, out_perm = second.outputs[0], IDENTITY
    reader = consumers[output][0] if graph.single_use(output, consumers) else None
    if reader is not None and reader.op == "Transpose" and len(reader.attrs.get("perm", ())) == 4:
        output, out_perm = reader.outputs[0], tuple(reader.attrs["perm"])
        absorbed.append(reader)
    if not _shapes_fit(graph, q, k, v, mask, first, second):
        return None
    absorbed += q.absorbed + k.absorbed + v.absorbed
    attrs = {
        "q_perm": list(q.perm),
        "k_perm": list(k.perm),
        "v_perm": list(v.perm),
        "out_perm": list(out_perm),
        "scale": float(np.float32(q.scale * k.scale * scaled.scale)),
        "nan_to_zero": int(bool(nan_to_zero)),
    }
    inputs = (q.source, k.source, v.source) + ((mask,) if mask else ())
    return Node(second.name, ATTENTION, inputs, (output,), attrs), absorbed


def _reaches_matmul(graph: Graph, name: str, producers) -> bool:
    node = producers.get(name)
    while node is not None and node.op in ("Mul", "Div") and _scalar(graph, node) is not None:
        node = producers.get(_scalar(graph, node)[0])
    return node is not None and node.op == "MatMul"


def _scalar(graph: Graph, node: Node) -> tuple[str, float] | None:
    """(the other input, its factor) for a Mul or Div of a run-time value by a scalar constant."""
    for value, constant in (node.inputs, node.inputs[::-1]):
        array = graph.constants.get(constant)
        if array is None or np.size(array) != 1 or value in graph.constants or array.dtype != np.float32:
            continue
        factor = float(np.ravel(array)[0])
        if node.op == "Mul":
            return value, factor
        if node.op == "Div" and constant == node.inputs[1] and factor != 0:
            return value, 1.0 / factor
    return None


def _through_scalars(graph: Graph, name: str, producers, consumers) -> _Operand:
    """Back from `name` through single-use multiplications and divisions by scalar constants."""
    scale, absorbed = 1.0, []
    node = producers.get(name)
    while node is not None and node.op in ("Mul", "Div") and graph.single_use(name, consumers):
        found = _scalar(graph, node)
        if found is None:
            break
        absorbed.append(node)
        name, factor = found
        scale *= factor
        node = producers.get(name)
    return _Operand(name, IDENTITY, scale, absorbed)


def _operand(graph: Graph, name: str, producers, consumers, scalars: bool = True) -> _Operand:
    """q, k or v: back through scalar factors and a Transpose that only the attention reads."""
    operand = _through_scalars(graph, name, producers, consumers) if scalars else _Operand(name, IDENTITY, 1.0, [])
    node = producers.get(operand.source)
    if (
        node is not None
        and node.op == "Transpose"
        and len(node.attrs.get("perm", ())) == 4
        and graph.single_use(operand.source, consumers)
    ):
        return _Operand(node.inputs[0], tuple(node.attrs["perm"]), operand.scale, [*operand.absorbed, node])
    return operand


def _after_softmax(graph: Graph, softmax: Node, producers, consumers) -> tuple[str | None, list[Node]]:
    """The probabilities the second MatMul reads: the Softmax's output, or Where(IsNaN(p), 0, p)."""
    p = softmax.outputs[0]
    readers = consumers.get(p, [])
    if p in graph.outputs:
        return None, []
    if len(readers) == 1:
        return p, []
    if len(readers) != 2:
        return None, []
    isnan = next((n for n in readers if n.op == "IsNaN"), None)
    where = next((n for n in readers if n.op == "Where"), None)
    if isnan is None or where is None or not graph.single_use(isnan.outputs[0], consumers):
        return None, []
    zero = graph.constants.get(where.inputs[1])
    if where.inputs[0] != isnan.outputs[0] or where.inputs[2] != p or zero is None or np.size(zero) != 1:
        return None, []
    if float(np.ravel(zero)[0]) != 0.0 or not graph.single_use(where.outputs[0], consumers):
        return None, []
    return where.outputs[0], [isnan, where]


def _shapes_fit(graph: Graph, q: _Operand, k: _Operand, v: _Operand, mask: str, first: Node, second: Node) -> bool:
    """Four-dimensional float32 operands with one batch and head count, the mask broadcasting to the scores."""
    shapes = [graph.shape(o.source) for o in (q, k, v)]
    if any(len(s) != 4 or graph.values[o.source].dtype != "float32" for s, o in zip(shapes, (q, k, v))):
        return False
    q4, kt4, v4 = (tuple(s[i] for i in o.perm) for s, o in zip(shapes, (q, k, v)))
    if q4[:2] != kt4[:2] or q4[:2] != v4[:2] or q4[3] != kt4[2] or kt4[3] != v4[2]:
        return False
    if graph.shape(first.outputs[0]) != (*q4[:3], kt4[3]) or graph.shape(second.outputs[0]) != (*q4[:3], v4[3]):
        return False
    if not mask:
        return True
    scores = graph.shape(first.outputs[0])
    mask_shape = graph.shape(mask)
    return graph.values[mask].dtype == "float32" and len(mask_shape) <= 4 and broadcasts_to(mask_shape, scores)
