"""IR -> ONNX: whole graphs (for reference runs) and one-node models (for library kernels).

Fused epilogues are expanded back into standard ONNX ops, so ONNX Runtime and OpenVINO can
run any node of an optimized graph. Layouts: inside the model every value is plain NCHW (a
Relayout node is an Identity); a blocked input or output of the model keeps its stored
(N, C/b, H, W, b) shape and is converted at the boundary, so a library kernel reads and writes
the executor's blocked buffers and pays for the conversion in its own measured time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from woodpecker.graph.ir import Graph, Node, Subgraph
from woodpecker.ops import activations
from woodpecker.ops.conv import BIAS, DEPTHWISE_BIAS, DEPTHWISE_WEIGHT, RESIDUAL, SCALE
from woodpecker.ops.fused import ATTENTION, GROUP_NORM

FUSABLE_OPS = ("Conv", "Gemm", "MatMul", "BatchNormalization")


@dataclass(frozen=True)
class ExternalTensor:
    """Where a weight's bytes sit in a file: what an initializer stored as ONNX external data records."""

    location: str  # the file's name, relative to the model that refers to it
    offset: int
    length: int
    dtype: str
    shape: tuple[int, ...]


def expand_node(node: Node) -> list[onnx.NodeProto]:
    """ONNX nodes computing `node`, with its fused input scale, bias, residual add and activation unfused."""
    attrs = {k: v for k, v in node.attrs.items() if k not in _WPK_ATTRS}
    if node.has_subgraphs:
        return [_subgraph_node(node, attrs)]
    if node.op == "Relayout":  # changes the bytes' order only; values are logical NCHW in ONNX
        return [helper.make_node("Identity", list(node.inputs), list(node.outputs), name=node.name)]
    if node.op == ATTENTION:
        return _attention_nodes(node)
    if node.op == GROUP_NORM:
        return _group_norm_nodes(node)
    if node.op not in FUSABLE_OPS or not node.fused:
        return [helper.make_node(node.op, list(node.explicit_inputs), list(node.outputs), name=node.name, **attrs)]
    out = node.outputs[0]
    main_inputs = list(
        {"Conv": node.inputs[:3], "Gemm": node.inputs[:3], "MatMul": node.inputs[:2]}.get(node.op, node.inputs)
    )
    protos = []
    # A fused stage before the op (a depthwise Conv before a 1x1, a 1x1 expansion before a depthwise
    # Conv): a Conv on the input with the weights and bias at inputs 5 and 6, then its activation.
    for key, short in (("depthwise", "dw"), ("expand", "pw")):
        if not node.attrs.get(key):
            continue
        stage = node.attrs[key]
        conv_attrs = {k: v for k, v in stage.items() if k not in activations.PARAMETERS}
        stage_inputs = [node.inputs[0], node.inputs[DEPTHWISE_WEIGHT]] + (
            [node.inputs[DEPTHWISE_BIAS]] if node.inputs[DEPTHWISE_BIAS] else []
        )
        name = f"{node.name}/{key}"
        protos.append(helper.make_node("Conv", stage_inputs, [f"{out}__{short}"], name=name, **conv_attrs))
        main_inputs[0] = f"{out}__{short}"
        if stage.get("activation"):
            protos += activations.onnx_nodes(stage, f"{out}__{short}", f"{out}__{short}_act", name)
            main_inputs[0] = f"{out}__{short}_act"
    if node.attrs.get("input_scale"):  # the input multiplied by its per-channel scale first
        scaled = f"{out}__scaled"
        protos.append(
            helper.make_node("Mul", [node.inputs[0], node.inputs[SCALE]], [scaled], name=f"{node.name}/scale")
        )
        main_inputs[0] = scaled
    current = f"{out}__main"
    protos.append(helper.make_node(node.op, main_inputs, [current], name=node.name, **attrs))
    if node.op == "MatMul" and len(node.inputs) > 2 and node.inputs[2]:  # a fused bias
        protos.append(helper.make_node("Add", [current, node.inputs[BIAS]], [f"{out}__bias"], name=f"{node.name}/bias"))
        current = f"{out}__bias"
    if node.attrs.get("residual"):
        protos.append(
            helper.make_node("Add", [current, node.inputs[RESIDUAL]], [f"{out}__add"], name=f"{node.name}/add")
        )
        current = f"{out}__add"
    if node.attrs.get("activation"):
        protos += activations.onnx_nodes(node.attrs, current, f"{out}__act", node.name)
        current = f"{out}__act"
    if node.attrs.get("pool"):
        pool = dict(node.attrs["pool"])
        protos.append(helper.make_node(pool.pop("op"), [current], [f"{out}__pool"], name=f"{node.name}/pool", **pool))
    protos[-1].output[0] = out
    return protos


