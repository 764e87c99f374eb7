"""Memory planning: buffers are reused, and no two values alive at the same time share memory."""

import numpy as np
import onnxruntime as ort
import pytest

from woodpecker import api
from woodpecker.graph.onnx_import import import_model, load_onnx, with_static_inputs
from woodpecker.graph.passes import optimize_graph
from woodpecker.graph.passes.layout import RESHAPE_OPS
from woodpecker.kernels import registry
from woodpecker.kernels.workload import Workload
from woodpecker.plan.choice import Choice
from woodpecker.runtime.executor import Executor
from woodpecker.runtime.memory import ALIGNMENT, HUGE_PAGE, Lifetime, aligned_empty, plan_memory


def test_planner_never_overlaps_live_values():
    rng = np.random.default_rng()
    lifetimes = []
    for i in range(200):
        first = int(rng.integers(-1, 50))
        lifetimes.append(Lifetime(f"v{i}", int(rng.integers(1, 5000)), first, first + int(rng.integers(0, 8))))
    plan = plan_memory(lifetimes)
    for a in lifetimes:
        for b in lifetimes:
            if a.name < b.name and a.overlaps(b):
                a0, b0 = plan.offsets[a.name], plan.offsets[b.name]
                assert a0 + a.nbytes <= b0 or b0 + b.nbytes <= a0, (a, b)
    assert plan.arena_bytes < plan.total_bytes  # short lifetimes leave room to reuse


def per_node_choices(graph, elementwise_config=None):
    """Every node on its own generated kernel where there is one, reshapes as NumPy views, ONNX Runtime elsewhere."""
    choices = []
    for node in graph.nodes:
        workload = Workload.of(graph, node)
        impl = next((i for i in registry.candidates(workload, ()) if i.capabilities.compiled), None)
        if node.op in RESHAPE_OPS or (node.op == "Concat" and registry.get("numpy").matches(workload)):
            choices.append(Choice(node.name, "numpy", {}, "library"))
        elif impl is None:
            choices.append(Choice(node.name, "onnxruntime", {}, "library"))
        else:
            space = impl.space(workload)
            config = (space.valid_defaults() or space.sample(1))[0]
            if impl.name == "halide.elementwise" and elementwise_config:
                config = elementwise_config
            choices.append(Choice(node.name, impl.name, config, "generated"))
    return choices


@pytest.mark.parametrize(
    ("name", "layout"), [("resnet18", "plain"), ("mobilenet_v2", "blocked"), ("squeezenet1_1", "blocked")]
)
def test_live_values_never_share_memory_on_real_models(name, layout, exported, rng):
    proto = with_static_inputs(load_onnx(exported(name)), 1)
    graph, _ = api.graph_variants(import_model(proto), layout)  # with the pool and depthwise fusions
    executor = Executor(graph, per_node_choices(graph))
    steps, buffers = executor.steps, executor.buffers
    # Lifetimes recomputed here from the steps and the graph, independently of the executor's planner.
    views = {n.outputs[0]: n.inputs[0] for n in graph.nodes if n.op in RESHAPE_OPS}
    assert views and not any(s.node in {n.name for n in graph.nodes if n.op in RESHAPE_OPS} for s in steps)
    # SqueezeNet's Concats need no step: their inputs are written into slices of their outputs.
    concats = [n for n in graph.nodes if n.op == "Concat"]
    assert not any(s.node in {n.name for n in concats} for s in steps)
    slices = {i: n.outputs[0] for n in concats for i in n.inputs}

    def source(name):  # a view is its input's bytes; a Concat input is part of the output's
        return source(views[name]) if name in views else source(slices[name]) if name in slices else name

    produced = {n: -1 for n in graph.inputs} | {n: i for i, s in enumerate(steps) for n in s.output_names}
    for concat in concats:
        produced[concat.outputs[0]] = min(produced[i] for i in concat.inputs)
    last_read = {source(n): len(steps) for n in graph.outputs}
    for i, step in enumerate(steps):
        for n in step.input_names:
            last_read[source(n)] = max(last_read.get(source(n), i), i)
    in_place = {(s.input_names[0], s.output_names[0]) for s in steps if np.shares_memory(s.inputs[0], s.outputs[0])}
    shared = in_place | set(slices.items())
    for view, name in views.items():
        assert np.shares_memory(buffers[view], buffers[source(name)])
    for i in range(len(steps)):
        live = [n for n in produced if produced[n] <= i <= last_read.get(source(n), produced[n])]
        for a in live:
            for b in live:
                if a < b and (a, b) not in shared and (b, a) not in shared:
                    assert not np.shares_memory(buffers[a], buffers[b]), (i, a, b)
    for a, b in in_place:  # only a value read for the last time by the step that overwrites it
        assert last_read[source(a)] == produced[b]
    assert executor.memory.arena_bytes < 0.5 * executor.memory.total_bytes, executor.memory.describe()
    # And the plan still computes the model.
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    expected = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )
    actual = executor.run({"input": x})["output"]
    assert np.abs(actual - expected[0]).max() / np.abs(expected[0]).max() <= 1e-4


