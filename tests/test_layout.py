"""The blocked channel layout: the pass (conversions only where needed) and the kernels that read
and write NCHW[b]c, each against ONNX Runtime (which sees the blocked arrays through the export's
boundary conversions)."""

import dataclasses

import numpy as np
import onnxruntime
import pytest
from conftest import const, make_model, tensor
from onnx import helper
from test_kernels import assert_kernel_family, assert_library_kernel, assert_matches_reference, references

from woodpecker import api
from woodpecker.explore.verify import random_feeds
from woodpecker.graph.ir import Value
from woodpecker.graph.onnx_import import import_model
from woodpecker.graph.passes import optimize_graph
from woodpecker.graph.passes.layout import block_layout
from woodpecker.kernels import registry
from woodpecker.kernels.halide.common import max_accumulators, native_vector_width
from woodpecker.kernels.workload import Workload
from woodpecker.runtime.executor import Executor


def with_blocks(workload: Workload, blocks: dict[str, int]) -> Workload:
    values = {n: dataclasses.replace(v, block=blocks.get(n, v.block)) for n, v in workload.values.items()}
    return dataclasses.replace(workload, values=values)


def conv_workload(rng, c_in, c_out, size, k, stride, pad, groups=1, epilogue="", batch=1):
    weight = rng.standard_normal((c_out, c_in // groups, k, k)).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    out = (size + 2 * pad - k) // stride + 1
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[pad] * 4, strides=[stride] * 2, group=groups)]
    inputs, last = [tensor("x", [batch, c_in, size, size])], "c"
    if "add" in epilogue:
        inputs.append(tensor("r", [batch, c_out, out, out]))
        nodes.append(helper.make_node("Add", [last, "r"], ["a"]))
        last = "a"
    nodes.append(helper.make_node("Relu" if "relu" in epilogue else "Identity", [last], ["y"]))
    model = make_model(nodes, inputs, [tensor("y", [batch, c_out, out, out])], [const("w", weight), const("b", bias)])
    graph = optimize_graph(import_model(model))
    return Workload.of(graph, graph.nodes[0])


BLOCKED_CONV_CASES = [
    # (c_in, c_out, size, k, stride, pad, groups, epilogue, input block, output block)
    (3, 16, 17, 3, 2, 1, 1, "relu", 0, 16),  # the stem: plain input
    (16, 32, 9, 3, 1, 1, 1, "add_relu", 16, 16),  # residual block
    (32, 16, 14, 1, 1, 0, 1, "", 8, 8),  # 1x1, block 8
    (16, 32, 11, 3, 2, 1, 1, "relu", 8, 8),  # strided, width not a multiple of the tile
    (32, 24, 8, 1, 1, 0, 1, "add", 16, 8),  # 16-blocked in, 24 channels out in half vectors
    (24, 32, 8, 3, 1, 1, 1, "relu", 8, 16),  # and back
    (32, 32, 10, 3, 1, 1, 32, "relu", 16, 16),  # depthwise
    (16, 16, 9, 3, 2, 1, 16, "", 8, 8),  # strided depthwise
    (32, 32, 9, 3, 1, 1, 4, "relu", 16, 16),  # grouped (RegNet): two groups of 8 in each block
    (16, 16, 8, 3, 2, 1, 2, "", 8, 8),  # one group per block
    (64, 64, 7, 3, 1, 1, 2, "add_relu", 16, 16),  # two blocks per group
    (64, 32, 6, 1, 1, 0, 4, "", 16, 16),  # 16 input channels per group, 8 output
    (16, 12, 8, 1, 1, 0, 1, "", 16, 4),  # GhostNet's 12 channels: quarter-vector blocks
    (12, 12, 9, 3, 1, 1, 12, "relu", 4, 4),  # their depthwise conv
    (12, 24, 7, 3, 1, 1, 1, "add_relu", 4, 8),  # a shortcut into 4-blocks read by 8-blocks
    (48, 48, 7, 3, 1, 1, 2, "relu", 8, 8),  # RegNetY-016's groups of 24 channels, three blocks each
    (16, 38, 9, 1, 1, 0, 1, "relu", 8, 0),  # ReXNet's projections: blocked in, channels no block divides out
    (12, 6, 7, 3, 1, 1, 1, "", 4, 0),  # GhostNet-050's 6-channel primary convs (a 7-pixel row)
]


