"""Consecutive library nodes become one sub-graph call with the right boundary values."""

from dataclasses import replace

import numpy as np
import pytest
from conftest import const, make_model, tensor
from onnx import helper

from woodpecker.explore.select import PlanCandidate, candidate_choices, pick, select_plan
from woodpecker.graph.onnx_import import import_model
from woodpecker.plan.choice import Choice
from woodpecker.plan.segments import segments
from woodpecker.runtime.executor import Executor


def branchy_graph(rng):
    """x -> a=Sigmoid(x) -> b=Tanh(a) -> c=Add(a, b) -> y=Mul(c, x); every value used across nodes."""
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["a"], name="n0"),
        helper.make_node("Tanh", ["a"], ["b"], name="n1"),
        helper.make_node("Add", ["a", "b"], ["c"], name="n2"),
        helper.make_node("Mul", ["c", "x"], ["y"], name="n3"),
    ]
    shape = [2, 3, 5, 5]
    model = make_model(nodes, [tensor("x", shape)], [tensor("y", shape)], [const("unused", np.zeros(1, np.float32))])
    return import_model(model)


def choose(graph, impls):
    return [Choice(n.name, impl, {}, "library") for n, impl in zip(graph.nodes, impls)]


def test_runs_of_one_library_merge_and_expose_values_used_later(rng):
    graph = branchy_graph(rng)
    groups = segments(graph, choose(graph, ["onnxruntime", "onnxruntime", "halide.elementwise", "onnxruntime"]))
    assert [(g.impl, [n.name for n in g.nodes]) for g in groups] == [
        ("onnxruntime", ["n0", "n1"]),
        ("halide.elementwise", ["n2"]),
        ("onnxruntime", ["n3"]),
    ]
    first = groups[0].subgraph(graph)
    assert first.inputs == ["x"] and first.outputs == ["a", "b"]  # both read by n2


def test_mixed_plan_computes_what_onnxruntime_computes(rng):
    graph = branchy_graph(rng)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    a = 1 / (1 + np.exp(-x))
    expected = (a + np.tanh(a)) * x
    halide_config = {"vec": 4, "chunk": 1024}
    for impls in (
        ["onnxruntime"] * 4,
        ["onnxruntime", "onnxruntime", "halide.elementwise", "onnxruntime"],
        ["halide.elementwise", "onnxruntime", "onnxruntime", "halide.elementwise"],
    ):
        choices = [
            Choice(n.name, impl, halide_config if impl.startswith("halide") else {}, "library")
            for n, impl in zip(graph.nodes, impls)
        ]
        y = Executor(graph, choices).run({"x": x})["y"]
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_candidate_plans_are_timed_apart_and_a_broken_one_is_reported(rng):
    """Each whole-plan candidate is built and timed in its own process; one that cannot be built
    is reported with its reason and the others still compete."""
    graph = branchy_graph(rng)
    best, timed = select_plan(graph, choose(graph, ["no-such-kernel"] * 4), ("onnxruntime",), threads=1)
    by_name = {c.name: c for c in timed}
    assert set(by_name) == {"per-node", "all-onnxruntime", "all-onnxruntime-unpacked"}
    assert by_name["per-node"].median_s is None and "no-such-kernel" in by_name["per-node"].error
    assert best.name.startswith("all-onnxruntime") and best.median_s > 0
    assert best.resident_mib is not None and best.resident_mib >= 0  # what its process added by building and running it
    assert best.peak_mib is not None and best.peak_mib >= best.resident_mib - 1  # no JIT build: the peak is loading's
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    a = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(best.executor.run({"x": x})["y"], (a + np.tanh(a)) * x, rtol=1e-5, atol=1e-6)


