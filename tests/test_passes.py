"""Each pass on a small graph: the structure changes as intended and ONNX Runtime agrees on values."""

import numpy as np
import onnxruntime as ort
import pytest
from conftest import const, make_model, tensor
from onnx import helper

from woodpecker.graph.onnx_export import graph_to_onnx
from woodpecker.graph.onnx_import import import_model
from woodpecker.graph.passes import (
    canonicalize,
    eliminate_common,
    eliminate_dead,
    fold_batchnorm,
    fold_constants,
    fold_pad,
    fuse_channel_shuffle,
    fuse_epilogue,
    optimize_graph,
    remove_identity,
)


def run(graph, feeds):
    session = ort.InferenceSession(graph_to_onnx(graph).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_same_function(before, after, rng):
    feeds = {n: rng.standard_normal(before.shape(n)).astype(np.float32) for n in before.inputs}
    for a, b in zip(run(before, feeds), run(after, feeds)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max())


def resblock(rng):
    w1 = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    bn = [rng.uniform(0.5, 2, 4), rng.standard_normal(4), rng.standard_normal(4), rng.uniform(0.5, 2, 4)]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "b", "m", "v"], ["n1"], epsilon=1e-5),
        helper.make_node("Identity", ["n1"], ["i1"]),
        helper.make_node("Add", ["i1", "x"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["y"]),
        helper.make_node("Sigmoid", ["x"], ["unused"]),
    ]
    inits = [const("w1", w1)] + [const(n, a.astype(np.float32)) for n, a in zip("gbmv", bn)]
    return import_model(make_model(nodes, [tensor("x", [2, 4, 8, 8])], [tensor("y", [2, 4, 8, 8])], inits))


def test_remove_identity(rng):
    graph = resblock(rng)
    out = remove_identity(graph)
    assert "Identity" not in out.summary()
    assert_same_function(graph, out, rng)