def test_blocked_conv2d_batch_inside_the_channel_blocks(rng):
    workload = conv_workload(rng, 16, 32, 9, 3, 1, 1, epilogue="add_relu", batch=3)
    blocked = with_blocks(workload, {"x": 16, workload.node.outputs[0]: 16, workload.node.inputs[3]: 16})
    impl = registry.get("halide.conv2d_blocked")
    assert {c["batch_inner"] for c in impl.space(blocked).all_configs()} == {False, True}
    data = references(blocked, seed=int(rng.integers(1 << 30)))
    for parallel in ("y", "yk", "k"):
        for batch_inner in (False, True):
            config = {**impl.space(blocked).defaults[0], "parallel": parallel, "batch_inner": batch_inner}
            assert_matches_reference(impl.build(blocked, config), blocked, data, config)


@pytest.mark.parametrize(("c_out", "epilogue"), [(24, "add_relu"), (40, "relu")])
def test_blocked_conv2d_wide_pairs_of_half_vector_blocks(c_out, epilogue, rng):
    """An odd number of half-vector blocks: the last vector is half padding, never stored."""
    if native_vector_width() != 16:
        pytest.skip("wide pairs are for targets whose vector holds two 8-channel blocks")
    workload = conv_workload(rng, 16, c_out, 9, 3, 1, 1, epilogue=epilogue)
    blocks = {"x": 16, workload.node.outputs[0]: 8}
    if "add" in epilogue:
        blocks[workload.node.inputs[3]] = 8
    blocked = with_blocks(workload, blocks)
    impl = registry.get("halide.conv2d_blocked")
    # Every tile and parallel order of the wide pairs; the knobs that do not touch them (reduction order,
    # unrolling, padding) are checked on other layers and kept at one value here (144 -> 18 JIT builds).
    plain_knobs = {"reduce_order": "c_inner", "unroll_kw": False, "padding": "copy"}
    wide = [
        c
        for c in impl.space(blocked).all_configs()
        if c["wide"] and c["tile_x"] in (3, 4) and plain_knobs.items() <= c.items()
    ]
    assert {c["tile_k"] for c in wide} == {1, 2, 3} if c_out == 40 else {1, 2}
    data = references(blocked, seed=int(rng.integers(1 << 30)))
    for config in wide:
        assert_matches_reference(impl.build(blocked, config), blocked, data, config)


@pytest.mark.parametrize(
    ("c_in", "c_out", "size", "k", "stride", "pad", "epilogue", "batch", "chunks"),
    [
        (128, 32, 7, 3, 1, 1, "add_relu", 1, {1, 2}),  # 3x3 over 8 input blocks, residual
        (256, 128, 8, 1, 2, 0, "relu", 2, {2, 4, 8}),  # strided 1x1 over 16 input blocks, two images
    ],
)
def test_blocked_conv2d_chunks(c_in, c_out, size, k, stride, pad, epilogue, batch, chunks, rng):
    """`chunk`: partial sums over a few input blocks at a time, added to the accumulators of an image
    or of a strip of rows."""
    workload = conv_workload(rng, c_in, c_out, size, k, stride, pad, epilogue=epilogue, batch=batch)
    blocked = with_blocks(workload, {name: 16 for name in workload.values if name not in workload.constants})
    impl = registry.get("halide.conv2d_blocked")
    width = (size + 2 * pad - k) // stride + 1  # tiles of a whole row, the knobs that do not touch chunks at one value
    tile_k = 2 if 2 * width <= max_accumulators() else 1
    plain_knobs = {"reduce_order": "c_inner", "unroll_kw": False, "padding": "copy", "tile_k": tile_k, "tile_x": width}
    configs = [c for c in impl.space(blocked).all_configs() if c["chunk"] and plain_knobs.items() <= c.items()]
    assert {c["chunk"] for c in configs} == chunks
    assert {(c["parallel"], c["chunk_rows"] > 0) for c in configs} == {
        ("k", False),
        ("k", True),
        ("y", True),
        ("yk", True),
    }
    assert not any(c["batch_inner"] for c in configs)
    data = references(blocked, seed=int(rng.integers(1 << 30)))
    for config in configs:
        assert_matches_reference(impl.build(blocked, config), blocked, data, config)


