"""End to end on torchvision models exported in the test run: optimize, verify, save, load, run."""

import json
import subprocess
import sys
from functools import partial

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import woodpecker
from woodpecker.errors import InputError, PlanError
from woodpecker.graph.onnx_import import load_onnx, with_static_inputs
from woodpecker.kernels.registry import record_name
from woodpecker.plan.plan import Plan
from woodpecker.records.database import Records


def ort_outputs(model_path, batch, x):
    proto = with_static_inputs(load_onnx(model_path), batch)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize(("name", "batch"), [("resnet18", 1), ("squeezenet1_1", 2)])
def test_plan_matches_onnxruntime(name, batch, exported, records_path, tmp_path, rng):
    model = exported(name)
    plan = woodpecker.optimize(model, budget=1, batch=batch, records=records_path, progress=False)
    summary = plan.meta["summary"]
    # The default: the fastest verified candidate, or one within the tie with a lower peak (every
    # candidate has a peak: its kernels were compiled ahead of time).
    timed = {n: c for n, c in plan.meta["plan_candidates"].items() if c["median_ms"] is not None and not c["error"]}
    assert None not in [c["peak_mib"] for c in timed.values()]
    fastest = min(c["median_ms"] for c in timed.values())
    assert timed[plan.meta["selected"]]["median_ms"] <= fastest * (1 + plan.meta["tie"])
    assert summary["nodes"] < summary["nodes_before"] and summary["fused"] > 0
    assert summary["fallback"] == 0 and summary["generated"] + summary["library"] == summary["nodes"]
    plan.save(tmp_path / "plan")
    loaded = woodpecker.load(tmp_path / "plan")
    # Weights are read from the plan's file when asked for (not held by the loaded plan), unchanged.
    assert sorted(loaded.graph.constants) == sorted(plan.graph.constants)
    for name in list(plan.graph.constants)[:20]:
        np.testing.assert_array_equal(loaded.graph.constants[name], plan.graph.constants[name])
    x1, x2 = (rng.standard_normal((batch, 3, 224, 224)).astype(np.float32) for _ in range(2))
    y1, y2 = loaded.run({"input": x1})["output"], loaded.run({"input": x2})["output"]
    r1, r2 = ort_outputs(model, batch, x1), ort_outputs(model, batch, x2)
    assert rel(y1, r1) <= 1e-4 and rel(y2, r2) <= 1e-4
    # Random-weight models barely react to their input: the difference must match too.
    assert rel(y1 - y2, r1 - r2) <= 1e-3
    # Records make a second exploration (the optimizer's, without the candidate plans) measure nothing new.
    measured = Records(records_path).count()
    woodpecker.tune(model, budget=1, batch=batch, records=records_path, progress=False)
    assert Records(records_path).count() == measured


@pytest.fixture(scope="module")
def small_plan(tmp_path_factory):
    from conftest import const, make_model, tensor
    from onnx import helper

    rng = np.random.default_rng()
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        [tensor("x", [1, 3, 12, 12])],
        [tensor("y", [1, 8, 12, 12])],
        [const("w", w)],
    )
    directory = tmp_path_factory.mktemp("small")
    path = directory / "model.onnx"
    path.write_bytes(model.SerializeToString())
    plan = woodpecker.optimize(path, budget=2, records=directory / "r.sqlite", progress=False)
    plan.save(directory / "plan")
    return directory


def test_wrong_input_shape_dtype_and_name(small_plan):
    plan = woodpecker.load(small_plan / "plan")
    with pytest.raises(InputError, match=r"shape \(1, 3, 10, 10\)"):
        plan.run({"x": np.ones((1, 3, 10, 10), np.float32)})
    with pytest.raises(InputError, match="dtype float64"):
        plan.run({"x": np.ones((1, 3, 12, 12))})
    with pytest.raises(InputError, match="missing"):
        plan.run({"z": np.ones((1, 3, 12, 12), np.float32)})
    with pytest.raises(InputError, match="dict of name -> array"):
        plan.run(np.ones((1, 3, 12, 12), np.float32))


def test_tampered_plan_is_refused(small_plan, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small_plan / "plan", copy)
    data = json.loads((copy / "plan.json").read_text())
    data["choices"][0]["impl"] = "onnxruntime"
    (copy / "plan.json").write_text(json.dumps(data))
    with pytest.raises(PlanError, match="plan.json: checksum does not match"):
        Plan.load(copy)
    (copy / "manifest.json").write_text(json.dumps({"checksum": "blake3", "files": ["plan.json"]}))
    with pytest.raises(PlanError, match="manifest.json: malformed"):
        Plan.load(copy)
    (copy / "manifest.json").write_text(json.dumps({"plan.json": "0" * 64}))  # as written before format 5
    with pytest.raises(PlanError, match="another version of Woodpecker.*optimize the model again"):
        Plan.load(copy)
    with pytest.raises(PlanError, match="not a Woodpecker plan"):
        Plan.load(tmp_path)


