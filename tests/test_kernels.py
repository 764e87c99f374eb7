"""Each generated kernel family against ONNX Runtime on random shapes, over several configurations."""

import dataclasses
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from conftest import const, make_model, tensor
from onnx import helper

from woodpecker.compile.toolchain import compile_library
from woodpecker.graph.onnx_import import import_model
from woodpecker.graph.passes import optimize_graph
from woodpecker.kernels import registry
from woodpecker.kernels.library.onnxruntime import OnnxRuntimeImplementation
from woodpecker.kernels.workload import Workload
from woodpecker.measure.timing import (
    check,
    check_nonfinite,
    empty_outputs,
    nan_may_spread,
    nonfinite_inputs,
    random_inputs,
)
from woodpecker.runtime.kernel_library import KernelLibrary


def single_workload(nodes, inputs, outputs, inits):
    graph = optimize_graph(import_model(make_model(nodes, inputs, outputs, inits)))
    assert len(graph.nodes) == 1, graph.summary()
    return Workload.of(graph, graph.nodes[0])


def references(workload, seed):
    """Random inputs and the same with NaN and +-Inf among them, with ONNX Runtime's outputs for both."""
    inputs, special = random_inputs(workload, seed), nonfinite_inputs(workload, seed)
    reference, special_reference = empty_outputs(workload), empty_outputs(workload)
    kernel = OnnxRuntimeImplementation().build(workload, {})
    kernel(inputs, reference)
    kernel(special, special_reference)
    return inputs, reference, special, special_reference


def assert_matches_reference(kernel, workload, data, label, tolerance=1e-4, nonfinite=True):
    inputs, reference, special, special_reference = data
    error = check(kernel, inputs, reference)
    assert error <= tolerance, (label, error)
    if nonfinite:
        spread = nan_may_spread(workload.op, workload.node.attrs)
        assert check_nonfinite(kernel, special, special_reference, spread) is None, (label, "NaN/Inf input")


def assert_kernel_family(workload, impl_name, n_configs=3, configs=None):
    """`n_configs` random configurations of the family (or the `configs` given) against ONNX Runtime,
    on random inputs and on inputs with NaN and +-Inf among them."""
    impl = registry.get(impl_name)
    assert impl.matches(workload)
    data = references(workload, seed=int(np.random.default_rng().integers(1 << 30)))
    if configs is None:
        configs = impl.space(workload).sample(n_configs, seed=int(np.random.default_rng().integers(1 << 30)))
    assert configs, "empty configuration space"
    for config in configs:
        assert_matches_reference(impl.build(workload, config), workload, data, config)
    # The same definition compiled ahead of time into a shared library and loaded with ctypes.
    with tempfile.TemporaryDirectory() as tmp:
        library = KernelLibrary(compile_library({"k": impl.define(workload, configs[0])}, tmp))
        assert_matches_reference(library.kernel("k"), workload, data, ("aot", configs[0]))


def assert_library_kernel(workload, impl_name, tolerance=1e-6):
    """The library computes the node; on NaN and +-Inf as ONNX Runtime does, except OpenVINO, whose fused
    activations turn NaN into numbers: the measurement rejects it there (test_openvino_nan_is_rejected)."""
    impl = registry.get(impl_name)
    assert impl.matches(workload)
    data = references(workload, 1)
    kernel = impl.build(workload, {})
    assert_matches_reference(kernel, workload, data, impl_name, tolerance, nonfinite=impl_name != "openvino")