def test_plans_within_three_percent_of_the_fastest_are_a_tie_that_the_lower_peak_wins():
    def plan(name, ms, peak, resident=None):
        return PlanCandidate(name, [], median_s=ms / 1e3, resident_mib=resident, peak_mib=peak)

    fastest, close_and_small, slow_and_smaller = plan("a", 10.0, 900), plan("b", 10.15, 500), plan("c", 10.5, 100)
    assert pick([fastest, close_and_small, slow_and_smaller]).name == "b"
    assert pick([fastest, slow_and_smaller]).name == "a"  # 5 % slower is not a tie
    assert pick([fastest, slow_and_smaller], tie=0.06).name == "c"  # unless the user trades that much
    assert pick([plan("a", 10.0, None), plan("b", 10.1, None)]).name == "a"  # no memory figures: the fastest
    # The same resident memory (re-packed copies replace the originals): the lower peak wins.
    assert pick([plan("packed", 10.0, 970, 580), plan("unpacked", 10.2, 670, 580)]).name == "unpacked"
    # A peak missing in the tie (a JIT-built candidate's would count its passing copies): the resident
    # memory decides for all, so no peak is compared with a figure of another kind.
    assert pick([plan("jit", 10.0, None, 400), plan("aot", 10.1, 300, 500)]).name == "jit"


def test_plans_that_peak_above_onnxruntime_are_left_out_unless_any_peak_is_allowed():
    def plan(name, ms, peak):
        return PlanCandidate(name, [], median_s=ms / 1e3, resident_mib=peak, peak_mib=peak)

    ort, openvino, own = plan("all-onnxruntime", 11.0, 94), plan("all-openvino", 10.0, 112), plan("own", 10.6, 39)
    assert pick([ort, openvino, own], memory="onnxruntime").name == "own"  # 6 % slower than all-OpenVINO
    assert pick([ort, openvino, own], memory="any").name == "all-openvino"
    assert pick([ort, openvino], memory="onnxruntime").name == "all-onnxruntime"  # which always qualifies
    # Without ONNX Runtime's figure (not among the libraries, or a JIT build's missing peak): no ceiling.
    assert pick([openvino, own], memory="onnxruntime").name == "all-openvino"
    jit = PlanCandidate("own", [], median_s=0.0106, resident_mib=39)
    assert pick([ort, openvino, jit], memory="onnxruntime").name == "all-openvino"
    with pytest.raises(ValueError, match="memory rule"):
        pick([ort, openvino], memory={})  # a rule must be named (select_plan once passed a dict here)


def measured(impl, seconds, error=None):
    config = {"vec": 4, "chunk": 1024} if impl.startswith("halide") else {}
    return {"impl": impl, "config": config, "median_s": seconds, "compile_s": 0.1, "error": error}


def test_generated_candidate_puts_every_node_with_a_correct_generated_kernel_on_it(rng):
    graph = branchy_graph(rng)

    choices = [
        Choice(
            "n0",
            "onnxruntime",
            {},
            "library",
            candidates=[measured("onnxruntime", 1e-5), measured("halide.elementwise", 2e-5)],
        ),
        Choice(
            "n1",
            "onnxruntime",
            {},
            "library",
            candidates=[measured("onnxruntime", 1e-5), measured("halide.elementwise", None, "wrong result")],
        ),
        Choice(
            "n2",
            "halide.elementwise",
            {"vec": 4, "chunk": 1024},
            "generated",
            candidates=[measured("halide.elementwise", 1e-5)],
        ),
        Choice("n3", "onnxruntime", {}, "library", candidates=[measured("onnxruntime", 1e-5)]),
    ]
    generated = candidate_choices(choices, ("onnxruntime",))["generated"]
    assert [c.impl for c in generated] == ["halide.elementwise", "onnxruntime", "halide.elementwise", "onnxruntime"]
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    a = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(
        Executor(graph, generated).run({"x": x})["y"], (a + np.tanh(a)) * x, rtol=1e-5, atol=1e-6
    )


