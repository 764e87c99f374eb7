"""Fuzzing the two things a user hands Woodpecker: models and plan directories.

Seeded mutations of a small model (byte flips outside the weights' bytes, truncation, changed
attributes, shapes, dtypes, ops, opsets, dangling names, dropped nodes) go through `wpk optimize`,
and of a saved plan (flipped bytes, truncated, missing, extra and linked files, edited JSON with
the manifest signed again) through `wpk run`. Every case must end in one of two ways: status 0
with a plan (or outputs), or status 1 with one line on standard error. Never a traceback (status
3), a crash, a hang, or a file changed outside the output path. WPK_FUZZ_SEED picks another seed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import const, make_model, tensor
from onnx import TensorProto, helper

from woodpecker.cli import main
from woodpecker.plan.manifest import MANIFEST, write_manifest
from woodpecker.plan.plan import Plan

SEED = int(os.environ.get("WPK_FUZZ_SEED", "0"))
MODEL_CASES, PLAN_CASES = 100, 50
CASE_TIMEOUT_S = 300  # a case still running after this long is a hang


class Hang(Exception):
    pass


def run_cli(argv: list[str]) -> tuple[int, str]:
    """`wpk argv` in this process: (status, standard error), including what libraries and worker
    processes wrote to file descriptor 2."""

    def hang(signum, frame):
        raise Hang(f"wpk {' '.join(argv)} did not finish in {CASE_TIMEOUT_S} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(CASE_TIMEOUT_S)
    err = io.StringIO()
    with tempfile.TemporaryFile() as native:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(native.fileno(), 2)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                status = main(argv)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
            os.dup2(saved, 2)
            os.close(saved)
        native.seek(0)
        written = native.read().decode(errors="replace")
    return status, written + err.getvalue()


def assert_clean(status: int, stderr: str, case: str) -> None:
    """Status 0, or status 1 with exactly one line that names the error."""
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("wpk: warning:")]
    assert status in (0, 1), f"{case}: status {status}: {stderr[-2000:]}"
    if status == 1:
        assert len(lines) == 1 and lines[0].startswith(("wpk: error:", "wpk ")), f"{case}: {stderr[-2000:]}"


def snapshot(directory: Path, leave_out: Path) -> dict[str, tuple[int, int]]:
    """Every path under `directory` but `leave_out`, with its size and modification time."""
    found = {}
    for path in sorted(directory.rglob("*")):
        if path == leave_out or leave_out in path.parents:
            continue
        info = path.lstat()
        found[str(path.relative_to(directory))] = (info.st_size, info.st_mtime_ns)
    return found


def base_model() -> onnx.ModelProto:
    rng = np.random.default_rng(SEED)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fw"], ["y"], transB=1, alpha=1.0),
    ]
    inits = [
        const("w", rng.standard_normal((8, 3, 3, 3)).astype(np.float32)),
        const("b", rng.standard_normal(8).astype(np.float32)),
        const("fw", rng.standard_normal((5, 128)).astype(np.float32)),
    ]
    return make_model(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 5])], inits)


def mutate_model(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    kind = rng.choice(["flip", "truncate", "attribute", "shape", "dtype", "dangling", "op", "opset", "drop"])
    if kind == "flip":  # in the structure, not the weights' bytes: other numbers there test nothing new
        weights = [t.raw_data for t in onnx.ModelProto.FromString(data).graph.initializer if t.raw_data]
        spans = [(start, start + len(raw)) for raw in weights if (start := data.find(raw)) >= 0]
        places = [i for i in range(len(data)) if not any(a <= i < b for a, b in spans)]
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            flipped[rng.choice(places)] = rng.randrange(256)
        return kind, bytes(flipped)
    if kind == "truncate":
        return kind, data[: rng.randrange(len(data))]
    model = onnx.ModelProto.FromString(data)
    graph = model.graph
    if kind == "attribute":
        attr = rng.choice([a for n in graph.node for a in n.attribute])
        if attr.ints:
            attr.ints[rng.randrange(len(attr.ints))] = rng.choice([-1, 0, 2, 3, 7, 100, 10**6])
        elif attr.type == onnx.AttributeProto.INT:
            attr.i = rng.choice([-1, 0, 2, 5, 10**6])
        else:
            attr.f = rng.choice([float("nan"), float("inf"), -1.0, 0.0])
    elif kind == "shape":
        dims = rng.choice([*graph.input, *graph.output]).type.tensor_type.shape.dim
        dim = dims[rng.randrange(len(dims))]
        if rng.random() < 0.3:
            dim.dim_param = "N"
        else:
            dim.dim_value = rng.choice([0, 1, 2, 3, 7, 64, 100_000])
    elif kind == "dtype":
        types = [TensorProto.INT64, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BOOL, TensorProto.INT8, 0]
        if rng.random() < 0.5:
            rng.choice(list(graph.input)).type.tensor_type.elem_type = rng.choice(types)
        else:
            rng.choice(list(graph.initializer)).data_type = rng.choice(types[:-1])
    elif kind == "dangling":
        node = rng.choice(list(graph.node))
        node.input[rng.randrange(len(node.input))] = f"missing_{rng.randrange(9)}"
    elif kind == "op":
        rng.choice(list(graph.node)).op_type = rng.choice(["Relu", "Sigmoid", "NoSuchOp", "Conv", "Add", "Loop", ""])
    elif kind == "opset":
        model.opset_import[0].version = rng.choice([1, 6, 7, 13, 22, 23, 99])
    elif rng.random() < 0.5:
        del graph.initializer[rng.randrange(len(graph.initializer))]
    else:
        del graph.node[rng.randrange(len(graph.node))]
    return kind, model.SerializeToString()


def test_mutated_models_end_in_a_plan_or_one_line(tmp_path):
    rng = random.Random(SEED)
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    (sandbox / "keep.txt").write_text("a user's file")
    base = base_model().SerializeToString()
    records = tmp_path / "records.sqlite"
    outcomes: Counter[tuple[str, str]] = Counter()
    for case in range(MODEL_CASES):
        kind, data = mutate_model(rng, base)
        (sandbox / "model.onnx").write_bytes(data)
        output = sandbox / f"plan{case}"
        before = snapshot(sandbox, output)
        argv = ["optimize", str(sandbox / "model.onnx"), "-o", str(output), "--budget", "1"]
        status, stderr = run_cli([*argv, "--records", str(records), "--libraries", "onnxruntime"])
        assert_clean(status, stderr, f"case {case} ({kind})")
        assert snapshot(sandbox, output) == before, f"case {case} ({kind}) touched files outside {output.name}"
        if status == 0:
            plan = Plan.load(output)
            assert plan.meta["verification"]["output_error"] <= 1e-4
            shutil.rmtree(output)
        else:
            assert not output.exists(), f"case {case} ({kind}) left {output.name} behind"
        outcomes[(kind, "plan" if status == 0 else "error")] += 1
    print(f"\nmodel fuzz (seed {SEED}): {dict(sorted(outcomes.items()))}")
    assert sum(outcomes.values()) == MODEL_CASES


@pytest.fixture(scope="module")
def saved_plan(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fuzzplan")
    (directory / "model.onnx").write_bytes(base_model().SerializeToString())
    argv = ["optimize", str(directory / "model.onnx"), "-o", str(directory / "plan"), "--budget", "1"]
    status, stderr = run_cli([*argv, "--records", str(directory / "records.sqlite")])
    assert status == 0, stderr
    # The selected plan may run on libraries alone: a second one runs every node it can on compiled kernels.
    from woodpecker.explore.select import on_generated

    selected = Plan.load(directory / "plan")
    Plan(selected.graph, [on_generated(c) for c in selected.choices], selected.meta).save(directory / "own")
    assert (directory / "own" / "kernels" / "kernels.so").is_file()
    x = np.random.default_rng(SEED).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.save(directory / "x.npy", x)
    return directory


def _files(plan: Path) -> list[Path]:
    return sorted(p for p in plan.rglob("*") if p.is_file())


def _edit_json(rng: random.Random, value):
    """`value` with one random entry removed or replaced somewhere inside it."""
    path = []
    node = value
    while isinstance(node, dict | list) and node and rng.random() < 0.8:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        path.append((node, key))
        node = node[key]
    if not path:
        return rng.choice([None, [], "x", 7])
    parent, key = path[-1]
    if rng.random() < 0.4:
        del parent[key]
    else:
        parent[key] = rng.choice([None, -1, 0, 10**9, "x", "../../etc/passwd", [], {}, [1, 2], 1.5, True])
    return value


def mutate_plan(rng: random.Random, plan: Path, outside: Path) -> str:
    files = _files(plan)
    directories = [plan, *(p for p in plan.rglob("*") if p.is_dir())]  # kernels/ when it has compiled kernels
    kind = rng.choice(["flip", "truncate", "delete", "extra", "link", "manifest", "plan.json", "kernels.json"])
    if kind == "flip":
        target = rng.choice(files)
        data = bytearray(target.read_bytes())
        if data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(data))
    elif kind == "truncate":
        target = rng.choice(files)
        target.write_bytes(target.read_bytes()[: rng.randrange(max(1, target.stat().st_size))])
    elif kind == "delete":
        target = rng.choice([*files, *directories[1:]])
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    elif kind == "extra":
        (rng.choice(directories) / rng.choice(["extra.txt", "evil.so", "kernels.so.bak"])).write_text("x")
    elif kind == "link":
        target = rng.choice([*files, *directories[1:]])
        copy = outside / f"linked-{rng.randrange(10**6)}"
        shutil.move(target, copy)
        target.symlink_to(copy, target_is_directory=copy.is_dir())
    elif kind == "manifest":
        manifest = json.loads((plan / MANIFEST).read_text())
        if rng.random() < 0.3:
            manifest["files"][rng.choice(["../../etc/passwd", "/etc/hostname", "kernels/../plan.json"])] = "0" * 64
        else:
            manifest = _edit_json(rng, manifest)
        (plan / MANIFEST).write_text(json.dumps(manifest))
    else:  # plan.json or kernels.json edited, then signed again: as if a person had written it
        target = plan / ("plan.json" if kind == "plan.json" else "kernels/kernels.json")
        if not target.exists():
            return kind
        target.write_text(json.dumps(_edit_json(rng, json.loads(target.read_text()))))
        (plan / MANIFEST).unlink()
        write_manifest(plan)
    return kind


def test_mutated_plans_run_or_fail_in_one_line(saved_plan, tmp_path):
    rng = random.Random(SEED + 1)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("a user's file")
    references = {}
    for name in ("plan", "own"):
        status, stderr = run_cli(
            ["run", str(saved_plan / name), "--input", str(saved_plan / "x.npy"), "-o", str(tmp_path / "y.npz")]
        )
        assert status == 0, stderr
        references[name] = np.load(tmp_path / "y.npz")["y"]
    outcomes: Counter[tuple[str, str]] = Counter()
    for case in range(PLAN_CASES):
        source = ("plan", "own")[case % 2]  # as selected; on compiled kernels
        reference = references[source]
        plan = tmp_path / f"plan{case}"
        shutil.copytree(saved_plan / source, plan)
        kind = mutate_plan(rng, plan, outside)
        before = snapshot(outside, outside / "none")
        output = tmp_path / f"out{case}.npz"
        status, stderr = run_cli(["run", str(plan), "--input", str(saved_plan / "x.npy"), "-o", str(output)])
        assert_clean(status, stderr, f"case {case} ({kind})")
        assert snapshot(outside, outside / "none") == before, f"case {case} ({kind}) touched files outside"
        if status == 0 and kind not in ("plan.json", "kernels.json"):  # unsigned damage must not pass unseen
            np.testing.assert_allclose(np.load(output)["y"], reference, rtol=1e-5, err_msg=f"case {case} ({kind})")
        outcomes[(kind, "ran" if status == 0 else "error")] += 1
        shutil.rmtree(plan)
    print(f"\nplan fuzz (seed {SEED}): {dict(sorted(outcomes.items()))}")
    assert sum(outcomes.values()) == PLAN_CASES