CONV_CASES = [
    # (n, c_in, h, w, c_out, k, stride, pad, dilation, groups, epilogue)
    (1, 3, 17, 19, 16, 3, 1, 1, 1, 1, "relu"),
    (2, 8, 12, 12, 24, 3, 2, 1, 1, 1, "add_relu"),
    (1, 16, 10, 9, 16, 3, 1, 1, 1, 16, "clip"),  # depthwise
    (1, 32, 9, 9, 32, 3, 2, 1, 1, 32, ""),  # strided depthwise
    (1, 8, 11, 13, 12, 3, 1, 2, 2, 2, ""),  # dilated, grouped
    (1, 24, 7, 7, 40, 1, 1, 0, 1, 1, "add"),  # 1x1, small spatial
    (1, 4, 15, 15, 8, 5, 3, 2, 1, 1, "relu"),  # 5x5 stride 3
    (1, 6, 8, 8, 5, 3, 1, 0, 1, 1, ""),  # odd channel count, no padding
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d(case, rng):
    n, c_in, h, w, c_out, k, stride, pad, dilation, groups, epilogue = case
    weight = rng.standard_normal((c_out, c_in // groups, k, k)).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    h_out = (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    w_out = (w + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    out_shape = [n, c_out, h_out, w_out]
    nodes = [
        helper.make_node(
            "Conv", ["x", "w", "b"], ["c"], pads=[pad] * 4, strides=[stride] * 2, dilations=[dilation] * 2, group=groups
        )
    ]
    inputs, last = [tensor("x", [n, c_in, h, w])], "c"
    if "add" in epilogue:
        inputs.append(tensor("r", out_shape))
        nodes.append(helper.make_node("Add", [last, "r"], ["a"]))
        last = "a"
    if "relu" in epilogue:
        nodes.append(helper.make_node("Relu", [last], ["y"]))
    elif epilogue == "clip":
        nodes.append(helper.make_node("Clip", [last, "lo", "hi"], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", [last], ["y"]))
    inits = [const("w", weight), const("b", bias), const("lo", np.float32(0)), const("hi", np.float32(6))]
    workload = single_workload(nodes, inputs, [tensor("y", out_shape)], inits)
    assert_kernel_family(workload, "halide.conv2d", n_configs=4)


@pytest.mark.parametrize(
    ("rows", "k", "n", "trans_b", "relu"),
    [(1, 64, 10, 1, False), (3, 37, 50, 0, True), (8, 128, 33, 1, False), (45, 70, 52, 0, True)],
)
def test_dense(rows, k, n, trans_b, relu, rng):
    weight = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=trans_b, alpha=0.5, beta=2.0),
        helper.make_node("Relu" if relu else "Identity", ["g"], ["y"]),
    ]
    inits = [const("w", weight), const("b", rng.standard_normal(n).astype(np.float32))]
    workload = single_workload(nodes, [tensor("x", [rows, k])], [tensor("y", [rows, n])], inits)
    space = registry.get("halide.dense").space(workload)
    configs = [*space.defaults, *space.sample(2, seed=int(rng.integers(1 << 30)))]
    assert any(c["panels"] for c in configs)  # column-panel weights, the last panel partly padding
    assert_kernel_family(workload, "halide.dense", configs=configs)


POOL_CASES = [
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), (1, 8, 15, 15)),
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1), (2, 4, 14, 14)),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]), (1, 4, 9, 9)),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1), (1, 4, 9, 9)),
    ("MaxPool", dict(kernel_shape=[2, 2], dilations=[2, 2], pads=[1, 1, 1, 1]), (1, 4, 9, 9)),
    ("MaxPool", dict(kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2]), (1, 4, 6, 6)),  # 25 taps: a loop
    ("GlobalAveragePool", {}, (2, 16, 7, 7)),
    ("GlobalMaxPool", {}, (1, 8, 5, 6)),
]


@pytest.mark.parametrize(("op", "attrs", "shape"), POOL_CASES)
def test_pool(op, attrs, shape):
    import onnx

    model = make_model(
        [helper.make_node(op, ["x"], ["y"], **attrs)],
        [tensor("x", list(shape))],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", "c", "h", "w"])],
    )
    graph = import_model(model)
    assert_kernel_family(Workload.of(graph, graph.nodes[0]), "halide.pool")


@pytest.mark.parametrize("op", ["Add", "Mul", "Relu", "Sigmoid"])
def test_elementwise(op):
    binary = op in ("Add", "Mul")
    names = ["a", "b"] if binary else ["a"]
    model = make_model(
        [helper.make_node(op, names, ["y"])], [tensor(n, [2, 3, 33, 17]) for n in names], [tensor("y", [2, 3, 33, 17])]
    )
    graph = import_model(model)
    assert_kernel_family(Workload.of(graph, graph.nodes[0]), "halide.elementwise", n_configs=2)