def test_chunked_starting_points(rng):
    """Whole images under large weights, strips of rows for other 3x3 layers, none for small 1x1 layers."""
    impl = registry.get("halide.conv2d_blocked")
    cases = [  # (channels, size, kernel, (chunk, chunk_rows) of the second starting point)
        (256, 7, 3, (1, 0)),  # 2.25 MiB of weights on 7x7
        (64, 56, 3, (1, 2)),  # 144 KiB
        (64, 56, 1, (0, 0)),  # 16 KiB: no chunks at all
    ]
    for channels, size, k, expected in cases:
        workload = conv_workload(rng, channels, channels, size, k, 1, k // 2)
        blocked = with_blocks(workload, {"x": 16, workload.node.outputs[0]: 16})
        second = impl.space(blocked).valid_defaults()[1]
        assert (second.get("chunk", 0), second.get("chunk_rows", 0)) == expected


@pytest.mark.slow
@pytest.mark.parametrize("case", BLOCKED_CONV_CASES)
def test_blocked_conv2d(case, rng):
    *shape, epilogue, in_block, block = case
    workload = conv_workload(rng, *shape, epilogue=epilogue)
    blocks = {"x": in_block, workload.node.outputs[0]: block}
    if "add" in epilogue:
        blocks[workload.node.inputs[3]] = block
    blocked = with_blocks(workload, blocks)
    assert not registry.get("halide.conv2d").matches(blocked)  # the NCHW kernel never sees blocked values
    assert_kernel_family(blocked, "halide.conv2d_blocked")


@pytest.mark.parametrize(
    ("op", "attrs", "out_block"),
    [
        ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), 16),
        ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2]), 16),
        ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1), 16),  # overhang past the edge
        ("GlobalAveragePool", {}, 0),
        ("GlobalMaxPool", {}, 0),
    ],
)
def test_blocked_pool(op, attrs, out_block):
    model = make_model(
        [helper.make_node(op, ["x"], ["y"], **attrs)], [tensor("x", [2, 32, 9, 9])], [tensor("y", ["n", "c", "h", "w"])]
    )
    graph = import_model(model)
    workload = with_blocks(Workload.of(graph, graph.nodes[0]), {"x": 16, "y": out_block})
    assert_kernel_family(workload, "halide.pool", n_configs=2)


def test_relayout_concat_and_elementwise_on_blocked_values(rng):
    shape = (2, 32, 5, 7)
    for source, target in ((0, 16), (16, 0), (4, 8), (16, 4)):
        values = {"a": Value("a", shape, "float32", source), "b": Value("b", shape, "float32", target)}
        node = dataclasses.replace(
            import_model(_identity_model(shape)).nodes[0], op="Relayout", inputs=("a",), outputs=("b",)
        )
        workload = Workload(node, values, {}, 17)
        assert_library_kernel(workload, "numpy")
    graph = import_model(
        make_model(
            [helper.make_node("Concat", ["a", "b"], ["c"], axis=1), helper.make_node("Add", ["c", "d"], ["y"])],
            [tensor("a", [1, 16, 4, 4]), tensor("b", [1, 32, 4, 4]), tensor("d", [1, 48, 4, 4])],
            [tensor("y", [1, 48, 4, 4])],
        )
    )
    blocks = {"a": 16, "b": 16, "c": 16, "d": 16, "y": 16}
    concat, add = (with_blocks(Workload.of(graph, n), blocks) for n in graph.nodes)
    assert_library_kernel(concat, "numpy")
    assert_kernel_family(add, "halide.elementwise", n_configs=1)


def _identity_model(shape):
    return make_model(
        [helper.make_node("Identity", ["a"], ["b"])], [tensor("a", list(shape))], [tensor("b", list(shape))]
    )


