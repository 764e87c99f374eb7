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