TYPED_CASES = [
    # (op, input dtypes, output dtype, attributes): transformer masks and modern CNN activations
    ("Equal", ("float32", "float32"), "bool", {}),
    ("Less", ("float32", "float32"), "bool", {}),
    ("GreaterOrEqual", ("int64", "int64"), "bool", {}),
    ("And", ("bool", "bool"), "bool", {}),
    ("Or", ("bool", "bool"), "bool", {}),
    ("Not", ("bool",), "bool", {}),
    ("IsNaN", ("float32",), "bool", {}),
    ("IsInf", ("float32",), "bool", {"detect_negative": 0}),
    ("IsInf", ("float32",), "bool", {}),
    ("Where", ("bool", "float32", "float32"), "float32", {}),
    ("Cast", ("int64",), "bool", {"to": 9}),
    ("Cast", ("float32",), "bool", {"to": 9}),
    ("Cast", ("bool",), "float32", {"to": 1}),
    ("Cast", ("int64",), "float32", {"to": 1}),
    ("PRelu", ("float32", "float32"), "float32", {}),
    ("Sqrt", ("float32",), "float32", {}),
    ("Reciprocal", ("float32",), "float32", {}),
    ("Erf", ("float32",), "float32", {}),
    ("Softplus", ("float32",), "float32", {}),
    ("LeakyRelu", ("float32",), "float32", {"alpha": 0.1}),
    ("Elu", ("float32",), "float32", {"alpha": 0.7}),
    ("Tanh", ("float32",), "float32", {}),
]


@pytest.mark.parametrize(("op", "dtypes", "out_dtype", "attrs"), TYPED_CASES, ids=lambda c: str(c))
def test_elementwise_ops_of_every_type(op, dtypes, out_dtype, attrs, rng):
    """Each op on an odd shape, the second operand broadcast, against ONNX Runtime (NaN and +-Inf too)."""
    from onnx import helper as h

    shape = [2, 5, 7, 3]
    shapes = [shape, [1, 5, 1, 3] if op != "PRelu" else [5, 1, 1], shape][: len(dtypes)]
    names = [f"i{k}" for k in range(len(dtypes))]
    inputs = [
        h.make_tensor_value_info(n, h.np_dtype_to_tensor_dtype(np.dtype(d)), s)
        for n, d, s in zip(names, dtypes, shapes)
    ]
    output = h.make_tensor_value_info("y", h.np_dtype_to_tensor_dtype(np.dtype(out_dtype)), shape)
    graph = import_model(make_model([helper.make_node(op, names, ["y"], **attrs)], inputs, [output]))
    assert_kernel_family(Workload.of(graph, graph.nodes[0]), "halide.elementwise", n_configs=2)


@pytest.mark.parametrize("bounds", [(0.0, 6.0), (-0.5, None), (None, None)])
def test_clip_on_its_own(bounds):
    """ReLU6 after a squeeze-and-excitation scale (ReXNet), one bound or none: bounds as constant inputs."""
    names = [f"b{k}" if bound is not None else "" for k, bound in enumerate(bounds)]
    model = make_model(
        [helper.make_node("Clip", ["x", *names], ["y"])],
        [tensor("x", [2, 12, 9, 5])],
        [tensor("y", [2, 12, 9, 5])],
        [const(n, np.float32(bound)) for n, bound in zip(names, bounds) if n],
    )
    graph = import_model(model)
    assert_kernel_family(Workload.of(graph, graph.nodes[0]), "halide.elementwise", n_configs=2)


@pytest.mark.parametrize("exponent", [3.0, 2.0])
def test_pow_by_a_constant(exponent):
    """GPT-2's GELU: x^3; and the square and square root of normalizations spelled out."""
    model = make_model(
        [helper.make_node("Pow", ["x", "e"], ["y"])],
        [tensor("x", [3, 11, 5])],
        [tensor("y", [3, 11, 5])],
        [const("e", np.float32(exponent))],
    )
    graph = import_model(model)
    assert_kernel_family(Workload.of(graph, graph.nodes[0]), "halide.elementwise", n_configs=2)


