"""Activation chains fused into epilogues, and ops with one value per channel (squeeze-and-excitation
scaling, standalone BatchNormalization): each fusion against the unfused graph, each kernel against
ONNX Runtime, and a small SE network optimized end to end with no fallback and no conversion."""

import math
from functools import partial

import numpy as np
import pytest
from conftest import const, make_model, tensor
from onnx import helper
from test_kernels import assert_kernel_family, assert_library_kernel
from test_layout import every_generated, with_blocks
from test_memory import per_node_choices
from test_passes import assert_same_function

from woodpecker import api
from woodpecker.explore.verify import random_feeds
from woodpecker.graph.onnx_import import import_model
from woodpecker.graph.passes import BLOCKED_PASSES, fuse_epilogue, fuse_expand, fuse_pool, optimize_graph
from woodpecker.graph.passes.fuse_expand import MIN_EXPANDED_BYTES
from woodpecker.graph.passes.layout import block_layout
from woodpecker.kernels import registry
from woodpecker.kernels.halide.common import native_vector_width
from woodpecker.kernels.workload import Workload
from woodpecker.runtime.executor import Executor

# name -> ONNX nodes computing y from c (the Conv or Gemm output)
ACTIVATION_CHAINS = {
    "sigmoid": [helper.make_node("Sigmoid", ["c"], ["y"])],
    "hardsigmoid": [helper.make_node("HardSigmoid", ["c"], ["y"], alpha=1 / 6, beta=0.5)],
    "hardswish": [helper.make_node("HardSwish", ["c"], ["y"])],
    "silu": [helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["y"])],
    "silu_swapped": [helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["s", "c"], ["y"])],
}


def conv_with(chain, rng, c_in=8, c_out=16, size=9, groups=1):
    weight = rng.standard_normal((c_out, c_in // groups, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], group=groups), *chain]
    inits = [const("w", weight), const("b", bias)]
    return import_model(
        make_model(nodes, [tensor("x", [1, c_in, size, size])], [tensor("y", [1, c_out, size, size])], inits)
    )


@pytest.mark.parametrize("name", sorted(ACTIVATION_CHAINS))
def test_activation_chain_fuses_into_the_conv(name, rng):
    graph = conv_with(ACTIVATION_CHAINS[name], rng)
    fused = fuse_epilogue(graph)
    assert [n.op for n in fused.nodes] == ["Conv"]
    assert fused.nodes[0].attrs["activation"] == name.removesuffix("_swapped")
    assert_same_function(graph, fused, rng)  # the fused node exported back to ONNX, against the original


def test_silu_does_not_fuse_when_the_conv_output_has_a_third_reader(rng):
    chain = [*ACTIVATION_CHAINS["silu"], helper.make_node("Add", ["y", "c"], ["z"])]
    weight = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), *chain]
    model = make_model(nodes, [tensor("x", [1, 4, 5, 5])], [tensor("z", [1, 4, 5, 5])], [const("w", weight)])
    graph = import_model(model)
    assert sorted(fuse_epilogue(graph).summary()) == ["Add", "Conv", "Mul", "Sigmoid"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sigmoid", "hardsigmoid", "hardswish", "silu"])
@pytest.mark.parametrize("impl", ["halide.conv2d", "halide.conv2d_blocked"])
def test_conv_kernels_apply_every_activation(name, impl, rng):
    graph = optimize_graph(
        conv_with(ACTIVATION_CHAINS[name], rng, groups=16 if impl == "halide.conv2d" else 1, c_in=16)
    )
    if impl == "halide.conv2d_blocked":
        graph = block_layout(graph, 16)
    node = next(n for n in graph.nodes if n.op == "Conv")
    assert_kernel_family(Workload.of(graph, node), impl, n_configs=2)


@pytest.mark.parametrize("name", ["hardswish", "silu"])
def test_dense_kernel_applies_the_activation(name, rng):
    weight = rng.standard_normal((24, 40)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["c"], transB=1), *ACTIVATION_CHAINS[name]]
    model = make_model(nodes, [tensor("x", [2, 40])], [tensor("y", [2, 24])], [const("w", weight)])
    graph = optimize_graph(import_model(model))
    assert [n.op for n in graph.nodes] == ["Gemm"]
    workload = Workload.of(graph, graph.nodes[0])
    assert_kernel_family(workload, "halide.dense", n_configs=2)
    for impl in ("numpy", "torch"):
        assert_library_kernel(workload, impl, tolerance=1e-4)