def test_identity_from_input_to_output_is_kept_and_the_input_still_read(rng):
    nodes = [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Relu", ["x"], ["z"])]
    shape = [2, 3]
    graph = import_model(make_model(nodes, [tensor("x", shape)], [tensor("y", shape), tensor("z", shape)]))
    out = remove_identity(graph)
    assert [n.op for n in out.nodes] == ["Identity", "Relu"] and out.nodes[1].inputs == ("x",)
    assert_same_function(graph, out, rng)


def test_fold_batchnorm(rng):
    graph = remove_identity(resblock(rng))
    out = fold_batchnorm(graph)
    assert "BatchNormalization" not in out.summary()
    conv = next(n for n in out.nodes if n.op == "Conv")
    assert conv.attrs["bias_folded"] and len(conv.inputs) == 3
    assert_same_function(graph, out, rng)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_fold_batchnorm_into_gemm(trans_b, rng):
    """The output-channel axis of a Gemm's weight depends on transB; alpha and beta fold too."""
    w = rng.standard_normal((5, 6) if trans_b else (6, 5)).astype(np.float32)
    bn = [rng.uniform(0.5, 2, 5), rng.standard_normal(5), rng.standard_normal(5), rng.uniform(0.5, 2, 5)]
    nodes = [
        helper.make_node("Gemm", ["x", "w", "c"], ["g"], transB=trans_b, alpha=0.5, beta=2.0),
        helper.make_node("BatchNormalization", ["g", "s", "b", "m", "v"], ["y"], epsilon=1e-5),
    ]
    inits = [const("w", w), const("c", rng.standard_normal(5).astype(np.float32))]
    inits += [const(n, a.astype(np.float32)) for n, a in zip("sbmv", bn)]
    graph = import_model(make_model(nodes, [tensor("x", [3, 6])], [tensor("y", [3, 5])], inits))
    out = fold_batchnorm(graph)
    assert [n.op for n in out.nodes] == ["Gemm"] and out.nodes[0].attrs["alpha"] == 1.0
    assert_same_function(graph, out, rng)


def test_fuse_residual_add_and_relu_into_conv(rng):
    graph = fold_batchnorm(remove_identity(resblock(rng)))
    out = fuse_epilogue(graph)
    assert out.summary() == {"Conv": 1, "Sigmoid": 1}
    conv = out.nodes[-1] if out.nodes[-1].op == "Conv" else out.nodes[0]
    assert conv.fused == ["BatchNormalization", "Add", "Relu"] and conv.inputs[3] == "x"
    assert_same_function(graph, out, rng)


def test_clip_fuses_only_with_constant_bounds(rng):
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Clip", ["c", "lo", "hi"], ["y"])]
    inits = [const("w", w), const("lo", np.float32(0)), const("hi", np.float32(6))]
    graph = import_model(make_model(nodes, [tensor("x", [1, 3, 5, 5])], [tensor("y", [1, 4, 5, 5])], inits))
    out = fuse_epilogue(graph)
    assert [n.op for n in out.nodes] == ["Conv"] and out.nodes[0].attrs["clip_max"] == 6.0
    assert_same_function(graph, out, rng)


def test_no_fusion_when_conv_output_has_two_users(rng):
    w = rng.standard_normal((3, 3, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Add", ["c", "r"], ["y"]),
    ]
    graph = import_model(make_model(nodes, [tensor("x", [1, 3, 4, 4])], [tensor("y", [1, 3, 4, 4])], [const("w", w)]))
    out = fuse_epilogue(graph)
    assert sorted(out.summary()) == ["Add", "Conv", "Relu"]


def test_fold_constants_turns_shape_arithmetic_into_a_constant(rng):
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    inits = [
        const("zero", np.int64(0)),
        const("axes", np.array([0], np.int64)),
        const("minus1", np.array([-1], np.int64)),
    ]
    graph = import_model(make_model(nodes, [tensor("x", [2, 3, 4])], [tensor("y", [2, 12])], inits))
    out = fold_constants(graph)
    assert [n.op for n in out.nodes] == ["Reshape"]
    assert out.constants[out.nodes[0].inputs[1]].tolist() == [2, -1]
    assert_same_function(graph, out, rng)


def test_eliminate_common_computes_a_repeated_node_once(rng):
    """Each layer's copy of the mask bias (equal constants under other names) becomes one node; a
    copy that is a graph output stays, and so do nodes that differ in an attribute."""
    nodes = [
        helper.make_node("Mul", ["x", "c1"], ["m1"]),
        helper.make_node("Mul", ["x", "c2"], ["m2"]),  # c2 == c1
        helper.make_node("Mul", ["x", "c3"], ["m3"]),  # c3 != c1
        helper.make_node("Softmax", ["m1"], ["s1"], axis=0),
        helper.make_node("Softmax", ["m2"], ["s2"], axis=1),
        helper.make_node("Add", ["s1", "s2"], ["a"]),
        helper.make_node("Add", ["a", "m3"], ["y"]),
        helper.make_node("Mul", ["x", "c1"], ["z"]),  # a graph output
    ]
    half = np.array(0.5, np.float32)
    inits = [const("c1", half), const("c2", half.copy()), const("c3", np.array(2.0, np.float32))]
    shape = [3, 5]
    graph = import_model(make_model(nodes, [tensor("x", shape)], [tensor("y", shape), tensor("z", shape)], inits))
    out = eliminate_common(graph)
    assert out.summary() == {"Mul": 3, "Softmax": 2, "Add": 2}
    assert {n.outputs[0] for n in out.nodes if n.op == "Mul"} == {"m1", "m3", "z"}
    assert_same_function(graph, out, rng)


def test_reshape_and_expand_to_their_own_shape_disappear(rng):
    shape = [2, 3, 4]
    nodes = [
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Expand", ["r", "target"], ["e"]),
        helper.make_node("Relu", ["e"], ["y"]),
    ]
    inits = [const("target", np.array(shape, np.int64))]
    graph = import_model(make_model(nodes, [tensor("x", shape)], [tensor("y", shape)], inits))
    out = remove_identity(graph)
    assert [n.op for n in out.nodes] == ["Relu"] and out.nodes[0].inputs == ("x",)
    assert_same_function(graph, out, rng)


def test_a_slice_that_keeps_everything_in_order_disappears(rng):
    """GhostNet's `x[:, :out_channels]` of exactly out_channels goes; a reversal of the same shape stays."""
    shape = [2, 6, 3]
    nodes = [
        helper.make_node("Slice", ["x", "zero", "six", "one"], ["s"]),
        helper.make_node("Slice", ["s", "last", "before", "one", "back"], ["r"]),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    values = {"zero": 0, "six": 6, "one": 1, "last": -1, "before": -100, "back": -1}
    inits = [const(name, np.array([v], np.int64)) for name, v in values.items()]
    graph = import_model(make_model(nodes, [tensor("x", shape)], [tensor("y", shape)], inits))
    out = remove_identity(graph)
    assert [n.op for n in out.nodes] == ["Slice", "Relu"] and out.nodes[0].inputs[0] == "x"
    assert_same_function(graph, out, rng)


def test_eliminate_dead(rng):
    graph = resblock(rng)
    out = eliminate_dead(graph)
    assert "Sigmoid" not in out.summary() and "unused" not in out.values
    assert_same_function(graph, out, rng)


def test_default_pipeline(rng):
    graph = resblock(rng)
    out = optimize_graph(graph)
    assert out.summary() == {"Conv": 1}
    assert_same_function(graph, out, rng)


@pytest.mark.parametrize(("keepdims", "opset"), [(0, 17), (1, 17), (0, 18)])
def test_spatial_reduce_mean_becomes_global_average_pool(keepdims, opset, rng):
    if opset >= 18:  # axes became an input
        nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=keepdims)]
        inits = [const("axes", np.array([-1, 2], np.int64))]
    else:
        nodes, inits = [helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=keepdims)], []
    out_shape = [2, 6, 1, 1] if keepdims else [2, 6]
    model = make_model(nodes, [tensor("x", [2, 6, 5, 4])], [tensor("y", out_shape)], inits, opset=opset)
    graph = fold_constants(import_model(model))
    out = canonicalize(graph)
    assert [n.op for n in out.nodes] == ["GlobalAveragePool"] + ([] if keepdims else ["Flatten"])
    assert_same_function(graph, out, rng)