def branchy_model(rng):
    """x -> A (conv 16) -> {B, C} (conv 16 each) -> Concat -> MaxPool -> {D (conv, 5 channels), Softmax};
    A -> GlobalAveragePool -> Flatten. Only MaxPool's output needs converting (for Softmax; D reads it blocked)."""

    def conv(name, src, c_in, c_out):
        w = const(f"{name}_w", rng.standard_normal((c_out, c_in, 3, 3)).astype(np.float32) * 0.3)
        return helper.make_node("Conv", [src, f"{name}_w"], [name], pads=[1] * 4), w

    parts = [conv("A", "x", 3, 16), conv("B", "A", 16, 16), conv("C", "A", 16, 16)]
    nodes = [p[0] for p in parts]
    nodes += [
        helper.make_node("Concat", ["B", "C"], ["cat"], axis=1),
        helper.make_node("MaxPool", ["cat"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    d, d_w = conv("D", "m", 32, 5)
    nodes += [
        d,
        helper.make_node("Softmax", ["m"], ["s"], axis=1),
        helper.make_node("GlobalAveragePool", ["A"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
    ]
    inits = [p[1] for p in parts] + [d_w]
    outputs = [tensor("D", [1, 5, 4, 4]), tensor("s", [1, 32, 4, 4]), tensor("f", [1, 16])]
    return make_model(nodes, [tensor("x", [1, 3, 8, 8])], outputs, inits)


def test_layout_pass_converts_only_where_an_op_has_no_blocked_kernel(rng):
    graph = block_layout(optimize_graph(import_model(branchy_model(rng))), 16)
    relayouts = [n for n in graph.nodes if n.op == "Relayout"]
    assert [n.inputs for n in relayouts] == [("m",)]
    blocks = {name: graph.values[name].block for name in ("A", "B", "C", "cat", "m", "D", "s", "g", "f")}
    assert blocks == {"A": 16, "B": 16, "C": 16, "cat": 16, "m": 16, "D": 0, "s": 0, "g": 0, "f": 0}
    assert all(not graph.values[n].block for n in graph.inputs + graph.outputs)


def test_channels_only_half_a_vector_divides_stay_blocked_in_half_vectors(exported):
    """MobileNetV2's 24-channel values take blocks of 8: no conversion left in the whole model."""
    graph = block_layout(optimize_graph(import_model(exported("mobilenet_v2"), 1)), 16)
    assert sum(n.op == "Relayout" for n in graph.nodes) == 0
    blocks = {v.shape[1]: v.block for v in graph.values.values() if v.block}
    assert blocks[24] == 8 and blocks[32] == 16 and blocks[96] == 16


def test_blocked_layout_ends_at_a_graph_output(rng):
    """A blocked value that is a graph output is converted back under its own name."""
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4)],
        [tensor("x", [1, 3, 6, 6])],
        [tensor("y", [1, 16, 6, 6])],
        [const("w", rng.standard_normal((16, 3, 3, 3)).astype(np.float32))],
    )
    graph = block_layout(import_model(model), 16)
    assert [n.op for n in graph.nodes] == ["Conv", "Relayout"]
    assert graph.values[graph.nodes[0].outputs[0]].block == 16 and graph.values["y"].block == 0


@pytest.mark.parametrize("activation", ["LeakyRelu", "Elu", "Softplus"])
def test_activations_of_modern_cnns_keep_values_blocked(activation, rng):
    """CSP networks' LeakyRelu between convolutions: no conversion but the graph output's."""
    weights = [rng.standard_normal((32, c, 3, 3)).astype(np.float32) for c in (3, 32)]
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1] * 4),
            helper.make_node(activation, ["a"], ["b"]),
            helper.make_node("Conv", ["b", "w1"], ["c"], pads=[1] * 4),
            helper.make_node(activation, ["c"], ["y"]),
        ],
        [tensor("x", [1, 3, 8, 8])],
        [tensor("y", [1, 32, 8, 8])],
        [const("w0", weights[0]), const("w1", weights[1])],
    )
    graph = block_layout(optimize_graph(import_model(model)), 16)
    assert [n.op for n in graph.nodes].count("Relayout") == 1 and graph.nodes[-1].op == "Relayout"
    workload = Workload.of(graph, next(n for n in graph.nodes if n.op == activation))
    assert workload.blocked and registry.get("halide.elementwise").matches(workload)