def channelwise_graph(op, other_shape, constant, rng, shape=(2, 32, 7, 9), swapped=False, activation=None):
    inputs, inits = [tensor("x", list(shape))], []
    if constant:
        inits.append(const("s", rng.uniform(0.5, 2.0, other_shape).astype(np.float32)))
    else:
        inputs.append(tensor("s", list(other_shape)))
    nodes = [helper.make_node(op, ["s", "x"] if swapped else ["x", "s"], ["m"])]
    nodes.append(helper.make_node(activation or "Identity", ["m"], ["y"]))
    return optimize_graph(import_model(make_model(nodes, inputs, [tensor("y", list(shape))], inits)))


def blocked_workload(graph, block):
    """The graph's single node with its run-time values stored in blocks of `block` channels."""
    workload = Workload.of(graph, graph.nodes[0])
    return with_blocks(workload, {n: block for n in workload.values if n not in workload.constants})


CHANNELWISE_CASES = [
    # (op, other shape, constant, swapped)
    ("Mul", (2, 32, 1, 1), False, False),  # squeeze-and-excitation scaling
    ("Mul", (2, 32, 1, 1), False, True),
    ("Sub", (2, 32, 1, 1), False, True),
    ("Div", (2, 32, 1, 1), False, False),
    ("Add", (32, 1, 1), True, False),  # per-channel constants: folded to scale and shift
    ("Sub", (1, 32, 1, 1), True, True),
    ("Div", (32, 1, 1), True, False),
    ("Mul", (1,), True, False),
]


@pytest.mark.parametrize("block", [0, 16, 8])
@pytest.mark.parametrize("case", CHANNELWISE_CASES)
def test_channelwise_kernel(case, block, rng):
    op, other_shape, constant, swapped = case
    workload = blocked_workload(channelwise_graph(op, other_shape, constant, rng, swapped=swapped), block)
    assert workload.block(workload.node.outputs[0]) == block
    assert_kernel_family(workload, "halide.channelwise", n_configs=2)


@pytest.mark.parametrize("block", [0, 16])
def test_standalone_batchnorm_with_its_relu(block, rng):
    c = 32
    params = [rng.uniform(0.5, 2, c), rng.standard_normal(c), rng.standard_normal(c), rng.uniform(0.5, 2, c)]
    inits = [const(n, a.astype(np.float32)) for n, a in zip("gbmv", params)]
    inits += [const(w, rng.standard_normal((16, 8, 1, 1)).astype(np.float32)) for w in ("w1", "w2")]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"]),
        helper.make_node("Conv", ["x", "w2"], ["c2"]),
        helper.make_node("Concat", ["c1", "c2"], ["x3"], axis=1),  # nothing to fold the BatchNormalization into
        helper.make_node("BatchNormalization", ["x3", "g", "b", "m", "v"], ["n"], epsilon=1e-5),
        helper.make_node("Relu", ["n"], ["y"]),
    ]
    model = make_model(nodes, [tensor("x", [2, 8, 6, 5])], [tensor("y", [2, c, 6, 5])], inits)
    graph = optimize_graph(import_model(model))
    assert [n.op for n in graph.nodes][2:] == ["Concat", "BatchNormalization"]
    assert graph.nodes[3].fused == ["Relu"]
    if block:
        graph = block_layout(graph, block)
        assert [n.op for n in graph.nodes].count("Relayout") == 1  # the graph's output only
    node = next(n for n in graph.nodes if n.op == "BatchNormalization")
    assert_kernel_family(Workload.of(graph, node), "halide.channelwise", n_configs=2)


