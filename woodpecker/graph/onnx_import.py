"""Read an ONNX model into the IR: validate, infer static shapes, turn initializers into arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from woodpecker.errors import ModelError
from woodpecker.graph.ir import Graph, Node, Subgraph, Value

MIN_OPSET = 7
MAX_OPSET = 22


def load_onnx(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """Load and validate a model; every failure becomes a one-line ModelError."""
    if isinstance(model, onnx.ModelProto):
        proto = model
    else:
        path = Path(model)
        if not path.exists():
            raise ModelError(f"{path}: no such file")
        if path.is_dir():
            raise ModelError(f"{path}: is a directory, expected an .onnx file")
        try:
            proto = onnx.load(str(path))
        except Exception as exc:  # protobuf raises several unrelated types
            raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
        if not proto.graph.node:
            raise ModelError(f"{path}: not an ONNX model (no graph nodes found)")
    opset = default_opset(proto)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ModelError(f"unsupported opset {opset}: Woodpecker reads opsets {MIN_OPSET}..{MAX_OPSET}")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"invalid ONNX model: {first}") from None
    except UnicodeDecodeError:  # a name or string the checker reads is not UTF-8
        raise ModelError("invalid ONNX model: a name or string is not UTF-8") from None
    _check_text(proto.graph, "graph")
    return proto


def _check_text(message, where: str) -> None:
    """Every string field of `message` holds text: protobuf hands a string that is not UTF-8 over as
    bytes, which the checker lets through (a graph named b'\x99...')."""
    from google.protobuf.descriptor import FieldDescriptor

    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_STRING:
            texts = value if field.is_repeated else [value]
            if any(not isinstance(text, str) for text in texts):
                raise ModelError(f"invalid ONNX model: {where}.{field.name} is not UTF-8 text")
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value if field.is_repeated else [value]:
                _check_text(item, f"{where}.{field.name}")


def default_opset(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise ModelError("model imports no default-domain opset")


def import_model(model: str | Path | onnx.ModelProto, batch: int | None = None) -> Graph:
    """ONNX -> Graph with every value's shape known. `batch` overrides the first input dim.

    Every node of the model becomes a node of the graph, except Constant nodes (their values become
    constants) and nodes folded here because their outputs are known before any input arrives; the
    graph's `history` records how many were folded."""
    proto = load_onnx(model)
    proto = _infer_shapes(with_static_inputs(proto, batch))
    computing = sum(node.op_type != "Constant" for node in proto.graph.node)
    while not _all_static(proto) and _fold_known(proto):
        proto = _infer_shapes(proto)
    g = proto.graph
    constants = {init.name: tensor_array(init, f"initializer '{init.name}'") for init in g.initializer}
    values: dict[str, Value] = {}
    for info in list(g.input) + list(g.value_info) + list(g.output):
        if info.name in constants:
            continue
        values[info.name] = _value_from_info(info)
    for name, array in constants.items():
        values[name] = Value(name, tuple(array.shape), array.dtype.name)

    nodes: list[Node] = []
    for index, proto_node in enumerate(g.node):
        if proto_node.domain not in ("", "ai.onnx"):
            raise ModelError(
                f"node {proto_node.name or index} ({proto_node.op_type}): custom domain "
                f"'{proto_node.domain}' is not supported"
            )
        name = proto_node.name or f"{proto_node.op_type}_{index}"
        attrs = {a.name: _attribute(a) for a in proto_node.attribute}
        if proto_node.op_type == "Constant":
            array = _constant_value(name, attrs)
            constants[proto_node.output[0]] = array
            values[proto_node.output[0]] = Value(proto_node.output[0], tuple(array.shape), array.dtype.name)
            continue
        for out in proto_node.output:
            if out and out not in values:
                raise ModelError(f"node {name} ({proto_node.op_type}): shape of output '{out}' could not be inferred")
        inputs = tuple(proto_node.input)
        outer = [n for n in outer_names(proto_node) if n in values or n in constants]
        if outer:  # read by the node's subgraphs: inputs for liveness and for the ONNX Runtime segment
            inputs, attrs["outer_names"] = (*inputs, *outer), outer
        nodes.append(Node(name, proto_node.op_type, inputs, tuple(proto_node.output), attrs))
    inputs = [i.name for i in g.input if i.name not in constants]
    history = [("fold_known (import)", computing, len(nodes))] if len(nodes) != computing else []
    graph = Graph(nodes, values, inputs, [o.name for o in g.output], constants, default_opset(proto), g.name or "graph")
    graph.history = history
    return graph


def outer_names(node: onnx.NodeProto) -> list[str]:
    """The names a node's subgraphs read from enclosing scopes, in first-use order."""
    found: list[str] = []
    for attr in node.attribute:
        for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            defined = {i.name for i in [*sub.input, *sub.initializer]} | {o for n in sub.node for o in n.output}
            read = [name for inner in sub.node for name in [*inner.input, *outer_names(inner)]]
            for name in [*read, *(o.name for o in sub.output)]:  # a branch may return an outer value as it is
                if name and name not in defined and name not in found:
                    found.append(name)
    return found