@pytest.mark.parametrize(
    ("table", "indices", "axis", "constant"),
    [
        ((50, 24), (1, 7), 0, True),
        ((6, 9, 5), (2, 3), 1, False),
        ((40, 17), (13,), 0, True),
        ((4, 30), (3, 2), 1, True),
    ],
)
def test_gather_with_run_time_indices(table, indices, axis, constant, rng):
    """The embedding lookup (a constant table at token ids, negative ids too) and gathers on other axes."""
    import onnx

    data = rng.standard_normal(table).astype(np.float32)
    out_shape = [*table[:axis], *indices, *table[axis + 1 :]]
    inputs = [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, list(indices))]
    if not constant:
        inputs.insert(0, tensor("t", list(table)))
    model = make_model(
        [helper.make_node("Gather", ["t", "i"], ["y"], axis=axis)],
        inputs,
        [tensor("y", out_shape)],
        [const("t", data)] if constant else [],
    )
    graph = import_model(model)
    workload = Workload.of(graph, graph.nodes[0])
    assert_kernel_family(workload, "halide.gather", n_configs=3)
    negative = [np.full(indices, -1, np.int64)]
    outputs = [np.empty(out_shape, np.float32)]
    registry.get("halide.gather").build(workload, {"vec": 4, "rows_per_task": 1})(
        negative if constant else [rng.standard_normal(table).astype(np.float32), *negative], outputs
    )
    if constant:
        np.testing.assert_array_equal(outputs[0], np.take(data, negative[0], axis=axis))


def test_gather_of_a_mask_at_plan_time_indices(rng):
    """The attention mask rearranged by Gather: bool data at run time, constant indices."""
    import onnx

    model = make_model(
        [helper.make_node("Gather", ["m", "i"], ["y"], axis=0)],
        [helper.make_tensor_value_info("m", onnx.TensorProto.BOOL, [12, 1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.BOOL, [1, 1, 12, 1])],
        [const("i", rng.integers(-12, 12, (1, 1, 12)).astype(np.int64))],
    )
    graph = import_model(model)
    assert_kernel_family(Workload.of(graph, graph.nodes[0]), "halide.gather", n_configs=2)


def test_where_with_scalar_constants_fills_a_mask(rng):
    """The attention mask of a transformer export: Where(mask, 0, most negative float) over (1, 1, s, s)."""
    import onnx

    inputs = [helper.make_tensor_value_info("m", onnx.TensorProto.BOOL, [1, 1, 9, 9])]
    inits = [const("zero", np.zeros(1, np.float32)), const("low", np.full(1, np.finfo(np.float32).min, np.float32))]
    model = make_model(
        [helper.make_node("Where", ["m", "zero", "low"], ["y"])], inputs, [tensor("y", [1, 1, 9, 9])], inits
    )
    graph = import_model(model)
    assert_kernel_family(Workload.of(graph, graph.nodes[0]), "halide.elementwise", n_configs=2)


def test_nonfinite_mismatch_rules():
    """NaN must stay NaN and each infinity the same infinity; a max reduction may spread NaN further."""
    from woodpecker.measure.timing import nonfinite_mismatch

    expected = np.array([np.nan, np.inf, -np.inf, 1.0, 2.0], np.float32)
    assert nonfinite_mismatch(expected.copy(), expected) is None
    assert "NaN of the reference became numbers" in nonfinite_mismatch(np.nan_to_num(expected, nan=0.0), expected)
    spread = expected.copy()
    spread[3] = np.nan
    assert "became NaN" in nonfinite_mismatch(spread, expected)
    assert nonfinite_mismatch(spread, expected, nan_may_spread=True) is None
    assert "infinities differ" in nonfinite_mismatch(-expected, expected)
    wrong = expected.copy()
    wrong[4] = 2.5
    assert "relative error" in nonfinite_mismatch(wrong, expected)


def test_openvino_nan_is_rejected(rng):
    """OpenVINO's Conv with a fused Relu turns NaN into 0 where ONNX Runtime keeps it: the measurement
    rejects it as a candidate, so a plan cannot take it without a word."""
    pytest.importorskip("openvino")
    from woodpecker.measure.timing import TimingSettings
    from woodpecker.measure.worker import measure_prepared, prepare

    weight = const("w", rng.standard_normal((16, 8, 3, 3)).astype(np.float32))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    workload = single_workload(nodes, [tensor("x", [1, 8, 10, 10])], [tensor("y", [1, 16, 10, 10])], [weight])
    prepared = prepare(workload, seed=int(rng.integers(1 << 30)))
    settings = TimingSettings(min_runs=1, max_runs=2, min_seconds=0.0, max_seconds=0.01)
    result = measure_prepared(prepared, "openvino", {}, settings)
    assert not result.ok and "NaN/Inf" in result.error, result
    assert measure_prepared(prepared, "onnxruntime", {}, settings).ok


def test_a_kernel_that_skips_writes_fails_the_check(rng):
    """The NaN sentinel: an output left unwritten can never pass for correct."""
    reference = [rng.standard_normal((4, 4)).astype(np.float32)]
    assert check(lambda inputs, outputs: None, [], reference) == float("inf")


def test_conv2d_with_packed_input(rng):
    """Input copied channels-innermost before the reduction (with padding and a stride)."""
    weight = rng.standard_normal((40, 16, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2])]
    workload = single_workload(
        nodes, [tensor("x", [1, 16, 11, 11])], [tensor("y", [1, 40, 6, 6])], [const("w", weight)]
    )
    impl = registry.get("halide.conv2d")
    inputs = random_inputs(workload, seed=int(rng.integers(1 << 30)))
    reference = [np.empty(workload.output_shape, np.float32)]
    OnnxRuntimeImplementation().build(workload, {})(inputs, reference)
    packed = [c for c in impl.space(workload).all_configs() if c["pack_input"]]
    for index in rng.choice(len(packed), 3, replace=False):
        assert check(impl.build(workload, packed[index]), inputs, reference) <= 1e-4, packed[index]


