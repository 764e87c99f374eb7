"""Evaluate at plan time every node whose inputs are all known: constants, and shapes.

Weights never change at inference, so Shape/Gather/Concat/Unsqueeze chains, weight
Identity/Transpose and the like become constants. Evaluation uses ONNX Runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from woodpecker.errors import ModelError
from woodpecker.graph.ir import Graph, Value

if TYPE_CHECKING:  # imported when used: running a saved plan imports graph.passes but never folds
    import onnx

MAX_FOLDED_BYTES = 64 << 20  # never materialize a huge constant (e.g. ConstantOfShape blow-up)


def fold_constants(graph: Graph) -> Graph:
    from woodpecker.graph.onnx_export import graph_to_onnx

    out = graph.copy()
    kept = []
    for node in out.nodes:
        if node.op == "Shape" and node.inputs[0] not in out.constants:
            shape = np.array(out.shape(node.inputs[0]), dtype=np.int64)
            start, end = node.attrs.get("start", 0), node.attrs.get("end")
            out.constants[node.outputs[0]] = shape[start:end]
            continue
        if not _foldable(out, node):
            kept.append(node)
            continue
        model = graph_to_onnx(out, [node], inputs=[], outputs=list(node.outputs))
        results = evaluate(model, {}, f"{node.name} ({node.op})")
        if too_large(results):
            kept.append(node)
            continue
        for name, result in zip(node.outputs, results):
            array = np.asarray(result)
            out.constants[name] = array
            out.values[name] = Value(name, tuple(array.shape), array.dtype.name)
    out.nodes = kept
    return out


def too_large(results: list) -> bool:
    """Whether folded results would exceed MAX_FOLDED_BYTES (the node is then kept)."""
    return sum(np.asarray(r).nbytes for r in results) > MAX_FOLDED_BYTES


def evaluate(model: onnx.ModelProto, feeds: dict[str, np.ndarray], node: str) -> list:
    """`model`'s outputs by ONNX Runtime (the reference every plan is checked against, NaN and all), or
    by ONNX's reference runtime for what ONNX Runtime cannot run; a failure names `node` in a ModelError."""
    import onnx
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    typed = onnx.shape_inference.infer_shapes(model)
    inferred = {v.name: v for v in typed.graph.value_info}
    for i, out in enumerate(typed.graph.output):  # ONNX Runtime wants every output's element type
        if out.name in inferred:
            typed.graph.output[i].CopyFrom(inferred[out.name])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(typed.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run(None, feeds)
    except Exception as ort_error:
        try:
            return ReferenceEvaluator(model).run(None, feeds)
        except Exception:
            reason = str(ort_error).strip().splitlines()[0]
            raise ModelError(f"node {node}: constant folding failed: {reason}") from None


def _foldable(graph: Graph, node) -> bool:
    """All inputs are constants (a node without inputs folds unless it is random); a node with
    subgraphs never folds: it runs whole on ONNX Runtime."""
    if node.has_subgraphs:
        return False
    real_inputs = [n for n in node.inputs if n]
    if not real_inputs:
        return node.op not in ("RandomNormal", "RandomUniform")
    return all(n in graph.constants for n in real_inputs)