def test_relu6_after_a_squeeze_and_excitation_scale_stays_blocked(rng):
    """ReXNet: Conv, depthwise Conv, squeeze-and-excitation scale, Clip(0, 6), Conv; blocked throughout."""
    shapes = ((24, 8, 1, 1), (24, 1, 3, 3), (8, 24, 1, 1), (24, 8, 1, 1), (16, 24, 1, 1))
    weights = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    model = make_model(
        [
            helper.make_node("Conv", ["x", "pw0"], ["e"]),
            helper.make_node("Conv", ["e", "dw"], ["a"], pads=[1] * 4, group=24),
            helper.make_node("GlobalAveragePool", ["a"], ["p"]),
            helper.make_node("Conv", ["p", "se0"], ["r"]),
            helper.make_node("Relu", ["r"], ["q"]),
            helper.make_node("Conv", ["q", "se1"], ["z"]),
            helper.make_node("Sigmoid", ["z"], ["s"]),
            helper.make_node("Mul", ["a", "s"], ["m"]),
            helper.make_node("Clip", ["m", "lo", "hi"], ["c"]),
            helper.make_node("Conv", ["c", "pw"], ["y"]),
        ],
        [tensor("x", [1, 8, 8, 8])],
        [tensor("y", [1, 16, 8, 8])],
        [
            *(const(n, w) for n, w in zip(("pw0", "dw", "se0", "se1", "pw"), weights)),
            const("lo", np.float32(0)),
            const("hi", np.float32(6)),
        ],
    )
    graph = block_layout(optimize_graph(import_model(model)), 8)
    assert [n.op for n in graph.nodes].count("Relayout") == 1 and graph.nodes[-1].op == "Relayout"  # the exit
    workload = Workload.of(graph, next(n for n in graph.nodes if n.op == "Clip"))
    assert workload.blocked and registry.get("halide.elementwise").matches(workload)