def test_library_plus_generated_moves_only_plain_nodes_whose_generated_kernel_was_faster(rng):
    graph = branchy_graph(rng)
    halide = {"vec": 4, "chunk": 1024}
    choices = [
        Choice("n0", "halide.elementwise", halide, "generated", 0.5e-5,
               candidates=[measured("onnxruntime", 1e-5), measured("halide.elementwise", 0.5e-5)]),
        Choice("n1", "onnxruntime", {}, "library", 1e-5,
               candidates=[measured("onnxruntime", 1e-5), measured("halide.elementwise", None, "wrong result")]),
        Choice("n2", "onnxruntime", {}, "library", 1e-5,
               candidates=[measured("onnxruntime", 1e-5), measured("halide.elementwise", 2e-5)]),
        Choice("n3", "halide.elementwise", halide, "generated", 0.5e-5,
               candidates=[measured("onnxruntime", 1e-5), measured("halide.elementwise", 0.5e-5)]),
    ]  # fmt: skip
    hybrid = candidate_choices(choices, ("onnxruntime",), graph)["onnxruntime+generated"]
    assert [c.impl for c in hybrid] == ["halide.elementwise", "onnxruntime", "onnxruntime", "halide.elementwise"]
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    a = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(Executor(graph, hybrid).run({"x": x})["y"], (a + np.tanh(a)) * x, rtol=1e-5, atol=1e-6)
    # a node reading a blocked value stays on the library: its isolated time there includes the
    # library's own layout conversions
    blocked = graph.copy()
    blocked.values["y"] = replace(blocked.values["y"], block=16)
    hybrid = candidate_choices(choices, ("onnxruntime",), blocked)["onnxruntime+generated"]
    assert [c.impl for c in hybrid] == ["halide.elementwise", "onnxruntime", "onnxruntime", "onnxruntime"]
    assert "onnxruntime+generated" not in candidate_choices(choices, ("onnxruntime",))  # no graph, no hybrid


def test_onnxruntime_spins_only_when_no_other_pool_runs_in_the_plan(rng):
    """A spinning pool beside another library's threads slows both; alone it is ONNX Runtime's faster default."""
    graph = branchy_graph(rng)

    def allows_spinning(options) -> bool:
        try:
            return options.get_session_config_entry("session.intra_op.allow_spinning") != "0"
        except RuntimeError:  # not set: ONNX Runtime's default, which spins
            return True

    def spinning(impls):
        executor = Executor(graph, choose(graph, impls))
        return [
            allows_spinning(s.kernel.session.get_session_options()) for s in executor.steps if s.impl == "onnxruntime"
        ]

    assert spinning(["onnxruntime"] * 4) == [True]
    assert spinning(["onnxruntime", "onnxruntime", "numpy", "onnxruntime"]) == [False, False]  # two sessions' pools
    assert spinning(["onnxruntime", "onnxruntime", "onnxruntime", "openvino"]) == [False]


def test_by_default_the_fastest_plan_wins_within_a_stated_memory_limit():
    """A 1.15x faster own plan is not given up for a few MiB above ONNX Runtime's peak (ResNet-50:
    197.7 against 189.4 MiB) unless the user asks; --max-memory passes over what does not fit."""

    def plan(name, ms, peak):
        return PlanCandidate(name, [], median_s=ms / 1e3, resident_mib=peak, peak_mib=peak)

    ort, own = plan("all-onnxruntime", 39.3, 189.4), plan("per-node", 34.1, 197.7)
    assert pick([ort, own]).name == "per-node"
    assert pick([ort, own], memory="onnxruntime").name == "all-onnxruntime"
    assert pick([ort, own], max_mib=190).name == "all-onnxruntime"
    assert pick([ort, own], max_mib=100).name == "per-node"  # none fits: the fastest, refused after selection


def test_finalists_are_timed_again_until_the_two_fastest_keep_their_order():
    from woodpecker.explore.select import _finalists, _leaders

    times = {"own": [10.0, 12.0], "library": [10.5], "slow": [13.0], "broken": [9.0]}
    errors = {"broken": "exit 1: crashed"}
    assert sorted(_finalists(times, errors)) == ["library", "own"]  # within 10 % of the fastest
    assert _leaders(times, errors) == ["own", "library"]
    times["library"].append(9.5)  # a later round changes the order
    assert _leaders(times, errors) == ["library", "own"]
