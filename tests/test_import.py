import numpy as np
import onnx
import pytest
from conftest import const, make_model, tensor
from onnx import helper

from woodpecker.errors import ModelError
from woodpecker.graph.onnx_import import import_model


def conv_model(rng, batch="N"):
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    return make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["y"], ["z"])],
        [tensor("x", [batch, 3, 16, 16])],
        [tensor("z", [batch, 8, 16, 16])],
        [const("w", w)],
    )


def test_import_infers_static_shapes_and_constants(rng):
    graph = import_model(conv_model(rng), batch=4)
    assert graph.inputs == ["x"] and graph.outputs == ["z"]
    assert graph.shape("y") == (4, 8, 16, 16) and graph.shape("z") == (4, 8, 16, 16)
    assert graph.constants["w"].shape == (8, 3, 3, 3)
    assert [n.op for n in graph.nodes] == ["Conv", "Relu"]


def test_dynamic_batch_defaults_to_one(rng):
    assert import_model(conv_model(rng)).shape("z")[0] == 1


def test_constant_nodes_become_arrays():
    model = make_model(
        [
            helper.make_node("Constant", [], ["c"], value=onnx.numpy_helper.from_array(np.ones((2, 2), np.float32))),
            helper.make_node("Add", ["x", "c"], ["y"]),
        ],
        [tensor("x", [2, 2])],
        [tensor("y", [2, 2])],
    )
    graph = import_model(model)
    assert np.array_equal(graph.constants["c"], np.ones((2, 2))) and len(graph.nodes) == 1


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        import_model(tmp_path / "absent.onnx")


def test_not_onnx(tmp_path):
    path = tmp_path / "text.onnx"
    path.write_text("definitely not a protobuf")
    with pytest.raises(ModelError):
        import_model(path)


def test_truncated(tmp_path, rng):
    path = tmp_path / "cut.onnx"
    data = conv_model(rng).SerializeToString()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError):
        import_model(path)


def test_unsupported_opset(rng):
    model = conv_model(rng)
    model.opset_import[0].version = 3
    with pytest.raises(ModelError, match="unsupported opset 3"):
        import_model(model)


def test_dynamic_spatial_dim_is_rejected():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [1, 3, "H", 8])], [tensor("y", [1, 3, "H", 8])]
    )
    with pytest.raises(ModelError, match="dynamic dimension 2"):
        import_model(model)