def cnn_builder(rng, nodes, inits, **indices):
    """`conv` and `node`, adding to `nodes` and `inits` (convs with random weights scaled by their
    fan-in, "same" padding), after the int64 constants `indices` (Slice bounds) are added."""

    def array(*shape):
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    def conv(name, src, c_in, c_out, k=1, group=1):
        nodes.append(helper.make_node("Conv", [src, f"{name}_w"], [name], pads=[k // 2] * 4, group=group))
        inits.append(const(f"{name}_w", array(c_out, c_in // group, k, k)))

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], **attrs))

    inits.extend(const(name, np.array([value], np.int64)) for name, value in indices.items())
    return conv, node


def ghost_csp_model(rng, size=8):
    """Channel counts no vector width divides, as GhostNet and CSPNet have them: a ghost module
    (a 1x1 conv to 12 channels, a depthwise conv of those, both concatenated and sliced to all 24),
    a shortcut conv added to it, a squeeze-and-excitation scale, and a CSP split of 32 channels
    into halves (one through a conv) concatenated again."""

    nodes, inits = [], []
    conv, node = cnn_builder(rng, nodes, inits, zero=0, all=24, half=16, end=32, axis=1)
    conv("stem", "x", 3, 16, k=3)
    conv("primary", "stem", 16, 12)
    conv("cheap", "primary", 12, 12, k=3, group=12)
    node("Concat", ["primary", "cheap"], "both", axis=1)
    node("Slice", ["both", "zero", "all", "axis"], "ghost_part")
    conv("short", "stem", 16, 24)
    node("Add", ["ghost_part", "short"], "ghost")
    node("GlobalAveragePool", ["ghost"], "se_pool")
    conv("se_reduce", "se_pool", 24, 8)
    node("Relu", ["se_reduce"], "se_relu")
    conv("se_expand", "se_relu", 8, 24)
    node("HardSigmoid", ["se_expand"], "se_gate")
    node("Mul", ["ghost", "se_gate"], "ghost_se")
    conv("wide", "ghost_se", 24, 32)
    node("Slice", ["wide", "zero", "half", "axis"], "first")
    node("Slice", ["wide", "half", "end", "axis"], "second")
    conv("csp", "second", 16, 16, k=3)
    node("Concat", ["first", "csp"], "y", axis=1)
    return make_model(nodes, [tensor("x", [1, 3, size, size])], [tensor("y", [1, 32, size, size])], inits)


def test_channels_no_vector_divides_stay_blocked_through_concat_slice_and_shortcuts(rng):
    """GhostNet's 12-channel halves in blocks of 4, concatenated; the shortcut conv (its Add fused) writes that block;
    CSPNet's halves sliced in whole blocks: the graph's output is the only conversion."""
    graph = block_layout(optimize_graph(import_model(ghost_csp_model(rng))), 16)
    assert [n.op for n in graph.nodes].count("Relayout") == 1 and graph.nodes[-1].op == "Relayout"
    blocks = {name: graph.values[name].block for name in ("primary", "cheap", "both", "ghost", "first", "second")}
    assert blocks == {"primary": 4, "cheap": 4, "both": 4, "ghost": 4, "first": 16, "second": 16}
    slices = [n for n in graph.nodes if n.op == "Slice"]
    assert len(slices) == 2  # the ghost module's slice of everything is gone
    for node in slices:
        assert_kernel_family(Workload.of(graph, node), "halide.data_movement", n_configs=2)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["ghost_csp", "odd_channels"])
def test_ghost_and_csp_plan_on_generated_kernels_matches_onnxruntime(model, rng, records_path):
    build = ghost_csp_model if model == "ghost_csp" else odd_channels_model
    plan = api.optimize(build(rng), budget=1, records=records_path, libraries=("numpy",), progress=False)
    assert plan.meta["summary"]["relayouts"] == 1 and plan.meta["summary"]["fallback"] == 0
    generated = every_generated(plan)
    feeds = random_feeds(plan.input_specs, seed=int(rng.integers(1 << 30)))
    expected = plan.run(feeds)  # verified against ONNX Runtime by optimize
    (output,) = expected
    np.testing.assert_allclose(
        Executor(plan.graph, generated).run(feeds)[output], expected[output], rtol=1e-4, atol=1e-5
    )


def every_generated(plan) -> list:
    """The plan's choices with every node on its fastest correct generated kernel, where it has one."""
    choices = []
    for choice in plan.choices:
        ok = [c for c in choice.candidates if c["impl"].startswith("halide") and c["error"] is None]
        best = min(ok, key=lambda c: c["median_s"], default=None)
        choices.append(dataclasses.replace(choice, impl=best["impl"], config=best["config"]) if best else choice)
    return choices


@pytest.mark.slow
def test_blocked_plan_matches_onnxruntime_and_survives_save_load(rng, tmp_path, records_path):
    plan = api.optimize(branchy_model(rng), budget=2, records=records_path, libraries=("numpy",), progress=False)
    assert plan.meta["summary"]["relayouts"] == 1
    # Whatever was selected, the plan with every generated kernel that passed its check computes the same.
    generated = every_generated(plan)
    assert sum(c.impl in ("halide.conv2d_blocked", "halide.winograd") for c in generated) == 4  # D: plain out
    loaded = api.load(plan.save(tmp_path / "plan"))
    feeds = random_feeds(plan.input_specs, seed=5)
    expected = plan.run(feeds)
    for actual in (loaded.run(feeds), Executor(plan.graph, generated).run(feeds)):
        for name in expected:
            np.testing.assert_allclose(actual[name], expected[name], rtol=1e-5, atol=1e-5)


def channel_last_block(rng, channels=32, size=6):
    """ConvNeXt's block: depthwise conv, to NHWC, LayerNorm, linear, back to NCHW, layer scale, residual."""
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c0", "dw"], ["c1"], pads=[3, 3, 3, 3], group=channels),
        helper.make_node("Transpose", ["c1"], ["t1"], perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["t1", "ln_scale", "ln_bias"], ["n1"], axis=-1, epsilon=1e-6),
        helper.make_node("MatMul", ["n1", "w1"], ["m1"]),
        helper.make_node("Add", ["m1", "b1"], ["h1"]),
        helper.make_node("Transpose", ["h1"], ["t2"], perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["t2", "gamma"], ["s"]),
        helper.make_node("Add", ["s", "c0"], ["y"]),
    ]

    def array(*shape):
        return rng.standard_normal(shape).astype(np.float32) / 4

    inits = [
        const("w0", array(channels, 3, 3, 3)),
        const("dw", array(channels, 1, 7, 7)),
        const("ln_scale", array(channels)),
        const("ln_bias", array(channels)),
        const("w1", array(channels, channels)),
        const("b1", array(channels)),
        const("gamma", array(channels, 1, 1)),
    ]
    shape = [1, channels, size, size]
    return make_model(nodes, [tensor("x", [1, 3, size, size])], [tensor("y", shape)], inits)


def test_channel_last_blocks_move_whole_channel_vectors(rng):
    graph = block_layout(optimize_graph(import_model(channel_last_block(rng))), 16)
    assert [n.op for n in graph.nodes].count("Relayout") == 1  # the graph's output only
    transposes = [n for n in graph.nodes if n.op == "Transpose"]
    assert [graph.values[n.inputs[0]].block for n in transposes] == [16, 0]
    assert [graph.values[n.outputs[0]].block for n in transposes] == [0, 16]
    for node in transposes:
        assert_kernel_family(Workload.of(graph, node), "halide.data_movement", n_configs=2)
    for node in graph.nodes:
        if node.op in ("Mul", "Add"):
            assert Workload.of(graph, node).blocks == {16}


@pytest.mark.slow
def test_channel_last_block_plan_on_generated_kernels_matches_onnxruntime(rng, records_path):
    plan = api.optimize(channel_last_block(rng), budget=1, records=records_path, libraries=("numpy",), progress=False)
    generated = every_generated(plan)
    assert all(c.impl.startswith("halide") for c in generated if c.node != plan.graph.nodes[-1].name)
    feeds = random_feeds(plan.input_specs, seed=int(rng.integers(1 << 30)))
    expected = plan.run(feeds)  # verified against ONNX Runtime by optimize
    (output,) = expected
    np.testing.assert_allclose(
        Executor(plan.graph, generated).run(feeds)[output], expected[output], rtol=1e-4, atol=1e-5
    )


def test_a_classifier_head_flattens_blocked_values_without_converting(rng, records_path):
    """Conv -> GlobalAveragePool -> 1x1 Conv -> Flatten: the (N, C, 1, 1) conv output's blocked bytes
    are the plain value's, so Flatten reads them as they are (a view) and nothing converts."""
    weights = [rng.standard_normal(shape).astype(np.float32) for shape in ((16, 3, 3, 3), (32, 16, 1, 1))]
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1] * 4),
            helper.make_node("GlobalAveragePool", ["a"], ["p"]),
            helper.make_node("Conv", ["p", "w1"], ["c"]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("Flatten", ["r"], ["y"]),
        ],
        [tensor("x", [2, 3, 6, 6])],
        [tensor("y", [2, 32])],
        [const("w0", weights[0]), const("w1", weights[1])],
    )
    graph = block_layout(optimize_graph(import_model(model)), 8)
    assert "Relayout" not in [n.op for n in graph.nodes] and graph.values["r"].block == 8
    plan = api.optimize(model, budget=1, records=records_path, libraries=("numpy",), progress=False)
    assert plan.meta["summary"]["relayouts"] == 0
    feeds = random_feeds(plan.input_specs, seed=int(rng.integers(1 << 30)))
    (expected,) = onnxruntime.InferenceSession(model.SerializeToString()).run(None, feeds)
    np.testing.assert_allclose(plan.run(feeds)["y"], expected, rtol=1e-4, atol=1e-5)