@pytest.mark.parametrize(
    ("perm", "shape"),
    [
        ([0, 2, 1, 3, 4], (2, 2, 6, 5, 7)),  # ShuffleNet's channel shuffle: whole rows move
        ([0, 2, 3, 1], (1, 24, 7, 9)),  # NCHW -> NHWC: the innermost axis moves (tiles)
        ([0, 3, 1, 2], (2, 7, 9, 20)),  # and back
        ([1, 0], (33, 17)),
        (None, (3, 4, 5)),  # default: reversed
    ],
)
def test_transpose(perm, shape):
    attrs = {} if perm is None else {"perm": perm}
    out_shape = [shape[p] for p in (perm or range(len(shape))[::-1])]
    model = make_model(
        [helper.make_node("Transpose", ["x"], ["y"], **attrs)], [tensor("x", list(shape))], [tensor("y", out_shape)]
    )
    graph = import_model(model)
    assert_kernel_family(Workload.of(graph, graph.nodes[0]), "halide.data_movement", n_configs=3)


@pytest.mark.parametrize(
    ("starts", "ends", "axes", "steps", "shape"),
    [
        ([0], [58], [1], None, (1, 116, 5, 6)),  # ShuffleNet's channel split
        ([58], [116], [1], None, (2, 116, 5, 6)),
        ([1, -4], [100, 1000], [2, 3], [2, 1], (1, 3, 9, 10)),  # steps, negative start, end past the edge
        ([-1], [-100], [0], [-2], (7, 3)),  # reversed
    ],
)
def test_slice(starts, ends, axes, steps, shape):
    inits = [const("starts", np.array(starts)), const("ends", np.array(ends)), const("axes", np.array(axes))]
    names = ["x", "starts", "ends", "axes"]
    if steps is not None:
        inits.append(const("steps", np.array(steps)))
        names.append("steps")
    out = tensor("y", ["d"] * len(shape))  # left to shape inference
    model = make_model([helper.make_node("Slice", names, ["y"])], [tensor("x", list(shape))], [out], inits)
    graph = import_model(model)
    assert_kernel_family(Workload.of(graph, graph.nodes[0]), "halide.data_movement", n_configs=2)