def test_reduce_mean_over_channels_is_left_alone(rng):
    nodes = [helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=1)]
    graph = import_model(make_model(nodes, [tensor("x", [1, 6, 5, 4])], [tensor("y", [1, 1, 5, 4])]))
    assert [n.op for n in canonicalize(graph).nodes] == ["ReduceMean"]


@pytest.mark.parametrize(("index", "axis"), [(np.array(1), 0), (np.array(-1), 2), (np.array([2]), 1)])
def test_gather_of_one_constant_index_becomes_a_slice(index, axis, rng):
    shape = [3, 4, 5]
    out_shape = [d for a, d in enumerate(shape) if a != axis or index.ndim]
    if index.ndim:
        out_shape[axis] = 1
    nodes = [helper.make_node("Gather", ["x", "i"], ["y"], axis=axis)]
    graph = import_model(make_model(nodes, [tensor("x", shape)], [tensor("y", out_shape)], [const("i", index)]))
    out = canonicalize(graph)
    assert [n.op for n in out.nodes] == ["Slice"] + ([] if index.ndim else ["Reshape"])
    assert_same_function(graph, out, rng)


def test_pad_by_nothing_disappears(rng):
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"]), helper.make_node("Relu", ["p"], ["y"])]
    inits = [const("pads", np.zeros(8, np.int64))]
    graph = import_model(make_model(nodes, [tensor("x", [1, 3, 4, 4])], [tensor("y", [1, 3, 4, 4])], inits))
    out = optimize_graph(graph)
    assert [n.op for n in out.nodes] == ["Relu"] and out.nodes[0].inputs == ("x",)
    assert_same_function(graph, out, rng)