def odd_channels_model(rng, size=8):
    """Channel counts no block divides, as GhostNet-050 and ReXNet have them: a ghost module of
    6 + 6 channels (a 1x1 conv, a depthwise conv of it, concatenated) added to a shortcut conv,
    then a projection to 14 channels whose first 12 get the module's output added (ReXNet's
    partial shortcut: Slice, Add, Concat with the other 2), read by a last conv."""

    nodes, inits = [], []
    conv, node = cnn_builder(rng, nodes, inits, zero=0, twelve=12, fourteen=14, axis=1)
    conv("stem", "x", 3, 16, k=3)
    conv("primary", "stem", 16, 6)
    conv("cheap", "primary", 6, 6, k=3, group=6)
    node("Concat", ["primary", "cheap"], "both", axis=1)
    conv("short", "stem", 16, 12)
    node("Add", ["both", "short"], "ghost")
    conv("project", "ghost", 12, 14)
    node("Slice", ["project", "zero", "twelve", "axis"], "head")
    node("Add", ["head", "ghost"], "summed")
    node("Slice", ["project", "twelve", "fourteen", "axis"], "tail")
    node("Concat", ["summed", "tail"], "joined", axis=1)
    conv("last", "joined", 14, 16, k=3)
    return make_model(nodes, [tensor("x", [1, 3, size, size])], [tensor("last", [1, 16, size, size])], inits)