def with_static_inputs(proto: onnx.ModelProto, batch: int | None) -> onnx.ModelProto:
    """Pin the batch dim (and reject other unknown dims) so every shape is static."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    initializers = {i.name for i in proto.graph.initializer}
    for inp in proto.graph.input:
        if inp.name in initializers:
            continue
        dims = inp.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if axis == 0 and batch is not None:
                dim.Clear()
                dim.dim_value = batch
            elif not dim.HasField("dim_value"):
                if axis == 0:
                    dim.Clear()
                    dim.dim_value = 1
                else:
                    raise ModelError(
                        f"input '{inp.name}' has a dynamic dimension {axis} "
                        f"('{dim.dim_param}'); only the batch dimension may be dynamic"
                    )
    # Outputs may carry a stale batch dimension; let inference recompute them.
    for out in proto.graph.output:
        if batch is not None and out.type.tensor_type.shape.dim:
            out.type.tensor_type.shape.dim[0].Clear()
    del proto.graph.value_info[:]
    return proto


def _infer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise ModelError(f"shape inference failed: {str(exc).strip().splitlines()[0]}") from None


def _all_static(proto: onnx.ModelProto) -> bool:
    """Whether every node output has a fully known shape."""
    g = proto.graph
    static = {i.name for i in [*g.input, *g.value_info, *g.output] if _static(i)}
    return all(out in static for node in g.node for out in node.output if out)


def _static(info: onnx.ValueInfoProto) -> bool:
    shape = info.type.tensor_type.shape
    return info.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in shape.dim)


def _fold_known(proto: onnx.ModelProto) -> bool:
    """Replace the nodes whose outputs are known before any input arrives (constants, and shape
    arithmetic on values of known shape) by initializers. ONNX's shape inference stops at a Reshape
    whose target is computed, Shape -> Gather -> Div -> Cast -> Concat (ShuffleNet's channel
    shuffle); folding lets the next round see through it. Returns whether anything was folded."""
    from woodpecker.graph.passes.fold_constants import evaluate, too_large

    g = proto.graph
    known = {i.name: tensor_array(i, f"initializer '{i.name}'") for i in g.initializer}
    shapes = {
        i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in [*g.input, *g.value_info] if _static(i)
    }
    opsets = list(proto.opset_import)
    kept, folded = [], []
    for node in g.node:
        if has_subgraphs(node):  # runs whole on ONNX Runtime; its subgraphs may read the inputs
            kept.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Shape" and node.input[0] in shapes:
            full = np.array(shapes[node.input[0]], np.int64)
            results = [full[attrs.get("start", 0) : attrs.get("end")]]
        elif node.op_type not in ("RandomNormal", "RandomUniform") and all(n in known for n in node.input if n):
            inputs = [n for n in node.input if n]
            model = helper.make_model(
                helper.make_graph(
                    [node],
                    "fold",
                    [
                        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(known[n].dtype), None)
                        for n in inputs
                    ],
                    [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in node.output],
                ),
                opset_imports=opsets,
            )
            results = evaluate(model, {n: known[n] for n in inputs}, f"{node.name} ({node.op_type})")
            if too_large(results):  # left a node, as the folding pass does
                kept.append(node)
                continue
        else:
            kept.append(node)
            continue
        for name, result in zip(node.output, results):
            known[name] = np.asarray(result)
        folded.extend(node.output)
    if not folded:
        return False
    used = {n for node in kept for n in node.input} | {o.name for o in g.output}
    del g.node[:]
    g.node.extend(kept)
    g.initializer.extend(numpy_helper.from_array(known[n], n) for n in folded if n in used)
    del g.value_info[:]
    return True


def has_subgraphs(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _value_from_info(info: onnx.ValueInfoProto) -> Value:
    tensor = info.type.tensor_type
    shape = []
    for dim in tensor.shape.dim:
        if not dim.HasField("dim_value"):
            raise ModelError(f"value '{info.name}' has a dynamic shape after inference")
        shape.append(dim.dim_value)
    dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    return Value(info.name, tuple(shape), dtype)


def tensor_array(tensor: onnx.TensorProto, what: str) -> np.ndarray:
    """A TensorProto's values; data that does not fit its declared type and shape is a ModelError."""
    try:
        return numpy_helper.to_array(tensor)
    except Exception as exc:  # onnx raises ValueError, TypeError, KeyError... for damaged tensors
        raise ModelError(f"{what}: unreadable tensor ({type(exc).__name__}: {exc})") from None


def _attribute(attr: onnx.AttributeProto):
    if attr.type == onnx.AttributeProto.GRAPH:
        return Subgraph(attr.g.SerializeToString())
    if attr.type == onnx.AttributeProto.GRAPHS:
        return [Subgraph(g.SerializeToString()) for g in attr.graphs]
    value = helper.get_attribute_value(attr)
    if isinstance(value, onnx.TensorProto):
        return tensor_array(value, f"attribute '{attr.name}'")
    try:
        if isinstance(value, bytes):
            return value.decode()
        if isinstance(value, list):
            return [v.decode() if isinstance(v, bytes) else v for v in value]
    except UnicodeDecodeError:
        raise ModelError(f"attribute '{attr.name}': a string that is not UTF-8") from None
    return value


def _constant_value(name: str, attrs: dict) -> np.ndarray:
    if "value" in attrs:
        return np.asarray(attrs["value"])
    for key, dtype in (
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    ):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    raise ModelError(f"node {name} (Constant): unsupported constant attribute {sorted(attrs)}")