def test_elementwise_steps_run_in_place(rng):
    """x * tanh(x) then Relu: Mul may overwrite its dying input, Relu its own."""
    from conftest import const, make_model, tensor
    from onnx import helper

    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Tanh", ["c"], ["s"]),  # not an activation an epilogue takes
        helper.make_node("Mul", ["c", "s"], ["m"]),
        helper.make_node("Relu", ["m"], ["y"]),
    ]
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)  # 5 * 7 * 9 values: no vector width divides it
    model = make_model(nodes, [tensor("x", [1, 4, 7, 9])], [tensor("y", [1, 5, 7, 9])], [const("w", w)])
    graph = optimize_graph(import_model(model))
    executor = Executor(graph, per_node_choices(graph, {"vec": 16, "chunk": 64}))
    shared = [s.node for s in executor.steps if np.shares_memory(s.inputs[0], s.outputs[0])]
    assert len(shared) == 2, [(s.node, s.input_names, s.output_names) for s in executor.steps]
    x = rng.standard_normal((1, 4, 7, 9)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(executor.run({"x": x})["y"], expected[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("batch", "shared_input"), [(2, False), (1, True)])
def test_concat_inputs_written_in_place(batch, shared_input, rng):
    """Two convolutions write straight into their Concat's output (strided slices at batch 2);
    when another node also reads an input, the Concat stays a copy."""
    from conftest import const, make_model, tensor
    from onnx import helper

    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wb"], ["b"]),
        helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
        helper.make_node("Conv", ["c", "wc"], ["y"]),
    ]
    outputs = [tensor("y", [batch, 16, 6, 6])]
    if shared_input:
        nodes.append(helper.make_node("Relu", ["a"], ["z"]))
        outputs.append(tensor("z", [batch, 16, 6, 6]))
    weights = {"wa": (16, 8, 3, 3), "wb": (32, 8, 1, 1), "wc": (16, 48, 1, 1)}
    constants = [const(k, rng.standard_normal(s).astype(np.float32)) for k, s in weights.items()]
    model = make_model(nodes, [tensor("x", [batch, 8, 6, 6])], outputs, constants)
    graph = api.with_layout(optimize_graph(import_model(model)), "blocked")
    executor = Executor(graph, per_node_choices(graph))
    concat_steps = [s for s in executor.steps if s.output_names == ["c"]]
    assert len(concat_steps) == int(shared_input)
    for name in "ab":  # all inputs in place, or none
        assert np.shares_memory(executor.buffers[name], executor.buffers["c"]) != shared_input
    x = rng.standard_normal((batch, 8, 6, 6)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for _ in range(2):  # a second run over the same buffers
        actual = executor.run({"x": x})
        for name, expected in zip([o.name for o in outputs], session.run(None, {"x": x})):
            np.testing.assert_allclose(actual[name], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("nbytes", [100, HUGE_PAGE + 4096 + 8])
def test_aligned_buffers_start_on_a_cache_line_and_hold_exactly_their_bytes(nbytes):
    buffer = aligned_empty(nbytes)
    assert buffer.nbytes == nbytes and buffer.ctypes.data % ALIGNMENT == 0
    if nbytes >= HUGE_PAGE:  # whole huge pages from its start
        assert buffer.ctypes.data % HUGE_PAGE == 0
    buffer[:] = 7  # writable to its last byte
    assert int(buffer.sum()) == 7 * nbytes