def test_channel_counts_no_block_divides_convert_nowhere(rng):
    """Convs write them plain from blocked inputs, Concat and Slice copy between layouts: the
    graph's output is the only conversion (GhostNet-050 and ReXNet-100: 14 and 13 before)."""
    graph = block_layout(optimize_graph(import_model(odd_channels_model(rng))), 8)
    assert [n.op for n in graph.nodes].count("Relayout") == 1 and graph.nodes[-1].op == "Relayout"
    names = ("primary", "cheap", "both", "ghost", "project", "head", "summed", "tail", "joined")
    blocks = {name: graph.values[name].block for name in names}
    assert blocks == dict(zip(names, (0, 0, 4, 4, 0, 4, 4, 0, 0)))
    for node in graph.nodes:
        workload = Workload.of(graph, node)
        if node.op in ("Concat", "Slice") and workload.blocked or node.outputs[0] == "project":
            family = "halide.conv2d_blocked" if node.op == "Conv" else "halide.channel_copy"
            assert_kernel_family(workload, family, n_configs=2)


def test_channel_copy_between_any_blocks():
    """Concats of parts in several layouts into another, strided Slices between layouts."""
    model = make_model(
        [
            helper.make_node("Concat", ["a", "b", "c"], ["y"], axis=1),
            helper.make_node("Slice", ["y", "starts", "ends", "axes", "steps"], ["s"]),
        ],
        [tensor("a", [2, 8, 5, 7]), tensor("b", [2, 4, 5, 7]), tensor("c", [2, 4, 5, 7])],
        [tensor("s", [2, 8, 2, 7])],
        [
            const("starts", np.array([0, 1], np.int64)),
            const("ends", np.array([16, 5], np.int64)),
            const("axes", np.array([1, 2], np.int64)),
            const("steps", np.array([2, 2], np.int64)),
        ],
    )
    graph = import_model(model)
    concat, slice_ = (Workload.of(graph, n) for n in graph.nodes)
    for blocks in ({"a": 8, "b": 4, "y": 8}, {"a": 8, "c": 4}, {"b": 4, "y": 16}):
        assert_kernel_family(with_blocks(concat, blocks), "halide.channel_copy", n_configs=2)  # both schedules
    for blocks in ({"s": 4}, {"y": 8}, {"y": 4, "s": 8}):
        assert_kernel_family(with_blocks(slice_, blocks), "halide.channel_copy", n_configs=1)


def test_channel_shuffle_copies_between_blocks(rng):
    """ShuffleNet's channel shuffle as a Gather of channels (graph/passes/channel_shuffle.py), read
    in one block and written in another."""
    order = np.arange(16).reshape(2, 8).T.ravel()
    model = make_model(
        [helper.make_node("Gather", ["x", "order"], ["y"], axis=1)],
        [tensor("x", [1, 16, 5, 6])],
        [tensor("y", [1, 16, 5, 6])],
        [const("order", order)],
    )
    workload = Workload.of(import_model(model), import_model(model).nodes[0])
    for blocks in ({"x": 8, "y": 4}, {"x": 4}, {"y": 8}):
        assert_kernel_family(with_blocks(workload, blocks), "halide.channel_copy", n_configs=1)


def test_upsampled_branches_stay_blocked(rng):
    """HRNet's and FPN's fusion: a coarse branch's conv, upsampled by Resize and added to the fine one."""
    weights = [rng.standard_normal(shape).astype(np.float32) for shape in ((16, 3, 3, 3), (16, 16, 3, 3))]
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w0"], ["fine"], pads=[1] * 4),
            helper.make_node("Conv", ["fine", "w1"], ["coarse"], pads=[1] * 4, strides=[2, 2]),
            helper.make_node("Resize", ["coarse", "", "scales"], ["up"], mode="nearest"),
            helper.make_node("Add", ["fine", "up"], ["y"]),
        ],
        [tensor("x", [1, 3, 8, 8])],
        [tensor("y", [1, 16, 8, 8])],
        [const("w0", weights[0]), const("w1", weights[1]), const("scales", np.array([1, 1, 2, 2], np.float32))],
    )
    graph = block_layout(optimize_graph(import_model(model)), 8)
    assert [n.op for n in graph.nodes].count("Relayout") == 1 and graph.nodes[-1].op == "Relayout"
    resize = next(n for n in graph.nodes if n.op == "Resize")
    assert graph.values[resize.outputs[0]].block == 8
    assert registry.get("halide.resize").matches(Workload.of(graph, resize))