@pytest.mark.parametrize(("shape", "opset"), [((2, 1000), 17), ((3, 4, 49), 17), ((5, 13), 11)])
def test_softmax(shape, opset):
    model = make_model(
        [helper.make_node("Softmax", ["x"], ["y"], axis=-1)],
        [tensor("x", list(shape))],
        [tensor("y", list(shape))],
        opset=opset,
    )
    graph = import_model(model)
    assert_kernel_family(Workload.of(graph, graph.nodes[0]), "halide.normalization", n_configs=3)


@pytest.mark.parametrize(("shape", "with_bias"), [((1, 9, 7, 96), True), ((2, 5, 40), False)])
def test_layer_normalization(shape, with_bias, rng):
    width = shape[-1]
    inits = [const("scale", rng.standard_normal(width).astype(np.float32))]
    names = ["x", "scale"]
    if with_bias:
        inits.append(const("bias", rng.standard_normal(width).astype(np.float32)))
        names.append("bias")
    node = helper.make_node("LayerNormalization", names, ["y"], axis=-1, epsilon=1e-6)
    graph = import_model(make_model([node], [tensor("x", list(shape))], [tensor("y", list(shape))], inits))
    assert_kernel_family(Workload.of(graph, graph.nodes[0]), "halide.normalization", n_configs=3)


@pytest.mark.parametrize(
    ("op", "shape", "opset"),
    [
        ("ReduceMean", (2, 7, 40), 17),  # a decomposed LayerNorm's mean: axes attribute
        ("ReduceSum", (3, 5, 19), 17),  # axes as an input (opset 13 on); rows narrower than a vector
        ("ReduceMax", (4, 64), 18),
        ("ReduceMin", (6, 3), 18),
    ],
)
def test_reduce_over_the_last_axis(op, shape, opset):
    out_shape = [*shape[:-1], 1]
    if op == "ReduceMean" and opset < 18:
        nodes, inits = [helper.make_node(op, ["x"], ["y"], axes=[-1], keepdims=1)], []
    else:
        nodes, inits = [helper.make_node(op, ["x", "axes"], ["y"], keepdims=1)], [const("axes", np.array([-1]))]
    model = make_model(nodes, [tensor("x", shape)], [tensor("y", out_shape)], inits, opset)
    graph = optimize_graph(import_model(model))
    assert_kernel_family(Workload.of(graph, graph.nodes[0]), "halide.reduce", n_configs=3)


@pytest.mark.parametrize(("a", "b"), [((1, 3, 37, 16), (1, 3, 16, 37)), ((2, 20, 9), (2, 9, 33))])
def test_batched_matmul(a, b):
    """Attention's q @ k^T and scores @ v: both sides computed at run time."""
    out = [*a[:-1], b[-1]]
    model = make_model(
        [helper.make_node("MatMul", ["a", "b"], ["y"])],
        [tensor("a", list(a)), tensor("b", list(b))],
        [tensor("y", out)],
    )
    graph = import_model(model)
    assert_kernel_family(Workload.of(graph, graph.nodes[0]), "halide.batched_matmul", n_configs=3)


@pytest.mark.parametrize("other", ["scalar", "full"])
def test_elementwise_with_a_constant_operand(other, rng):
    shape = (1, 197, 24)
    value = rng.standard_normal(() if other == "scalar" else shape).astype(np.float32)
    nodes = [helper.make_node("Add", ["c", "x"], ["y"])]
    model = make_model(nodes, [tensor("x", list(shape))], [tensor("y", list(shape))], [const("c", value)])
    graph = import_model(model)
    assert_kernel_family(Workload.of(graph, graph.nodes[0]), "halide.elementwise", n_configs=2)


@pytest.mark.parametrize(
    ("shape", "other", "constant"),
    [((8, 3, 7, 7), (1, 3, 7, 7), True), ((8, 3, 7, 7), (8, 1, 7, 7), False), ((2, 5, 6), (6,), True)],
)
def test_elementwise_broadcasting(shape, other, constant, rng):
    """Swin's attention: scores plus a bias or mask shared across windows or heads."""
    inputs, inits = [tensor("x", list(shape))], []
    if constant:
        inits.append(const("o", rng.standard_normal(other).astype(np.float32)))
    else:
        inputs.append(tensor("o", list(other)))
    model = make_model([helper.make_node("Add", ["x", "o"], ["y"])], inputs, [tensor("y", list(shape))], inits)
    graph = import_model(model)
    assert_kernel_family(Workload.of(graph, graph.nodes[0]), "halide.elementwise", n_configs=2)