def test_plan_files_hold_no_pickle(small_plan):
    from safetensors import safe_open

    with safe_open(str(small_plan / "plan" / "constants.safetensors"), framework="numpy") as weights:
        names = weights.keys()  # the handle itself is not iterable
        assert names and all(weights.get_tensor(k).dtype != object for k in names)
    suffixes = {p.suffix for p in (small_plan / "plan").rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".safetensors", ".onnx", ".so", ".npz"}, suffixes  # kernels.npz: allow_pickle=False


@pytest.mark.parametrize(
    ("library", "candidate"),
    [("openvino", "all-openvino"), ("onnxruntime", "all-onnxruntime"), ("onnxruntime", "all-onnxruntime-unpacked")],
)
def test_library_segments_load_from_files_that_refer_to_the_weights(library, candidate, small_plan, tmp_path, rng):
    """A saved plan's library segments are ONNX files whose weights stay in constants.safetensors
    (external data), so loading one copies no weights through Python; the loaded plan still
    computes what the plan in memory does and what ONNX Runtime does on the source model."""
    from woodpecker.explore.select import candidate_choices

    pytest.importorskip(library)
    plan = woodpecker.load(small_plan / "plan")
    on_library = Plan(plan.graph, candidate_choices(plan.choices, (library,))[candidate], plan.meta)
    on_library.save(tmp_path / "plan")
    models = json.loads((tmp_path / "plan" / "plan.json").read_text())["library_models"]
    assert list(models.values()) == ["library0.onnx"]
    model = onnx.load(tmp_path / "plan" / "library0.onnx", load_external_data=False)
    weights = [t for t in model.graph.initializer if t.name in plan.graph.constants]
    assert weights and all(t.data_location == onnx.TensorProto.EXTERNAL and not t.raw_data for t in weights)
    loaded = woodpecker.load(tmp_path / "plan")
    x = rng.standard_normal((1, 3, 12, 12)).astype(np.float32)
    y = loaded.run({"x": x})["y"]
    reference = ort.InferenceSession(str(small_plan / "model.onnx"), providers=["CPUExecutionProvider"])
    assert rel(y, reference.run(None, {"x": x})[0]) <= 1e-5
    np.testing.assert_allclose(y, on_library.run({"x": x})["y"], rtol=1e-5, atol=1e-6)
    if library == "onnxruntime":  # the unpacked candidate's sessions keep the weights as stored
        (session,) = [s.kernel.session for s in loaded.executor().steps]
        options = session.get_session_options()
        try:
            unpacked = options.get_session_config_entry("session.disable_prepacking") == "1"
        except RuntimeError:  # not set
            unpacked = False
        assert unpacked == candidate.endswith("unpacked")
    # Its segment is built from its file: loading and running it in a fresh process imports no ONNX,
    # no Halide and nothing of the optimizer.
    script = (
        "import sys, numpy as np, woodpecker\n"
        "woodpecker.load(sys.argv[1]).run({'x': np.load(sys.argv[2])})\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'halide', 'torch')"
        " or m.startswith(tuple('woodpecker.' + p for p in sys.argv[3].split(',')))))"
    )
    np.save(tmp_path / "x.npy", x)
    optimizer = "explore,search,compile,records,measure.runner,graph.passes,graph.onnx_import,kernels.halide"
    command = [sys.executable, "-c", script, tmp_path / "plan", tmp_path / "x.npy", optimizer]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.stdout.split() == ["[]"], result.stdout + result.stderr


def wpk(*args):
    return subprocess.run([sys.executable, "-m", "woodpecker.cli", *map(str, args)], capture_output=True, text=True)


