"""The native runtime: compiled kernels called from C in one go, their loops on the spinning pool,
and the object cache that lets candidate plans and the saved plan compile each kernel once."""

import os
from functools import partial

import numpy as np
import pytest
from test_segments import branchy_graph

from woodpecker.compile import pool as compile_pool
from woodpecker.compile.objects import compile_plan_kernels, kernel_key, prune
from woodpecker.errors import PlanError
from woodpecker.kernels.workload import Workload
from woodpecker.plan.choice import Choice
from woodpecker.runtime.executor import Executor, NativeRun
from woodpecker.runtime.kernel_library import KernelLibrary, pool_threads

ELEMENTWISE = {"vec": 4, "chunk": 1024}


def compiled_executor(graph, impls, directory):
    choices = [
        Choice(n.name, impl, ELEMENTWISE if impl.startswith("halide") else {}, "library")
        for n, impl in zip(graph.nodes, impls)
    ]
    kernels = compile_plan_kernels(graph, choices, directory)
    return Executor(graph, choices, library=KernelLibrary(directory), kernels=kernels), choices


def expected_output(x):
    a = 1 / (1 + np.exp(-x))
    return (a + np.tanh(a)) * x


def test_runs_of_compiled_kernels_are_one_native_call_each(rng, tmp_path):
    graph = branchy_graph(rng)
    impls = ["halide.elementwise", "halide.elementwise", "onnxruntime", "halide.elementwise"]
    executor, choices = compiled_executor(graph, impls, tmp_path / "kernels")
    kinds = [type(call) for call in executor.calls]
    assert kinds == [NativeRun, partial, NativeRun]
    first, last = executor.calls[0], executor.calls[2]
    assert first.nodes == ["n0", "n1"] and last.nodes == ["n3"]
    # Before ONNX Runtime's threads take the cores the pool's workers stop spinning; at the end they may spin.
    assert first.pool_sleep and not last.pool_sleep
    jit = Executor(graph, choices)
    for _ in range(20):  # fresh input each time: the pool's loops must cover every element every run
        x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
        y = executor.run({"x": x})["y"]
        np.testing.assert_allclose(y, expected_output(x), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(y, jit.run({"x": x})["y"], rtol=1e-6, atol=1e-7)


def test_a_kernel_failing_inside_a_native_run_names_its_node(rng, tmp_path):
    graph = branchy_graph(rng)
    executor, _ = compiled_executor(graph, ["halide.elementwise"] * 4, tmp_path / "kernels")
    (run,) = executor.calls
    run._bound[1].buffers[0].dim[0].extent = 3  # n1's input now looks too small: Halide's bounds check fails
    # Halide's message reaches the caller, and the process lives on (Halide's own handler aborts it).
    with pytest.raises(PlanError, match=r"^n1: Halide kernel returned error code -\d+: Input buffer .* beyond the max"):
        executor.run({"x": rng.standard_normal((2, 3, 5, 5)).astype(np.float32)})


def test_closing_a_library_stops_its_pool(rng, tmp_path):
    def threads():
        return len(os.listdir("/proc/self/task"))

    graph = branchy_graph(rng)
    before = threads()
    executor, _ = compiled_executor(graph, ["halide.elementwise"] * 4, tmp_path / "kernels")
    executor.run({"x": rng.standard_normal((2, 3, 5, 5)).astype(np.float32)})
    assert threads() == before + pool_threads() - 1
    executor.library.close()
    assert threads() == before


def test_object_cache_compiles_each_kernel_once(rng, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    compiled = []
    real = compile_pool.compile_objects
    monkeypatch.setattr(
        compile_pool, "compile_objects", lambda jobs, progress=False: compiled.append(len(jobs)) or real(jobs)
    )
    graph = branchy_graph(rng)
    impls = ["halide.elementwise"] * 4
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    for directory in ("a", "b"):
        executor, _ = compiled_executor(graph, impls, tmp_path / directory)
        np.testing.assert_allclose(executor.run({"x": x})["y"], expected_output(x), rtol=1e-5, atol=1e-6)
    assert compiled == [4, 0]  # the second library linked the cached objects


def test_kernel_key_follows_what_decides_the_code(rng):
    from conftest import const, make_model, tensor
    from onnx import helper

    from woodpecker.graph.onnx_import import import_model

    def conv_workload(weights):
        node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
        model = make_model([node], [tensor("x", [1, 4, 8, 8])], [tensor("y", [1, 4, 8, 8])], [const("w", weights)])
        graph = import_model(model)
        return Workload.of(graph, graph.nodes[0])

    weights = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    config = {"vectorize": "w", "vec": 8, "parallel": "c"}
    key = kernel_key(conv_workload(weights), "halide.conv2d", config)
    assert kernel_key(conv_workload(weights.copy()), "halide.conv2d", config) == key
    assert kernel_key(conv_workload(weights + 1), "halide.conv2d", config) != key  # constants may be built in
    assert kernel_key(conv_workload(weights), "halide.conv2d", {**config, "vec": 4}) != key


def test_the_object_cache_keeps_the_most_recently_used(tmp_path):
    for age, name in enumerate(["new", "middle", "old"]):
        path = tmp_path / f"{name}.o"
        path.write_bytes(b"object")
        os.utime(path, (1e9 - age * 100, 1e9 - age * 100))
    prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["middle.o", "new.o"]


def test_a_library_reads_its_constants_into_aligned_memory(rng, tmp_path):
    """Kernel weights come back equal to what was compiled, each starting on a cache line."""
    from woodpecker.compile.toolchain import LibraryEntry, link_library

    shapes = [((3, 5), np.float32), ((7,), np.int32), ((), np.float64), ((0, 4), np.float32)]
    constants = [(rng.standard_normal(shape) * 100).astype(dtype) for shape, dtype in shapes]
    (tmp_path / "lib").mkdir()
    link_library(tmp_path / "lib", [], {"k": LibraryEntry("none", constants, 0)}, with_runtime=True)
    library = KernelLibrary(tmp_path / "lib")
    for i, expected in enumerate(constants):
        actual = library._constants[f"k.{i}"]
        assert actual.dtype == expected.dtype and actual.ctypes.data % 64 == 0
        np.testing.assert_array_equal(actual, expected)
    library.close()


def test_unreadable_kernel_weights_are_named(rng, tmp_path):
    """A compressed or truncated kernels.npz is refused with the file's name, not read half."""
    from woodpecker.errors import WoodpeckerError
    from woodpecker.runtime.kernel_library import _read_constants

    weights = {"k.0": rng.standard_normal((64, 64)).astype(np.float32)}
    np.savez_compressed(tmp_path / "compressed.npz", **weights)
    with pytest.raises(WoodpeckerError, match="compressed"):
        _read_constants(tmp_path / "compressed.npz")
    np.savez(tmp_path / "plain.npz", **weights)
    data = (tmp_path / "plain.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(WoodpeckerError, match="truncated.npz"):
        _read_constants(tmp_path / "truncated.npz")
    np.testing.assert_array_equal(_read_constants(tmp_path / "plain.npz")["k.0"], weights["k.0"])


def test_kernel_weights_read_in_pieces(rng, tmp_path, monkeypatch):
    """Weights larger than a read piece are read by several threads into the right places."""
    from woodpecker.runtime import kernel_library as aot

    monkeypatch.setattr(aot, "_READ_PIECE", 1000)
    weights = {
        f"k.{i}": rng.standard_normal(shape).astype(dtype)
        for i, (shape, dtype) in enumerate(
            [((37, 53), np.float32), ((3,), np.int64), ((0,), np.float32), ((1001,), np.float64)]
        )
    }
    np.savez(tmp_path / "plain.npz", **weights)
    read = aot._read_constants(tmp_path / "plain.npz")
    assert read.keys() == weights.keys()
    for name, expected in weights.items():
        assert read[name].dtype == expected.dtype and read[name].ctypes.data % 64 == 0
        np.testing.assert_array_equal(read[name], expected)