def _attention_nodes(node: Node) -> list[onnx.NodeProto]:
    """A FusedAttention node as the Transposes, MatMuls, Softmax and mask arithmetic it replaced."""
    name, out = node.name, node.outputs[0]
    protos = []

    def add(op: str, inputs: list[str], label: str, **attrs) -> str:
        protos.append(helper.make_node(op, inputs, [f"{out}__{label}"], name=f"{name}/{label}", **attrs))
        return f"{out}__{label}"

    def transposed(value: str, perm: list[int], label: str) -> str:
        return value if list(perm) == [0, 1, 2, 3] else add("Transpose", [value], label, perm=perm)

    def constant(value: float, label: str) -> str:
        return add("Constant", [], label, value=numpy_helper.from_array(np.array(value, np.float32)))

    q = transposed(node.inputs[0], node.attrs["q_perm"], "q")
    k = transposed(node.inputs[1], node.attrs["k_perm"], "k")
    v = transposed(node.inputs[2], node.attrs["v_perm"], "v")
    scores = add("MatMul", [q, k], "scores")
    if node.attrs["scale"] != 1.0:
        scores = add("Mul", [scores, constant(node.attrs["scale"], "scale")], "scaled")
    if len(node.inputs) > 3 and node.inputs[3]:
        scores = add("Add", [scores, node.inputs[3]], "masked")
    p = add("Softmax", [scores], "softmax", axis=-1)
    if node.attrs["nan_to_zero"]:
        p = add("Where", [add("IsNaN", [p], "isnan"), constant(0.0, "zero"), p], "p")
    add("MatMul", [p, v], "o")
    if list(node.attrs["out_perm"]) != [0, 1, 2, 3]:
        add("Transpose", [f"{out}__o"], "out", perm=node.attrs["out_perm"])
    protos[-1].output[0] = out
    return protos


def _group_norm_nodes(node: Node) -> list[onnx.NodeProto]:
    """A FusedGroupNorm node as exporters write GroupNorm: Reshape, InstanceNormalization, Reshape,
    then the per-channel scale and shift."""
    name, out = node.name, node.outputs[0]
    x, scale, bias = node.inputs[:3]
    groups, rank = node.attrs["groups"], node.attrs["rank"]
    protos = []

    def add(op: str, inputs: list[str], label: str, **attrs) -> str:
        protos.append(helper.make_node(op, inputs, [f"{out}__{label}"], name=f"{name}/{label}", **attrs))
        return f"{out}__{label}"

    def constant(array: np.ndarray, label: str) -> str:
        return add("Constant", [], label, value=numpy_helper.from_array(array))

    grouped = add("Reshape", [x, constant(np.array([0, groups, -1], np.int64), "grouped_shape")], "grouped")
    ones, zeros = np.ones(groups, np.float32), np.zeros(groups, np.float32)
    normed = add(
        "InstanceNormalization",
        [grouped, constant(ones, "ones"), constant(zeros, "zeros")],
        "normalized",
        epsilon=node.attrs["epsilon"],
    )
    back = add("Reshape", [normed, add("Shape", [x], "shape")], "back")
    per_channel = constant(np.array([-1] + [1] * (rank - 2), np.int64), "per_channel")
    scaled = add("Mul", [back, add("Reshape", [scale, per_channel], "scale")], "scaled")
    add("Add", [scaled, add("Reshape", [bias, per_channel], "bias")], "out")
    protos[-1].output[0] = out
    return protos


_WPK_ATTRS = {
    *activations.PARAMETERS,
    *("residual", "bias_folded", "bias_fused", "input_scale", "pool", "depthwise", "expand", "outer_names"),
}


def _subgraph_node(node: Node, attrs: dict) -> onnx.NodeProto:
    """An If, Loop or Scan node, its subgraphs reading the outer values by the names they have now."""
    outer = node.attrs.get("outer_names", [])
    renamed = {old: new for old, new in zip(outer, node.inputs[len(node.inputs) - len(outer) :]) if old != new}
    for key, value in attrs.items():
        if isinstance(value, Subgraph):
            attrs[key] = _renamed(onnx.GraphProto.FromString(value.proto), renamed)
        elif isinstance(value, list) and any(isinstance(v, Subgraph) for v in value):
            attrs[key] = [_renamed(onnx.GraphProto.FromString(v.proto), renamed) for v in value]
    return helper.make_node(node.op, list(node.explicit_inputs), list(node.outputs), name=node.name, **attrs)


def _renamed(graph: onnx.GraphProto, names: dict[str, str]) -> onnx.GraphProto:
    """`graph` reading outer values by new `names`; a name the graph defines itself hides the outer one."""
    own = {i.name for i in [*graph.input, *graph.initializer]} | {o for n in graph.node for o in n.output}
    names = {old: new for old, new in names.items() if old not in own}
    if not names:
        return graph
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                attr.g.CopyFrom(_renamed(attr.g, names))
            for sub in attr.graphs:
                sub.CopyFrom(_renamed(sub, names))
    for output in graph.output:  # a branch may return an outer value as it is
        output.name = names.get(output.name, output.name)
    return graph