@pytest.mark.parametrize(
    ("pads", "mode", "value"),
    [
        ([0, 0, 1, 2, 0, 0, 3, 0], "constant", 0.5),
        ([0, 1, 0, 2, 0, 0, 2, 1], "edge", None),
        ([0, 0, 2, 1, 0, 0, 1, 2], "reflect", None),
    ],
)
def test_pad(pads, mode, value, rng):
    shape = (1, 3, 6, 7)
    inits, names = [const("pads", np.array(pads))], ["x", "pads"]
    if value is not None:
        inits.append(const("value", np.array(value, np.float32)))
        names.append("value")
    out = [d + pads[a] + pads[a + 4] for a, d in enumerate(shape)]
    model = make_model(
        [helper.make_node("Pad", names, ["y"], mode=mode)], [tensor("x", list(shape))], [tensor("y", out)], inits
    )
    graph = import_model(model)
    assert_kernel_family(Workload.of(graph, graph.nodes[0]), "halide.data_movement", n_configs=2)


@pytest.mark.parametrize(
    ("mode", "coordinates", "nearest", "scales", "out_hw"),
    [
        ("nearest", "asymmetric", "floor", [1, 1, 2, 2], (12, 14)),  # torch's F.interpolate(nearest)
        ("nearest", "half_pixel", "round_prefer_floor", None, (9, 5)),  # sizes, downsampling
        ("linear", "half_pixel", None, [1, 1, 2, 2], (12, 14)),
        ("linear", "pytorch_half_pixel", None, None, (17, 3)),
        ("linear", "align_corners", None, None, (11, 20)),
    ],
)
def test_resize(mode, coordinates, nearest, scales, out_hw):
    assert_kernel_family(resize_workload(mode, coordinates, nearest, scales, out_hw), "halide.resize", n_configs=2)


@pytest.mark.parametrize(("mode", "nearest"), [("nearest", "floor"), ("linear", None)])
def test_resize_on_blocked_values(mode, nearest):
    """HRNet's upsampled branches: a vector of a block's channels per output pixel."""
    workload = resize_workload(mode, "asymmetric", nearest, [1, 1, 2, 2], (12, 14), channels=8)
    blocked = dataclasses.replace(
        workload,
        values={n: dataclasses.replace(v, block=4 if len(v.shape) == 4 else 0) for n, v in workload.values.items()},
    )
    assert_kernel_family(blocked, "halide.resize", n_configs=1)


def resize_workload(mode, coordinates, nearest, scales, out_hw, channels=3):
    attrs = {"mode": mode, "coordinate_transformation_mode": coordinates}
    if nearest:
        attrs["nearest_mode"] = nearest
    out_shape = [2, channels, *out_hw]
    if scales is not None:
        inits = [const("roi", np.array([], np.float32)), const("scales", np.array(scales, np.float32))]
        names = ["x", "roi", "scales"]
    else:
        inits = [const("sizes", np.array(out_shape, np.int64))]
        names = ["x", "", "", "sizes"]
    node = helper.make_node("Resize", names, ["y"], **attrs)
    graph = import_model(make_model([node], [tensor("x", [2, channels, 6, 7])], [tensor("y", out_shape)], inits))
    return Workload.of(graph, graph.nodes[0])


def test_the_shared_runtime_builds_in_an_empty_cache(tmp_path):
    """On a fresh machine nothing is cached yet: loading the shared runtime builds runtime.o under
    the same lock file and used to wait on itself forever."""
    script = "from woodpecker.compile.toolchain import load_runtime; load_runtime()"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.rglob("libhalide_runtime*.so"))


def test_registry_imports_each_implementation_under_its_own_name():
    assert all(registry.get(name).name == name for name in registry.WHERE)
    with pytest.raises(KeyError):
        registry.get("halide.no_such_kernel")