def channel_shuffle_model(channels=8, groups=2):
    """torchvision's ShuffleNet channel shuffle as the exporter writes it with a dynamic batch: the
    Reshape targets are computed from Shape -> Gather -> Div -> Cast -> Unsqueeze -> Concat."""

    def scalar(name, value):
        return helper.make_node("Constant", [], [name], value=const(name, np.array(value, np.int64)))

    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        scalar("i0", 0),
        scalar("i1", 1),
        scalar("g", groups),
        helper.make_node("Gather", ["shape", "i0"], ["n"], axis=0),
        helper.make_node("Gather", ["shape", "i1"], ["c"], axis=0),
        helper.make_node("Div", ["c", "g"], ["per_group_f"]),
        helper.make_node("Cast", ["per_group_f"], ["per_group"], to=onnx.TensorProto.INT64),
        helper.make_node("Constant", [], ["axis0"], value=const("axis0", np.array([0], np.int64))),
        *[helper.make_node("Unsqueeze", [a, "axis0"], [f"{a}_1d"]) for a in ("n", "g", "per_group")],
        helper.make_node("Constant", [], ["hw"], value=const("hw", np.array([4, 4], np.int64))),
        helper.make_node("Concat", ["n_1d", "g_1d", "per_group_1d", "hw"], ["split_shape"], axis=0),
        helper.make_node("Reshape", ["x", "split_shape"], ["split"]),
        helper.make_node("Transpose", ["split"], ["shuffled"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Constant", [], ["flat_shape"], value=const("flat_shape", np.array([-1, channels, 4, 4]))),
        helper.make_node("Reshape", ["shuffled", "flat_shape"], ["y"]),
    ]
    return make_model(nodes, [tensor("x", ["batch", channels, 4, 4])], [tensor("y", ["batch", channels, 4, 4])])


def test_reshape_targets_computed_from_shapes_are_folded_at_import(rng):
    graph = import_model(channel_shuffle_model(), batch=3)
    assert [n.op for n in graph.nodes] == ["Reshape", "Transpose", "Reshape"]
    assert graph.shape("split") == (3, 2, 4, 4, 4) and graph.shape("y") == (3, 8, 4, 4)


def test_import_time_folding_leaves_a_node_whose_result_would_be_huge():
    """As the folding pass does: a 67 MB ConstantOfShape stays a node instead of becoming a weight."""
    model = channel_shuffle_model()
    shape = helper.make_node("Constant", [], ["big_shape"], value=const("big_shape", np.array([4097, 4096])))
    fill = helper.make_node("ConstantOfShape", ["big_shape"], ["big"], value=const("one", np.ones(1, np.float32)))
    total = helper.make_node("ReduceSum", ["big"], ["big_sum"], keepdims=0)
    model.graph.node.extend([shape, fill, total])
    model.graph.output.append(tensor("big_sum", []))
    graph = import_model(model, batch=2)
    assert "ConstantOfShape" in [n.op for n in graph.nodes] and "big" not in graph.constants
    assert graph.shape("split") == (2, 2, 4, 4, 4)  # the small shape arithmetic still folded


def subgraph_models(rng) -> dict[str, onnx.ModelProto]:
    """If, Loop and Scan whose subgraphs read outer values: a blocked convolution's output (which the
    layout pass converts, so the subgraph must read it under its new name) and constants."""
    w = const("w", rng.standard_normal((16, 3, 3, 3)).astype(np.float32))
    conv = helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1])
    x = tensor("x", [1, 3, 8, 8])
    then = helper.make_graph([helper.make_node("Relu", ["c"], ["t"])], "then", [], [tensor("t", [1, 16, 8, 8])])
    other = helper.make_graph([helper.make_node("Neg", ["c"], ["e"])], "else", [], [tensor("e", [1, 16, 8, 8])])
    branch = make_model(
        [
            conv,
            helper.make_node("ReduceSum", ["c"], ["s"], keepdims=0),
            helper.make_node("Greater", ["s", "zero"], ["positive"]),
            helper.make_node("If", ["positive"], ["y"], then_branch=then, else_branch=other),
        ],
        [x],
        [tensor("y", [1, 16, 8, 8])],
        [w, const("zero", np.float32(0))],
    )
    body = helper.make_graph(
        [
            helper.make_node("Mul", ["v_in", "half"], ["scaled"]),
            helper.make_node("Add", ["scaled", "c"], ["v_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, []),
            tensor("v_in", [1, 16, 8, 8]),
        ],
        [helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []), tensor("v_out", [1, 16, 8, 8])],
    )
    loop = make_model(
        [conv, helper.make_node("Loop", ["trips", "go", "start"], ["y"], body=body)],
        [x],
        [tensor("y", [1, 16, 8, 8])],
        [
            w,
            const("trips", np.array(3, np.int64)),
            const("go", np.array(True)),
            const("start", np.ones((1, 16, 8, 8), np.float32)),
            const("half", np.float32(0.5)),
        ],
    )
    step = helper.make_graph(
        [
            helper.make_node("Add", ["state_in", "row"], ["state_out"]),
            helper.make_node("Mul", ["state_out", "k"], ["o"]),
        ],
        "step",
        [tensor("state_in", [8]), tensor("row", [8])],
        [tensor("state_out", [8]), tensor("o", [8])],
    )
    scan = make_model(
        [
            helper.make_node("Relu", ["m"], ["r"]),
            helper.make_node("Scan", ["init", "r"], ["final", "rows"], body=step, num_scan_inputs=1),
        ],
        [tensor("m", [5, 8]), tensor("init", [8])],
        [tensor("final", [8]), tensor("rows", [5, 8])],
        [const("k", rng.standard_normal(8).astype(np.float32))],
    )
    return {"if": branch, "loop": loop, "scan": scan}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["if", "loop", "scan"])
def test_nodes_with_subgraphs_run_whole_on_onnx_runtime(kind, rng, tmp_path):
    """Import keeps them, passes never fold or fuse them, and the plan (saved and loaded) computes
    what ONNX Runtime computes, the outer values they read renamed where the layout pass converted them."""
    import onnxruntime as ort

    import woodpecker

    model = subgraph_models(rng)[kind]
    graph = import_model(model)
    op = {"if": "If", "loop": "Loop", "scan": "Scan"}[kind]
    assert op in [n.op for n in graph.nodes]
    plan = woodpecker.optimize(
        model, budget=1, records=tmp_path / "r.sqlite", progress=False, libraries=["onnxruntime"]
    )
    node = next(n for n in plan.graph.nodes if n.op == op)
    assert next(c.impl for c in plan.choices if c.node == node.name) == "onnxruntime"
    plan.save(tmp_path / "plan")
    loaded = woodpecker.load(tmp_path / "plan")
    feeds = {
        i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
        for i in model.graph.input
    }
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    actual = loaded.run(feeds)
    for output, reference in zip(model.graph.output, expected):
        np.testing.assert_allclose(actual[output.name], reference, rtol=1e-5, atol=1e-5)


def test_import_and_passes_remove_nodes_only_in_named_steps(rng):
    """Every computing node of a model reaches the graph unless a named step removed it: import's
    folding of what is known before any input, or a pass; `history` accounts for each one."""
    from woodpecker.api import graph_variants
    from woodpecker.graph.passes import BLOCKED_PASSES, DEFAULT_PASSES, EXPAND_PASSES

    steps = {"fold_known (import)"} | {p.__name__ for p in (*DEFAULT_PASSES, *BLOCKED_PASSES, *EXPAND_PASSES)}
    models = [conv_model(rng), channel_shuffle_model(), *subgraph_models(rng).values()]
    for model in models:
        computing = sum(n.op_type != "Constant" for n in model.graph.node)
        fused, others = graph_variants(import_model(model), "blocked")
        for graph in (fused, *others.values()):
            count = computing
            for step, before, after in graph.history:
                assert step in steps and before == count, graph.history
                count = after
            relayouts = sum(n.op == "Relayout" for n in graph.nodes)  # added by the layout pass, never removed
            assert count == len(graph.nodes) - relayouts