def graph_to_onnx(
    graph: Graph,
    nodes: list[Node] | None = None,
    inputs: list[str] | None = None,
    outputs: list[str] | None = None,
    external: Mapping[str, ExternalTensor] | None = None,
) -> onnx.ModelProto:
    """A model of `nodes` (default: all). Constants they read become initializers; those in
    `external` refer to their bytes in a weights file instead of holding a copy."""
    nodes = graph.nodes if nodes is None else nodes
    inputs = graph.inputs if inputs is None else inputs
    outputs = graph.outputs if outputs is None else outputs
    used = {name for node in nodes for name in node.inputs if name}
    protos = [p for node in nodes for p in expand_node(node)]
    blocked = [n for n in dict.fromkeys(inputs + outputs) if graph.values[n].block]
    shapes: list[onnx.TensorProto] = []
    if blocked:
        protos = _convert_at_boundary(graph, protos, inputs, blocked, shapes)
    proto_graph = helper.make_graph(
        protos, graph.name, [_info(graph, n) for n in inputs], [_info(graph, n) for n in outputs], shapes
    )
    model = helper.make_model(
        proto_graph, opset_imports=[helper.make_opsetid("", graph.opset)], producer_name="woodpecker"
    )
    model.ir_version = min(model.ir_version, 10)
    # Weights go straight into the model, one at a time: make_graph and make_model each copy what
    # they are given, which for ResNet-50 held the weights four times over at once.
    for name in sorted(used):
        if external and name in external and name not in inputs and _may_stay_external(external[name]):
            model.graph.initializer.append(_external_initializer(name, external[name]))
        elif name in graph.constants and name not in inputs:
            model.graph.initializer.add().CopyFrom(numpy_helper.from_array(np.asarray(graph.constants[name]), name))
    return model


def _may_stay_external(place: ExternalTensor) -> bool:
    """Integer constants (Reshape targets, axes, indices) are copied into the model: ONNX Runtime's shape
    inference reads them while loading and cannot read them from an external file."""
    return np.dtype(place.dtype).kind == "f"


def _external_initializer(name: str, place: ExternalTensor) -> onnx.TensorProto:
    tensor = onnx.TensorProto(name=name, dims=place.shape, data_location=onnx.TensorProto.EXTERNAL)
    tensor.data_type = helper.np_dtype_to_tensor_dtype(np.dtype(place.dtype))
    for key, value in (("location", place.location), ("offset", place.offset), ("length", place.length)):
        tensor.external_data.add(key=key, value=str(value))
    return tensor


def node_model(graph: Graph, node: Node) -> onnx.ModelProto:
    """A one-node model whose inputs are the node's non-constant inputs."""
    inputs = [n for n in node.inputs if n and n not in graph.constants]
    return graph_to_onnx(graph, [node], inputs, list(node.outputs))


def _convert_at_boundary(
    graph: Graph, protos: list[onnx.NodeProto], inputs: list[str], blocked: list[str], initializers: list
) -> list[onnx.NodeProto]:
    """Inside the model, blocked boundary values go by `<name>__wpk_plain`; Transpose + Reshape nodes
    convert them from the stored blocked array (inputs) or into it (outputs)."""
    plain = {n: f"{n}__wpk_plain" for n in blocked}
    for proto in protos:
        proto.input[:] = [plain.get(n, n) for n in proto.input]
        proto.output[:] = [plain.get(n, n) for n in proto.output]
    before, after = [], []
    for n in blocked:
        n_, c, h, w = graph.values[n].shape
        b = graph.values[n].block
        shape = [n_, c, h, w] if n in inputs else [n_, c // b, b, h, w]
        initializers.append(numpy_helper.from_array(np.array(shape, np.int64), f"{n}__wpk_shape"))
        if n in inputs:  # (N, C/b, H, W, b) -> (N, C/b, b, H, W) -> (N, C, H, W)
            before.append(helper.make_node("Transpose", [n], [f"{n}__wpk_t"], perm=[0, 1, 4, 2, 3]))
            before.append(helper.make_node("Reshape", [f"{n}__wpk_t", f"{n}__wpk_shape"], [plain[n]]))
        else:  # (N, C, H, W) -> (N, C/b, b, H, W) -> (N, C/b, H, W, b)
            after.append(helper.make_node("Reshape", [plain[n], f"{n}__wpk_shape"], [f"{n}__wpk_split"]))
            after.append(helper.make_node("Transpose", [f"{n}__wpk_split"], [n], perm=[0, 1, 3, 4, 2]))
    return before + protos + after


def _info(graph: Graph, name: str) -> onnx.ValueInfoProto:
    value = graph.values[name]
    dtype = helper.np_dtype_to_tensor_dtype(np.dtype(value.dtype))
    return helper.make_tensor_value_info(name, dtype, value.stored_shape)