def se_block_model(rng, channels=32, size=10, batch=1):
    """Conv + SiLU, then squeeze-and-excitation (pool, 1x1 + ReLU, 1x1 + HardSigmoid, scale), then a 1x1."""

    def weight(name, c_out, c_in, k=1):
        return const(name, (rng.standard_normal((c_out, c_in, k, k)) / np.sqrt(c_in * k * k)).astype(np.float32))

    squeeze = channels // 4
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c0"], ["g0"]),
        helper.make_node("Mul", ["c0", "g0"], ["a0"]),
        helper.make_node("GlobalAveragePool", ["a0"], ["p"]),
        helper.make_node("Conv", ["p", "w1"], ["c1"]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"]),
        helper.make_node("HardSigmoid", ["c2"], ["s"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["a0", "s"], ["scaled"]),
        helper.make_node("Conv", ["scaled", "w3"], ["c3"]),
        helper.make_node("HardSwish", ["c3"], ["y"]),
    ]
    inits = [weight("w0", channels, 16, 3), weight("w1", squeeze, channels), weight("w2", channels, squeeze)]
    inits.append(weight("w3", 16, channels))
    return make_model(nodes, [tensor("x", [batch, 16, size, size])], [tensor("y", [batch, 16, size, size])], inits)


@pytest.mark.slow
def test_squeeze_and_excitation_block_runs_on_generated_kernels(rng, records_path):
    if native_vector_width() != 16:
        pytest.skip("the conversion count assumes 16-lane vectors")
    plan = api.optimize(
        se_block_model(rng, batch=2), budget=2, records=records_path, libraries=("numpy",), progress=False
    )
    assert plan.meta["summary"]["relayouts"] == 1  # the graph's output only
    ops = [n.op for n in plan.graph.nodes if n.op != "Relayout"]
    assert ops == ["Conv", "GlobalAveragePool", "Conv", "Conv", "Conv"]  # the scale Mul folded into the last Conv
    # Every node on its fastest correct generated kernel computes what the verified plan computes.
    generated = every_generated(plan)
    assert {c.impl for c in generated} == {"halide.conv2d_blocked", "halide.pool", "numpy"}
    feeds = random_feeds(plan.input_specs, seed=int(rng.integers(1 << 30)))
    expected = plan.run(feeds)
    np.testing.assert_allclose(Executor(plan.graph, generated).run(feeds)["y"], expected["y"], rtol=1e-4, atol=1e-5)


def channel_last_mlp(rng, shape=(1, 5, 6, 16), hidden=32):
    """ConvNeXt's MLP as exported: MatMul + Add(bias), GELU spelled with Erf, MatMul + Add(bias)."""
    width = shape[-1]

    def scalar(name, value):
        return const(name, np.array(value, np.float32))

    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"]),
        helper.make_node("Add", ["b1", "m1"], ["h"]),
        helper.make_node("Div", ["h", "root2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["p"]),
        helper.make_node("Mul", ["h", "p"], ["t"]),
        helper.make_node("Mul", ["t", "half"], ["g"]),
        helper.make_node("MatMul", ["g", "w2"], ["m2"]),
        helper.make_node("Add", ["m2", "b2"], ["y"]),
    ]
    inits = [
        const("w1", rng.standard_normal((width, hidden)).astype(np.float32) / 4),
        const("b1", rng.standard_normal(hidden).astype(np.float32)),
        const("w2", rng.standard_normal((hidden, width)).astype(np.float32) / 6),
        const("b2", rng.standard_normal(width).astype(np.float32)),
        scalar("root2", np.sqrt(2.0)),
        scalar("one", 1.0),
        scalar("half", 0.5),
    ]
    return import_model(make_model(nodes, [tensor("x", list(shape))], [tensor("y", list(shape))], inits))


def test_linear_layers_take_their_bias_and_gelu(rng):
    graph = channel_last_mlp(rng)
    fused = fuse_epilogue(graph)
    assert [n.op for n in fused.nodes] == ["MatMul", "MatMul"]
    assert fused.nodes[0].fused == ["Add", "GELU"] and fused.nodes[1].fused == ["Add"]
    assert_same_function(graph, fused, rng)
    for node in fused.nodes:
        assert_kernel_family(Workload.of(fused, node), "halide.dense", n_configs=2)


def test_erf_chain_with_another_constant_is_not_gelu(rng):
    graph = channel_last_mlp(rng)
    graph.constants["half"] = np.array(0.25, np.float32)
    assert "Erf" in fuse_epilogue(graph).summary()


@pytest.mark.parametrize("impl", ["halide.conv2d", "halide.conv2d_blocked", "torch"])
@pytest.mark.parametrize(("groups", "swapped"), [(1, False), (32, True)])
def test_squeeze_and_excitation_scale_folds_into_the_next_conv(impl, groups, swapped, rng):
    weight = rng.standard_normal((32, 32 // groups, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Mul", ["s", "x"] if swapped else ["x", "s"], ["scaled"]),
        helper.make_node("Conv", ["scaled", "w"], ["y"], pads=[1, 1, 1, 1], group=groups),
    ]
    inputs = [tensor("x", [2, 32, 7, 8]), tensor("s", [2, 32, 1, 1])]
    graph = import_model(make_model(nodes, inputs, [tensor("y", [2, 32, 7, 8])], [const("w", weight)]))
    fused = optimize_graph(graph)
    assert [n.op for n in fused.nodes] == ["Conv"] and fused.nodes[0].fused == ["Mul"]
    assert_same_function(graph, fused, rng)
    workload = Workload.of(fused, fused.nodes[0])
    if impl == "halide.conv2d_blocked":
        workload = with_blocks(workload, {"x": 16, "s": 16, "y": 16})
    if impl == "torch":
        assert_library_kernel(workload, impl, tolerance=1e-4)
    else:
        assert_kernel_family(workload, impl, n_configs=2)


POOL_CASES = {
    # name: (conv kernel, conv stride, conv pad, pool op, pool attributes, input size)
    "resnet_stem": (3, 2, 1, "MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, 23),
    "vgg": (3, 1, 1, "MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}, 14),
    "ceil_mode": (3, 1, 0, "MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, 14),
    "densenet_transition": (1, 1, 0, "AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2]}, 12),
}


def conv_pool_model(rng, case, c_in=16, c_out=32, extra_reader=False):
    k, stride, pad, op, attrs, size = POOL_CASES[case]
    weight = rng.standard_normal((c_out, c_in, k, k)).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[pad] * 4, strides=[stride] * 2),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node(op, ["r"], ["y"], **attrs),
    ]
    conv_size = (size + 2 * pad - k) // stride + 1
    pool_k, pool_stride, pool_pad = attrs["kernel_shape"][0], attrs["strides"][0], attrs.get("pads", [0])[0]
    rounding = math.ceil if attrs.get("ceil_mode") else math.floor
    pool_size = rounding((conv_size + 2 * pool_pad - pool_k) / pool_stride) + 1
    outputs = [tensor("y", [2, c_out, pool_size, pool_size])]
    if extra_reader:
        outputs.append(tensor("r", [2, c_out, conv_size, conv_size]))
    model = make_model(nodes, [tensor("x", [2, c_in, size, size])], outputs, [const("w", weight), const("b", bias)])
    return import_model(model)


@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_pooling_fuses_into_the_conv(case, rng):
    graph = conv_pool_model(rng, case)
    fused = blocked_and_fused(graph)
    conv = next(n for n in fused.nodes if n.op == "Conv")
    assert [n.op for n in fused.nodes] == ["Conv", "Relayout"]  # the output back to NCHW
    assert conv.fused == ["Relu", POOL_CASES[case][3]]
    assert_same_function(graph, fused, rng)
    # The blocked kernel, by strips of rows and whole (both are in its space: the search decides).
    workload = Workload.of(fused, conv)
    configs = [
        {**config, "pool_rows": rows}
        for config in registry.get("halide.conv2d_blocked").space(workload).defaults[:1]
        for rows in (0, 1, 4)
    ]
    assert_kernel_family(workload, "halide.conv2d_blocked", configs=configs)
    assert_library_kernel(workload, "openvino", tolerance=1e-4)
    assert not registry.get("torch").matches(workload) and not registry.get("halide.conv2d").matches(workload)


@pytest.mark.parametrize("case", ["resnet_stem", "vgg"])
def test_a_fused_pool_reads_a_chunked_convolution(case, rng):
    """A pooled 3x3 convolution over a blocked input (VGG-16's) with its reduction in chunks."""
    fused = blocked_and_fused(conv_pool_model(rng, case, c_in=64, c_out=64))  # 144 KiB of weights
    conv = next(n for n in fused.nodes if n.op == "Conv")
    workload = with_blocks(Workload.of(fused, conv), {"x": 16})
    space = registry.get("halide.conv2d_blocked").space(workload)
    base = {**space.defaults[0], "pool_rows": 0, "chunk": 1, "batch_inner": False, "tile_x": 2}
    configs = [{**base, "chunk_rows": rows, "parallel": par} for rows, par in ((0, "k"), (1, "yk"), (2, "y"))]
    assert all(space.is_valid(c) for c in configs)
    assert_kernel_family(workload, "halide.conv2d_blocked", configs=configs)


def blocked_and_fused(graph):
    """The graph as `api.optimize` builds it: passes, 16-lane blocked layout, then the blocked fusions."""
    return optimize_graph(block_layout(optimize_graph(graph), 16), BLOCKED_PASSES)


def test_pooling_stays_apart_when_the_conv_output_has_another_reader(rng):
    graph = blocked_and_fused(conv_pool_model(rng, "vgg", extra_reader=True))
    assert sorted(graph.summary()) == ["Conv", "MaxPool", "Relayout"]


def depthwise_pointwise_model(rng, stride=1, activation="Clip", residual=False, channels=32, c_out=16, size=9):
    """MobileNetV2's block: 1x1 expansion, depthwise 3x3 (+ReLU6), 1x1 projection (+ a residual)."""
    expand = rng.standard_normal((channels, 8, 1, 1)).astype(np.float32)
    dw = rng.standard_normal((channels, 1, 3, 3)).astype(np.float32)
    pw = rng.standard_normal((c_out, channels, 1, 1)).astype(np.float32)
    inits = [const("dw", dw), const("dwb", rng.standard_normal(channels).astype(np.float32)), const("pw", pw)]
    inits.append(const("expand", expand))
    inits += [const("lo", np.float32(0.0)), const("hi", np.float32(6.0))]
    act_inputs = ["d", "lo", "hi"] if activation == "Clip" else ["d"]
    nodes = [
        helper.make_node("Conv", ["x", "expand"], ["e"]),
        helper.make_node("Conv", ["e", "dw", "dwb"], ["d"], pads=[1, 1, 1, 1], strides=[stride] * 2, group=channels),
        helper.make_node(activation, act_inputs, ["a"]),
        helper.make_node("Conv", ["a", "pw"], ["p"]),
    ]
    out = (size - 1) // stride + 1
    inputs = [tensor("x", [2, 8, size, size])]
    if residual:
        inputs.append(tensor("r", [2, c_out, out, out]))
        nodes.append(helper.make_node("Add", ["p", "r"], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", ["p"], ["y"]))
    return import_model(make_model(nodes, inputs, [tensor("y", [2, c_out, out, out])], inits))


@pytest.mark.parametrize(
    ("stride", "activation", "residual"), [(1, "Clip", True), (2, "Clip", False), (1, "Relu", False)]
)
def test_depthwise_conv_fuses_into_the_pointwise_conv(stride, activation, residual, rng):
    graph = depthwise_pointwise_model(rng, stride, activation, residual)
    fused = blocked_and_fused(graph)
    conv = [n for n in fused.nodes if n.op == "Conv"][-1]
    assert [n.op for n in fused.nodes if n.op != "Relayout"] == ["Conv", "Conv"]  # expansion, fused pair
    assert conv.fused == ["Conv(depthwise)", activation] + (["Add"] if residual else [])
    assert_same_function(graph, fused, rng)
    workload = Workload.of(fused, conv)
    configs = [
        {**config, "depthwise_at": at}
        for config in registry.get("halide.conv2d_blocked").space(workload).defaults[:1]
        for at in ("rows", "root")
    ]
    assert_kernel_family(workload, "halide.conv2d_blocked", configs=configs)
    assert_library_kernel(workload, "openvino", tolerance=1e-4)
    assert not registry.get("torch").matches(workload) and not registry.get("halide.conv2d").matches(workload)


def test_depthwise_conv_with_another_reader_stays_apart(rng):
    graph = depthwise_pointwise_model(rng)
    graph.outputs.append("a")  # the activated depthwise output is read besides the 1x1 convolution
    assert [n.op for n in blocked_and_fused(graph).nodes if n.op != "Relayout"] == ["Conv", "Conv", "Conv"]


def test_depthwise_conv_on_unblocked_channels_stays_apart(rng):
    """58 channels (ShuffleNet) stay NCHW: the fused kernel is blocked-only, so the pair keeps its kernels."""
    graph = blocked_and_fused(depthwise_pointwise_model(rng, channels=58, c_out=58))
    assert [n.op for n in graph.nodes] == ["Conv", "Conv", "Conv"]


def inverted_residual_model(rng, stride=1, activation="Clip", c_in=24, channels=144, size=9, kernel=3):
    """A stem convolution, then MobileNetV2's block: 1x1 expansion (+act), depthwise k x k (+act), 1x1
    projection. The stem makes the expansion's input blocked, as a block's input is in a network."""
    weights = {
        "stem": rng.standard_normal((c_in, 3, 3, 3)) * 0.3,
        "expand": rng.standard_normal((channels, c_in, 1, 1)) * 0.3,
        "eb": rng.standard_normal(channels),
        "dw": rng.standard_normal((channels, 1, kernel, kernel)) * 0.5,
        "dwb": rng.standard_normal(channels),
        "pw": rng.standard_normal((16, channels, 1, 1)) * 0.1,
    }
    inits = [const(k, v.astype(np.float32)) for k, v in weights.items()]
    inits += [const("lo", np.float32(0.0)), const("hi", np.float32(6.0))]

    def act(src, dst):
        return helper.make_node(activation, [src, "lo", "hi"] if activation == "Clip" else [src], [dst])

    nodes = [
        helper.make_node("Conv", ["x", "stem"], ["s"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["s", "expand", "eb"], ["e"]),
        act("e", "ea"),
        helper.make_node(
            "Conv", ["ea", "dw", "dwb"], ["d"], pads=[kernel // 2] * 4, strides=[stride] * 2, group=channels
        ),
        act("d", "a"),
        helper.make_node("Conv", ["a", "pw"], ["y"]),
    ]
    out = (size - 1) // stride + 1
    inputs, outputs = [tensor("x", [2, 3, size, size])], [tensor("y", [2, 16, out, out])]
    return import_model(make_model(nodes, inputs, outputs, inits))


def expanded(graph, min_bytes=0):
    """The graph as `api.graph_variants` builds its "expanded" variant, small maps fused too."""
    passes = (fuse_pool, partial(fuse_expand, min_bytes=min_bytes))
    return optimize_graph(block_layout(optimize_graph(graph), 16), passes)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stride", "activation", "c_in", "channels", "size", "kernel"),
    [
        (1, "Clip", 24, 144, 9, 3),  # 24 input channels: blocks of 8
        (2, "Clip", 16, 96, 9, 3),
        (1, "Relu", 32, 48, 9, 3),
        (2, "Relu", 16, 32, 14, 5),  # MNASNet's 5x5: five expanded rows kept; rows of 14, tiles of 7
    ],
)
def test_expansion_fuses_into_the_depthwise_conv(stride, activation, c_in, channels, size, kernel, rng):
    graph = inverted_residual_model(rng, stride, activation, c_in, channels, size, kernel)
    fused = expanded(graph)
    assert [n.op for n in fused.nodes if n.op != "Relayout"] == ["Conv", "Conv", "Conv"]  # stem, pair, projection
    conv = fused.nodes[1]
    assert conv.fused == ["Conv(1x1)", activation, activation]
    assert_same_function(graph, fused, rng)  # the ONNX export unfuses it again
    workload = Workload.of(fused, conv)
    space = registry.get("halide.expand_depthwise").space(workload)
    assert_kernel_family(workload, "halide.expand_depthwise", configs=list(space.defaults))
    assert_kernel_family(workload, "halide.expand_depthwise", n_configs=1)
    assert_library_kernel(workload, "openvino", tolerance=1e-4)
    assert [i.name for i in registry.candidates(workload)] == ["halide.expand_depthwise", "onnxruntime", "openvino"]


def test_expansion_stays_apart_below_the_size_or_with_another_reader(rng):
    graph = inverted_residual_model(rng)  # 144 x 9 x 9 floats: below MIN_EXPANDED_BYTES
    assert not any(n.attrs.get("expand") for n in expanded(graph, MIN_EXPANDED_BYTES).nodes)
    graph.outputs.append("ea")  # the activated expansion is read besides the depthwise conv
    assert not any(n.attrs.get("expand") for n in expanded(graph).nodes)


def test_graph_variants_offer_the_expanded_graph_for_large_maps(rng):
    """MobileNetV2's features.3 (24 -> 144 channels on 56x56: 1.8 MB): fused -> 1x1 in the fused graph,
    1x1 -> depthwise in the expanded one."""
    fused, others = api.graph_variants(inverted_residual_model(rng, size=56), "blocked")
    assert set(others) == {"unfused", "expanded"}
    assert [n.fused for n in fused.nodes if n.op == "Conv"][-1] == ["Conv(depthwise)", "Clip"]
    assert [n.fused for n in others["expanded"].nodes if n.op == "Conv"][1] == ["Conv(1x1)", "Clip", "Clip"]


@pytest.mark.slow
def test_plan_with_fused_pool_and_depthwise_runs_on_generated_kernels(rng, records_path, tmp_path):
    """Conv + ReLU + MaxPool, then depthwise + ReLU6 + 1x1 + residual: fused into two nodes on their
    generated kernels, they compute what ONNX Runtime computes; the optimizer times the plan with and
    without these fusions and keeps the faster, which also matches after saving and loading."""
    weights = {
        "w0": rng.standard_normal((32, 16, 3, 3)),
        "dw": rng.standard_normal((32, 1, 3, 3)),
        "pw": rng.standard_normal((32, 32, 1, 1)) * 0.2,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["p", "dw"], ["d"], pads=[1, 1, 1, 1], group=32),
        helper.make_node("Clip", ["d", "lo", "hi"], ["a"]),
        helper.make_node("Conv", ["a", "pw"], ["q"]),
        helper.make_node("Add", ["q", "p"], ["y"]),
    ]
    inits = [const(n, w.astype(np.float32)) for n, w in weights.items()]
    inits += [const("lo", np.float32(0.0)), const("hi", np.float32(6.0))]
    model = make_model(nodes, [tensor("x", [1, 16, 20, 20])], [tensor("y", [1, 32, 10, 10])], inits)
    feeds = {"x": rng.standard_normal((1, 16, 20, 20)).astype(np.float32)}
    reference = np.empty((1, 32, 10, 10), np.float32)
    registry.get("onnxruntime").build_graph(import_model(model))([feeds["x"]], [reference])  # unfused

    fused, others = api.graph_variants(import_model(model), "blocked")
    unfused = others["unfused"]
    assert [n.fused for n in fused.nodes if n.op == "Conv"] == [["Relu", "MaxPool"], ["Conv(depthwise)", "Clip", "Add"]]
    assert [n.op for n in unfused.nodes if n.op != "Relayout"] == ["Conv", "MaxPool", "Conv", "Conv"]
    choices = per_node_choices(fused)
    assert {c.impl for c in choices if c.node in {n.name for n in fused.nodes if n.op == "Conv"}} == {
        "halide.conv2d_blocked"
    }
    np.testing.assert_allclose(Executor(fused, choices).run(feeds)["y"], reference, rtol=1e-4, atol=1e-4)

    plan = api.optimize(model, budget=2, records=records_path, libraries=("numpy",), progress=False)
    assert {"per-node", "per-node-unfused"} <= set(plan.meta["plan_candidates"])
    assert set(others) == {"unfused"}  # no 1x1 expansion before the depthwise Conv: no "expanded" graph
    selected = unfused if plan.meta["selected"].endswith("-unfused") else fused
    assert plan.graph.nodes == selected.nodes
    loaded = api.load(plan.save(tmp_path / "plan"))
    np.testing.assert_allclose(loaded.run(feeds)["y"], reference, rtol=1e-4, atol=1e-4)


def layer_scale_model(rng, gamma_shape=(16, 1, 1), through_transpose=True, activation=False):
    """ConvNeXt's block end: Linear (MatMul + bias) on NHWC, back to NCHW, times gamma, plus the input."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["nhwc", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["l"]),
        helper.make_node("Relu" if activation else "Identity", ["l"], ["a"]),
        helper.make_node("Transpose", ["a"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["gamma", "nchw"], ["s"]),
        helper.make_node("Add", ["s", "x"], ["y"]),
    ]
    inits = [
        const("w", rng.standard_normal((16, 16)).astype(np.float32) / 4),
        const("b", rng.standard_normal(16).astype(np.float32)),
        const("gamma", rng.uniform(0.1, 2.0, gamma_shape).astype(np.float32)),
    ]
    shape = [1, 16, 5, 6]
    return import_model(make_model(nodes, [tensor("x", shape)], [tensor("y", shape)], inits))


def test_layer_scale_folds_into_the_linear_layer_through_the_transpose(rng):
    graph = layer_scale_model(rng)
    folded = optimize_graph(graph)
    assert [n.op for n in folded.nodes] == ["Transpose", "MatMul", "Transpose", "Add"]
    assert_same_function(graph, folded, rng)


@pytest.mark.parametrize(("gamma_shape", "activation"), [((16, 5, 1), False), ((16, 1, 1), True)])
def test_scale_stays_when_it_is_not_per_channel_or_follows_an_activation(gamma_shape, activation, rng):
    graph = layer_scale_model(rng, gamma_shape, activation=activation)
    folded = optimize_graph(graph)
    assert "Mul" in [n.op for n in folded.nodes]
    assert_same_function(graph, folded, rng)


def test_per_channel_scale_folds_into_the_conv(rng):
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c", "gamma"], ["y"]),
    ]
    inits = [
        const("w", rng.standard_normal((16, 8, 3, 3)).astype(np.float32)),
        const("b", rng.standard_normal(16).astype(np.float32)),
        const("gamma", rng.uniform(0.5, 2.0, (16, 1, 1)).astype(np.float32)),
    ]
    graph = import_model(make_model(nodes, [tensor("x", [1, 8, 9, 9])], [tensor("y", [1, 16, 9, 9])], inits))
    folded = optimize_graph(graph)
    assert [n.op for n in folded.nodes] == ["Conv"]
    assert_same_function(graph, folded, rng)
