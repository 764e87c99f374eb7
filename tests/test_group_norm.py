"""GroupNorm as PyTorch exports it (Reshape, InstanceNormalization, Reshape, per-channel Mul and Add):
one FusedGroupNorm node whose kernel matches ONNX Runtime on the original graph, plain and blocked,
and keeps a network's values blocked."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from conftest import const, make_model, tensor
from onnx import helper
from test_kernels import assert_kernel_family

from woodpecker.graph.onnx_import import import_model
from woodpecker.graph.passes import optimize_graph
from woodpecker.graph.passes.layout import block_layout
from woodpecker.kernels import registry
from woodpecker.kernels.workload import Workload
from woodpecker.ops.fused import GROUP_NORM


def group_norm_model(shape, groups, affine=True, rng=None, before=None):
    """`before`: a Conv producing x (so the layout pass blocks it), else x is the input."""
    rng = rng or np.random.default_rng()
    channels = shape[1]
    nodes, inits = [], []
    x = "x"
    inputs = [tensor("x", list(shape))]
    if before:
        inputs = [tensor("x0", [shape[0], 3, *shape[2:]])]
        inits.append(const("w", rng.standard_normal((channels, 3, 1, 1)).astype(np.float32)))
        nodes.append(helper.make_node("Conv", ["x0", "w"], ["x"]))
    nodes += [
        helper.make_node("Reshape", [x, "grouped_shape"], ["g"]),
        helper.make_node("InstanceNormalization", ["g", "s", "b"], ["n"], epsilon=1e-5),
        helper.make_node("Reshape", ["n", "shape"], ["r"] if affine else ["y"]),
    ]
    inits += [
        const("grouped_shape", np.array([shape[0], groups, -1], np.int64)),
        const("shape", np.array(shape, np.int64)),
        const("s", rng.uniform(0.5, 2, groups).astype(np.float32)),
        const("b", rng.standard_normal(groups).astype(np.float32)),
    ]
    if affine:
        per_channel = [channels] + [1] * (len(shape) - 2)
        nodes += [helper.make_node("Mul", ["r", "gamma"], ["m"]), helper.make_node("Add", ["m", "beta"], ["y"])]
        inits += [
            const("gamma", rng.standard_normal(per_channel).astype(np.float32)),
            const("beta", rng.standard_normal(per_channel).astype(np.float32)),
        ]
    return make_model(nodes, inputs, [tensor("y", list(shape))], inits)


@pytest.mark.parametrize(
    ("shape", "groups", "affine"),
    [((1, 16, 7, 9), 1, True), ((2, 12, 5, 5), 3, True), ((1, 8, 33), 4, False), ((2, 6, 4, 4), 6, True)],
)
def test_group_norm_fuses_and_matches_the_unfused_graph(shape, groups, affine, rng):
    model = group_norm_model(shape, groups, affine, rng)
    graph = optimize_graph(import_model(model))
    assert [n.op for n in graph.nodes] == [GROUP_NORM], graph.summary()
    workload = Workload.of(graph, graph.nodes[0])
    assert_kernel_family(workload, "halide.group_norm", n_configs=2)
    x = (rng.standard_normal(shape) * 3 + 5).astype(np.float32)  # a mean far from 0
    impl = registry.get("halide.group_norm")
    out = np.empty(shape, np.float32)
    impl.build(workload, impl.space(workload).defaults[0])([x], [out])
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(out, expected[0], rtol=1e-4, atol=1e-4)


def test_group_norm_keeps_values_blocked(rng):
    """After a Conv the group norm reads and writes the blocked layout: the only conversion is the output's."""
    shape = (1, 16, 6, 6)
    model = group_norm_model(shape, 2, True, rng, before="conv")
    graph = block_layout(optimize_graph(import_model(model)), 8)
    assert graph.summary().get("Relayout") == 1, graph.summary()
    norm = next(n for n in graph.nodes if n.op == GROUP_NORM)
    workload = Workload.of(graph, norm)
    assert workload.block(norm.inputs[0]) == 8
    assert_kernel_family(workload, "halide.group_norm", n_configs=2)