def test_cli_run_inspect_and_bench(small_plan, tmp_path):
    x = np.random.default_rng().standard_normal((1, 3, 12, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = wpk("run", small_plan / "plan", "--input", f"x={tmp_path / 'x.npy'}", "-o", tmp_path / "out.npz")
    assert result.returncode == 0, result.stderr
    y = np.load(tmp_path / "out.npz")["y"]
    np.testing.assert_allclose(y, woodpecker.load(small_plan / "plan").run({"x": x})["y"], rtol=1e-6)
    inspect = wpk("inspect", small_plan / "model.onnx", "--json")
    report = json.loads(inspect.stdout)
    assert report["nodes"][0]["fused"] == ["Relu"] and report["fallback"] == []
    bench = wpk("bench", small_plan / "plan", "--vs", "onnxruntime", "--runs", "5", "--rounds", "2", "--json")
    figures = json.loads(bench.stdout)
    assert {r["runtime"] for r in figures["results"]} == {"woodpecker", "onnxruntime"}
    assert all(r["median_ms"] > 0 and len(r["round_medians_ms"]) == 2 for r in figures["results"])
    assert figures["speedup_vs_best_fp32_peer"] > 0


def test_cli_profile_puts_each_step_beside_its_kernels_timed_alone(small_plan):
    result = wpk("profile", small_plan / "plan", "--runs", "3", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["total_ms"] == pytest.approx(sum(s["ms"] for s in report["steps"]))
    plan = json.loads((small_plan / "plan" / "plan.json").read_text())
    conv = next(c for c in plan["choices"] if c["workload"].startswith("Conv-"))  # + Relu, fused
    step = next(s for s in report["steps"] if conv["node"] in [m["node"] for m in s["members"]])
    assert step["ms"] > 0 and step["gflops"] > 0  # on its own kernel, or inside a library segment
    assert step["again_ms"] > 0  # it reads x and writes y: safe to call again
    alone = next(m["alone_ms"] for m in step["members"] if m["node"] == conv["node"])
    ort_alone = min(c["median_s"] for c in conv["candidates"] if c["impl"] == "onnxruntime") * 1e3
    assert alone["onnxruntime"] == pytest.approx(ort_alone) and alone["own"] > 0
    table = wpk("profile", small_plan / "plan", "--runs", "2")
    assert table.returncode == 0 and conv["node"] in table.stdout and "alone:" in table.stdout
    assert "again" in table.stdout.splitlines()[1]
    # --top 1 keeps the slowest step only (which one depends on timings of a few microseconds).
    top = wpk("profile", small_plan / "plan", "--runs", "2", "--top", "1").stdout.splitlines()
    rows = top[3 : next(i for i, line in enumerate(top) if line.startswith("again:"))]
    assert len([row for row in rows if not row.startswith(" ")]) == 1, top


def test_profile_calls_no_in_place_step_again():
    """A step whose output overwrites its input would compute on its own result if repeated."""
    from woodpecker.runtime.executor import Step, _writes_over_input

    arena = np.zeros(64, np.float32)
    step = partial(Step, "n", "halide.elementwise", print, input_names=["a"], output_names=["b"])
    assert _writes_over_input(step(inputs=[arena[:32]], outputs=[arena[:32]]))
    assert not _writes_over_input(step(inputs=[arena[:32]], outputs=[arena[32:]]))


@pytest.mark.parametrize("content", [None, b"", b"\x08\x07garbage-not-onnx"])
def test_cli_bad_model_is_one_line_and_writes_nothing(content, tmp_path):
    model = tmp_path / "bad.onnx"
    if content is not None:
        model.write_bytes(content)
    result = wpk("optimize", model, "-o", tmp_path / "plan", "--records", tmp_path / "r.sqlite")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wpk: error:") and "Traceback" not in result.stderr
    assert not (tmp_path / "plan").exists()


def test_cli_run_wrong_shape_is_one_line(small_plan, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 3, 5, 5), np.float32))
    result = wpk("run", small_plan / "plan", "--input", tmp_path / "x.npy", "-o", tmp_path / "out.npz")
    assert result.returncode == 1 and "shape (1, 3, 5, 5)" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.npz").exists()


@pytest.mark.parametrize("strategy", ["ga", "rl", "random"])
def test_search_strategies_drive_real_measurements(strategy, small_plan, tmp_path):
    plan = woodpecker.optimize(
        small_plan / "model.onnx", budget=6, strategy=strategy, records=tmp_path / "r.sqlite", progress=False
    )
    conv = plan.choices[0]
    generated = [c for c in conv.candidates if c["impl"] == "halide.conv2d_blocked"]  # 8 channels: NCHW8c
    assert len(generated) == 6 and len({json.dumps(c["config"], sort_keys=True) for c in generated}) == 6
    assert all(c["error"] is None for c in generated)


def test_cli_tune_fills_the_records_then_export(small_plan, tmp_path):
    records = tmp_path / "r.sqlite"
    result = wpk("tune", small_plan / "model.onnx", "--budget", "2", "--records", records, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["workloads"] == 2 and report["measured_candidates"] >= 3  # the conv and the conversion back
    assert Records(records).count() == report["measured_candidates"]
    exported = wpk("records", "export", "--records", records)
    lines = exported.stdout.splitlines()
    assert len(lines) == report["measured_candidates"] and all(json.loads(line)["workload"] for line in lines)
    assert not (tmp_path / "plan").exists()


def conv_model_file(directory, size: int):
    from conftest import const, make_model, tensor
    from onnx import helper

    w = np.random.default_rng(size).standard_normal((16, 8, 3, 3)).astype(np.float32)
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        [tensor("x", [1, 8, size, size])],
        [tensor("y", [1, 16, size, size])],
        [const("w", w)],
    )
    path = directory / f"conv{size}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_a_new_workload_starts_from_the_best_config_of_a_similar_one(tmp_path):
    records = tmp_path / "r.sqlite"
    tuned = woodpecker.tune(conv_model_file(tmp_path, 20), budget=6, strategy="ga", records=records, progress=False)
    assert tuned["workloads"] == 2  # the conv (blocked output) and the conversion back to NCHW
    best = min(
        (
            json.loads(line)
            for line in Records(records).export_lines()
            if json.loads(line)["impl"] == record_name("halide.conv2d_blocked")
            and json.loads(line)["result"]["error"] is None
        ),
        key=lambda item: sorted(item["result"]["times_s"])[len(item["result"]["times_s"]) // 2],
    )
    plan = woodpecker.optimize(conv_model_file(tmp_path, 22), budget=1, records=records, progress=False)
    first = next(c for c in plan.choices[0].candidates if c["impl"] == "halide.conv2d_blocked")
    assert first["config"] == best["result"]["config"]


@pytest.fixture(scope="module")
def generated_plan(tmp_path_factory):
    """A verified plan with every node that has a generated kernel on one (conv, pool, dense)."""
    from conftest import const, make_model, tensor
    from onnx import helper

    from woodpecker.explore.verify import verify
    from woodpecker.graph.onnx_import import import_model
    from woodpecker.graph.passes import optimize_graph
    from woodpecker.kernels import registry
    from woodpecker.kernels.workload import Workload
    from woodpecker.plan.choice import Choice

    rng = np.random.default_rng()
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    inits = [
        const("w", rng.standard_normal((16, 3, 3, 3)).astype(np.float32)),
        const("b", rng.standard_normal(16).astype(np.float32)),
        const("fc", rng.standard_normal((10, 16 * 6 * 6)).astype(np.float32)),
    ]
    model = make_model(nodes, [tensor("x", [1, 3, 12, 12])], [tensor("y", [1, 10])], inits)
    graph = optimize_graph(import_model(model))
    choices = []
    for node in graph.nodes:
        workload = Workload.of(graph, node)
        impl = next(
            (i for i in registry.candidates(workload, ()) if i.capabilities.compiled), registry.get("onnxruntime")
        )
        config = impl.space(workload).sample(1, seed=int(rng.integers(1000)))
        choices.append(Choice(node.name, impl.name, config[0] if config else {}, registry.status(impl.name)))
    plan = Plan(graph, choices)
    assert verify(plan, model, None).ok
    directory = tmp_path_factory.mktemp("generated")
    (directory / "model.onnx").write_bytes(model.SerializeToString())
    plan.save(directory / "plan")
    return directory


def test_saved_plan_runs_compiled_kernels_in_a_fresh_process(generated_plan):
    plan_dir = generated_plan / "plan"
    kernels = json.loads((plan_dir / "plan.json").read_text())["kernels"]
    assert len(kernels) == 3, kernels  # pool, conv (+ relu), dense, compiled ahead of time
    x = np.random.default_rng().standard_normal((1, 3, 12, 12)).astype(np.float32)
    np.save(generated_plan / "x.npy", x)
    script = (
        "import sys, time, numpy as np, woodpecker\n"
        "from woodpecker.runtime.kernel_library import AotKernel\n"
        "start = time.perf_counter()\n"
        f"plan = woodpecker.load({str(plan_dir)!r})\n"
        f"y = plan.run({{'x': np.load({str(generated_plan / 'x.npy')!r})}})['y']\n"
        "print(time.perf_counter() - start)\n"
        "print(sum(isinstance(s.kernel, AotKernel) for s in plan.executor().steps))\n"
        "print(','.join(type(call).__name__ for call in plan.executor().calls))\n"
        "print(','.join(m for m in ('onnx', 'torch', 'openvino', 'sklearn', 'tqdm') if m in sys.modules) or '-')\n"
        f"np.save({str(generated_plan / 'y.npy')!r}, y)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    seconds, compiled_steps, calls, modules = result.stdout.split()
    assert int(compiled_steps) == len(kernels)
    assert modules == "-", f"running a saved plan imported {modules}"  # loading pays only for what it runs
    # Pool and conv in one native call, the Flatten (on ONNX Runtime in this plan), the dense layer.
    assert calls == "NativeRun,partial,NativeRun"
    reference = ort.InferenceSession(str(generated_plan / "model.onnx"), providers=["CPUExecutionProvider"])
    assert rel(np.load(generated_plan / "y.npy"), reference.run(None, {"x": x})[0]) <= 1e-4
    print(f"load + first run in a fresh process: {float(seconds):.3f} s")


def test_plan_compiled_for_another_cpu_is_refused(generated_plan, tmp_path):
    import shutil

    from woodpecker.plan.manifest import digest as _digest

    copy = tmp_path / "copy"
    shutil.copytree(generated_plan / "plan", copy)
    index = copy / "kernels" / "kernels.json"
    data = json.loads(index.read_text())
    data["target"] += "-avx10_1-sve2"  # as if built on a CPU with more features than this one
    index.write_text(json.dumps(data))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["kernels/kernels.json"] = _digest(index)  # a valid checksum: only the target is wrong
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PlanError, match="this CPU lacks avx10_1, sve2"):
        Plan.load(copy)


def test_without_a_c_compiler_the_plan_is_saved_for_jit(generated_plan, tmp_path, monkeypatch):
    plan = woodpecker.load(generated_plan / "plan")
    monkeypatch.setenv("CC", "no-such-compiler-wpk")
    with pytest.warns(UserWarning, match="no C compiler"):
        plan.save(tmp_path / "jit")
    assert json.loads((tmp_path / "jit" / "plan.json").read_text())["kernels"] == {}
    x = {"x": np.random.default_rng().standard_normal((1, 3, 12, 12)).astype(np.float32)}
    np.testing.assert_allclose(woodpecker.load(tmp_path / "jit").run(x)["y"], plan.run(x)["y"], rtol=1e-5)


def test_a_node_may_read_one_value_twice(tmp_path, rng):
    """Add(x, x), and a convolution whose fused residual is its own input: every kernel, the
    one-node ONNX Runtime reference included, sees the value once per use."""
    from conftest import const, make_model, tensor
    from onnx import helper

    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"]),
        helper.make_node("Add", ["c", "x"], ["r"]),
        helper.make_node("Relu", ["r"], ["h"]),
        helper.make_node("Add", ["h", "h"], ["y"]),
    ]
    weights = [const("w", rng.standard_normal((16, 16, 1, 1)).astype(np.float32)), const("b", np.ones(16, np.float32))]
    model = make_model(nodes, [tensor("x", [1, 16, 5, 6])], [tensor("y", [1, 16, 5, 6])], weights)
    path = tmp_path / "twice.onnx"
    path.write_bytes(model.SerializeToString())
    plan = woodpecker.optimize(path, budget=2, records=tmp_path / "r.sqlite", progress=False, layout="plain")
    conv = next(n for n in plan.graph.nodes if n.op == "Conv")
    assert conv.inputs[0] == conv.inputs[3]  # the residual was fused into the convolution
    assert plan.meta["summary"]["fallback"] == 0
    x = rng.standard_normal((1, 16, 5, 6)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(plan.run({"x": x})["y"], expected[0], rtol=1e-4, atol=1e-4)


def test_a_model_whose_output_ignores_its_input_is_flagged(rng):
    """A zero weight makes every output the bias: the check then compares constants and says so."""
    from conftest import const, make_model, tensor
    from onnx import helper

    from woodpecker.explore.verify import verify
    from woodpecker.plan.choice import Choice

    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)]
    inits = [const("w", np.zeros((4, 6), np.float32)), const("b", rng.standard_normal(4).astype(np.float32))]
    model = make_model(nodes, [tensor("x", [2, 6])], [tensor("y", [2, 4])], inits)
    graph = woodpecker.graph.onnx_import.import_model(model)
    plan = Plan(graph, [Choice(graph.nodes[0].name, "numpy", {}, "library")])
    check = verify(plan, model, None)
    assert check.ok and not check.input_sensitive
    inits[0] = const("w", rng.standard_normal((4, 6)).astype(np.float32))
    model = make_model(nodes, [tensor("x", [2, 6])], [tensor("y", [2, 4])], inits)
    assert verify(Plan(woodpecker.graph.onnx_import.import_model(model), plan.choices), model, None).input_sensitive
