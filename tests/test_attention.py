"""Fused attention: the pass finds the exported forms, and the kernel computes what the unfused graph
computes (ONNX Runtime on the original model), masked and unmasked, over several sequence lengths,
NaN and infinities included."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from conftest import const, make_model, tensor
from onnx import helper
from test_kernels import assert_kernel_family

from woodpecker.graph.onnx_import import import_model
from woodpecker.graph.passes import optimize_graph
from woodpecker.kernels import registry
from woodpecker.kernels.workload import Workload
from woodpecker.ops.fused import ATTENTION


def attention_model(
    batch=1, seq=16, heads=2, depth=8, keys=None, mask=None, style="sdpa", nan_to_zero=True, value_depth=None
):
    """Attention as exporters write it. sdpa: q and kᵀ scaled by sqrt(sqrt(1/d)) before the MatMul,
    heads split by Transposes of [B, S, H, D] inputs, Where(IsNaN) after the Softmax; classic: the
    scores divided by sqrt(d) (hand-written BERT attention), q, k, v given as [B, H, S, D]."""
    keys = keys or seq
    value_depth = value_depth or depth
    nodes, inits = [], []
    root = np.float32((1.0 / depth) ** 0.25)
    if style == "sdpa":
        inputs = [
            tensor("q", [batch, seq, heads, depth]),
            tensor("k", [batch, keys, heads, depth]),
            tensor("v", [batch, keys, heads, value_depth]),
        ]
        nodes += [
            helper.make_node("Transpose", ["q"], ["qt"], perm=[0, 2, 1, 3]),
            helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 3, 1]),
            helper.make_node("Transpose", ["v"], ["vt"], perm=[0, 2, 1, 3]),
            helper.make_node("Mul", ["qt", "root"], ["qs"]),
            helper.make_node("Mul", ["kt", "root"], ["ks"]),
            helper.make_node("MatMul", ["qs", "ks"], ["scores"]),
        ]
        inits.append(const("root", np.array(root)))
        value = "vt"
    else:
        inputs = [
            tensor("q", [batch, heads, seq, depth]),
            tensor("k", [batch, heads, keys, depth]),
            tensor("v", [batch, heads, keys, value_depth]),
        ]
        nodes += [
            helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", ["q", "kt"], ["raw"]),
            helper.make_node("Div", ["raw", "sqrt_d"], ["scores"]),
        ]
        inits.append(const("sqrt_d", np.array(np.float32(np.sqrt(depth)))))
        value = "v"
    logits = "scores"
    if mask is not None:
        inputs.append(tensor("mask", list(mask)))
        nodes.append(helper.make_node("Add", ["scores", "mask"], ["masked"]))
        logits = "masked"
    nodes.append(helper.make_node("Softmax", [logits], ["p"], axis=-1))
    probabilities = "p"
    if nan_to_zero:
        nodes += [
            helper.make_node("IsNaN", ["p"], ["nan"]),
            helper.make_node("Where", ["nan", "zero", "p"], ["p0"]),
        ]
        inits.append(const("zero", np.array(np.float32(0))))
        probabilities = "p0"
    nodes.append(helper.make_node("MatMul", [probabilities, value], ["o"]))
    if style == "sdpa":
        nodes.append(helper.make_node("Transpose", ["o"], ["y"], perm=[0, 2, 1, 3]))
        out_shape = [batch, seq, heads, value_depth]
    else:
        nodes.append(helper.make_node("Identity", ["o"], ["y"]))
        out_shape = [batch, heads, seq, value_depth]
    return make_model(nodes, inputs, [tensor("y", out_shape)], inits)


def fused_workload(model) -> Workload:
    graph = optimize_graph(import_model(model))
    assert [n.op for n in graph.nodes] == [ATTENTION], graph.summary()
    return Workload.of(graph, graph.nodes[0])


def run_original(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


CASES = [
    # (batch, seq, heads, depth, keys, mask shape, style, nan_to_zero, value depth)
    (1, 16, 2, 8, None, (1, 1, 16, 16), "sdpa", True, None),
    (2, 7, 3, 16, None, (2, 1, 1, 7), "sdpa", True, None),  # BERT's padding mask, odd length
    (1, 33, 1, 32, None, None, "sdpa", False, None),  # one head: tasks over query rows
    (1, 1, 4, 8, 9, (1, 4, 1, 9), "classic", False, 12),  # one query, more keys, other value depth
    (2, 20, 2, 24, None, (20, 20), "classic", True, None),  # a 2-D mask broadcast over batch and heads
]


@pytest.mark.parametrize("case", CASES)
def test_fused_attention_matches_the_unfused_graph(case, rng):
    batch, seq, heads, depth, keys, mask, style, nan_to_zero, value_depth = case
    model = attention_model(batch, seq, heads, depth, keys, mask, style, nan_to_zero, value_depth)
    workload = fused_workload(model)
    assert workload.node.attrs["nan_to_zero"] == int(nan_to_zero)
    assert_kernel_family(workload, "halide.attention", n_configs=3)
    # Against ONNX Runtime on the original, unfused model (the kernel family check above compares
    # with the fused node expanded back into ONNX)
    feeds = {name: rng.standard_normal(workload.shape(name)).astype(np.float32) for name in workload.dynamic_inputs}
    impl = registry.get("halide.attention")
    output = np.empty(workload.output_shape, np.float32)
    impl.build(workload, impl.space(workload).defaults[0])([feeds[n] for n in workload.dynamic_inputs], [output])
    np.testing.assert_allclose(output, run_original(model, feeds), rtol=1e-4, atol=1e-5)


def test_a_row_masked_out_entirely_is_zero_or_nan_as_in_the_graph(rng):
    """Every key masked with -Inf: Softmax gives NaN, and the exporter's Where(IsNaN) makes it 0."""
    for nan_to_zero in (True, False):
        model = attention_model(seq=8, mask=(1, 1, 8, 8), nan_to_zero=nan_to_zero)
        workload = fused_workload(model)
        feeds = {n: rng.standard_normal(workload.shape(n)).astype(np.float32) for n in ("q", "k", "v")}
        feeds["mask"] = np.where(rng.random((1, 1, 8, 8)) < 0.3, -np.inf, 0.0).astype(np.float32)
        feeds["mask"][0, 0, 5] = -np.inf
        expected = run_original(model, feeds)
        impl = registry.get("halide.attention")
        output = np.empty(workload.output_shape, np.float32)
        for config in impl.space(workload).defaults:
            impl.build(workload, config)([feeds[n] for n in workload.dynamic_inputs], [output])
            np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-5)  # NaN where NaN
            assert np.isnan(output[0, 5]).all() != nan_to_zero


def test_attention_is_not_fused_when_a_middle_value_is_read_elsewhere():
    """The probabilities are also a graph output: nothing to fuse without computing them anyway."""
    model = attention_model(mask=None, nan_to_zero=False)
    model.graph.output.append(tensor("p", [1, 2, 16, 16]))
    graph = optimize_graph(import_model(model))
    assert ATTENTION not in graph.summary()
    assert graph.summary()["Softmax"] == 1
