"""The registry's contract: every implementation declares what it can do, its starting points are
valid, `matches` answers on any workload, and nothing outside the registry checks names."""

import ast
from pathlib import Path

import pytest

import woodpecker
from woodpecker.api import graph_variants
from woodpecker.graph.onnx_import import import_model, load_onnx
from woodpecker.kernels import registry
from woodpecker.kernels.base import Capabilities
from woodpecker.kernels.workload import Workload

PACKAGE = Path(woodpecker.__file__).parent


@pytest.fixture(scope="module")
def workloads(exported):
    """Every node of two CNNs, in each graph variant the optimizer explores (plain, fused, blocked)."""
    found = []
    for name in ("squeezenet1_1", "mobilenet_v2"):
        graph = import_model(load_onnx(exported(name)), 1)
        fused, others = graph_variants(graph, "blocked")
        for variant in (graph, fused, *others.values()):
            found += [Workload.of(variant, node) for node in variant.nodes]
    return found


@pytest.mark.parametrize("name", list(registry.WHERE))
def test_each_implementation_declares_its_capabilities(name):
    impl = registry.get(name)
    caps = impl.capabilities
    assert impl.name == name and isinstance(caps, Capabilities) and impl.revision >= 1
    assert caps.compiled == (registry.WHERE[name].package == registry.HALIDE) == hasattr(impl, "define")
    assert caps.runs_subgraphs == hasattr(impl, "build_graph")
    assert not (caps.compiled and caps.owns_threads)  # compiled kernels run on the native pool
    for suffix, config in caps.plan_variants.items():
        assert caps.runs_subgraphs and suffix and isinstance(config, dict)


@pytest.mark.parametrize("name", list(registry.WHERE))
def test_matches_never_raises_and_starting_points_are_valid(name, workloads):
    impl = registry.get(name)
    matched = 0
    for workload in workloads:
        if not impl.matches(workload):
            continue
        matched += 1
        space = impl.space(workload)
        knobs = {k.name: k.choices for k in space.knobs}
        for config in space.defaults:  # the layer's constraint may still reject one: the search skips it
            assert set(config) == set(knobs), f"{name} on {workload.node.name}: {config} is not of {list(knobs)}"
            assert all(config[k] in choices for k, choices in knobs.items()), f"{name}: {config}"
        if impl.capabilities.compiled:
            assert space.valid_defaults() or next(space.all_configs(), None) is not None
        else:
            assert not space.knobs
    if name in ("onnxruntime", "numpy", "halide.conv2d_blocked", "halide.pool", "halide.elementwise"):
        assert matched, f"{name} matched none of {len(workloads)} workloads"


def test_libraries_and_packages_come_from_the_registry():
    from woodpecker.options import SearchOptions
    from woodpecker.records.fingerprint import fingerprint

    assert set(registry.LIBRARIES) == {n for n in registry.WHERE if not registry.capabilities(n).compiled}
    assert set(fingerprint()["versions"]) == set(registry.PACKAGES)
    assert SearchOptions().libraries == registry.LIBRARIES


def test_no_code_outside_the_registry_compares_implementation_names():
    """Capabilities are declared; `impl == "numpy"`-style checks would hide them."""
    names = set(registry.WHERE)
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("registry.py", "bench.py", "bench_worker.py"):  # the peers `wpk bench` times whole
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                literals = [s for s in sides if isinstance(s, ast.Constant) and s.value in names]
                literals += [
                    e
                    for s in sides
                    if isinstance(s, ast.Tuple | ast.List | ast.Set)
                    for e in s.elts
                    if isinstance(e, ast.Constant) and e.value in names
                ]
                if literals:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not found, f"implementation names compared in {found}"