def test_zero_pad_of_h_and_w_folds_into_the_conv(rng):
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["p"]),
        helper.make_node("Conv", ["p", "w"], ["y"], pads=[1, 0, 0, 1], strides=[2, 2]),
    ]
    inits = [const("w", w), const("pads", np.array([0, 0, 0, 1, 0, 0, 1, 0]))]
    graph = import_model(make_model(nodes, [tensor("x", [1, 3, 9, 9])], [tensor("y", [1, 4, 5, 5])], inits))
    out = eliminate_dead(fold_pad(graph))
    assert [n.op for n in out.nodes] == ["Conv"] and out.nodes[0].attrs["pads"] == [1, 1, 1, 1]
    assert_same_function(graph, out, rng)


def test_reflect_pad_stays(rng):
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"), helper.make_node("Conv", ["p", "w"], ["y"])]
    inits = [const("w", w), const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1]))]
    graph = import_model(make_model(nodes, [tensor("x", [1, 3, 9, 9])], [tensor("y", [1, 4, 9, 9])], inits))
    assert [n.op for n in fold_pad(graph).nodes] == ["Pad", "Conv"]


@pytest.mark.parametrize("equation", ["bghid,bghjd->bghij", "B G H I J, B G H J D -> B G H I D", "bij,bjk->bik"])
def test_einsum_of_a_batched_matrix_product_becomes_matmul(equation, rng):
    sizes = {"b": 2, "g": 2, "h": 3, "i": 4, "j": 5, "d": 6, "k": 3}
    left, right, result = equation.lower().replace(" ", "").replace("->", ",").split(",")
    nodes = [helper.make_node("Einsum", ["a", "b"], ["y"], equation=equation)]
    inputs = [tensor("a", [sizes[c] for c in left]), tensor("b", [sizes[c] for c in right])]
    graph = import_model(make_model(nodes, inputs, [tensor("y", [sizes[c] for c in result])]))
    out = canonicalize(graph)
    assert [n.op for n in out.nodes][-1] == "MatMul" and "Einsum" not in out.summary()
    assert_same_function(graph, out, rng)


@pytest.mark.parametrize("sizes", [None, [2, 4, 2]])
def test_split_becomes_one_slice_per_output(sizes, rng):
    inits = [] if sizes is None else [const("sizes", np.array(sizes))]
    names = ["x"] + ([] if sizes is None else ["sizes"])
    parts = sizes or [4, 4]
    outputs = [f"y{i}" for i in range(len(parts))]
    node = helper.make_node("Split", names, outputs, axis=1)
    model = make_model(
        [node], [tensor("x", [2, 8, 3, 3])], [tensor(o, [2, p, 3, 3]) for o, p in zip(outputs, parts)], inits
    )
    graph = import_model(model)
    out = canonicalize(graph)
    assert [n.op for n in out.nodes] == ["Slice"] * len(parts)
    assert_same_function(graph, out, rng)


def test_channel_shuffle_becomes_one_gather_of_channels(rng):
    """ShuffleNet's Reshape -> Transpose -> Reshape on 5-D values is a permutation of the channels."""
    shape = [2, 12, 3, 5]
    inits = [const("grouped", np.array([2, 3, 4, 3, 5])), const("flat", np.array(shape))]
    model = make_model(
        [
            helper.make_node("Reshape", ["x", "grouped"], ["g"]),
            helper.make_node("Transpose", ["g"], ["t"], perm=[0, 2, 1, 3, 4]),
            helper.make_node("Reshape", ["t", "flat"], ["y"]),
        ],
        [tensor("x", shape)],
        [tensor("y", shape)],
        inits,
    )
    graph = import_model(model)
    out = fuse_channel_shuffle(graph)
    assert [n.op for n in out.nodes] == ["Gather"]
    assert_same_function(graph, out, rng)
