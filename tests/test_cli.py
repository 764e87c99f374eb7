"""The command line as a user meets it: mistakes end in one line and status 1 before any work,
nothing the tool did not write is replaced or deleted, every flag reaches the code it names."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import const, make_model, tensor
from onnx import helper

from woodpecker import cli
from woodpecker.options import OptimizeOptions, SearchOptions

WPK = [sys.executable, "-m", "woodpecker.cli"]


def wpk(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*WPK, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wpk"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small model, its saved plan, an input for it, and the records used to make it."""
    directory = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng()
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    weights = [const("w", rng.standard_normal((8, 8, 3, 3)).astype(np.float32))]
    model = make_model(nodes, [tensor("x", [1, 8, 16, 16])], [tensor("y", [1, 8, 16, 16])], weights)
    (directory / "model.onnx").write_bytes(model.SerializeToString())
    np.save(directory / "x.npy", rng.standard_normal((1, 8, 16, 16)).astype(np.float32))
    records = directory / "records.sqlite"
    result = wpk("optimize", "model.onnx", "-o", "plan", "--budget", "1", "--records", str(records), cwd=directory)
    assert result.returncode == 0, result.stderr
    return directory


def test_output_that_is_no_plan_is_never_replaced(small, tmp_path):
    """A web app has a manifest.json too: `-o` refuses it, before any work, and deletes nothing."""
    webapp = tmp_path / "webapp"
    (webapp / "src").mkdir(parents=True)
    (webapp / "manifest.json").write_text("{}")
    (webapp / "index.html").write_text("x")
    start = time.monotonic()
    result = wpk("optimize", str(small / "model.onnx"), "-o", str(webapp), "--budget", "1")
    one_line_error(result, "is not a Woodpecker plan")
    assert time.monotonic() - start < 30  # refused before optimizing
    assert sorted(p.name for p in webapp.iterdir()) == ["index.html", "manifest.json", "src"]
    one_line_error(wpk("optimize", str(small / "model.onnx"), "-o", str(small / "x.npy")), "not a directory")
    assert (small / "x.npy").is_file()
    assert not list(tmp_path.glob(".webapp*"))  # no staging directory left behind


def test_a_plan_is_replaced_only_by_a_plan(small, tmp_path):
    import shutil

    target = tmp_path / "plan"
    shutil.copytree(small / "plan", target)
    args = ["optimize", str(small / "model.onnx"), "-o", str(target), "--budget", "1"]
    result = wpk(*args, "--records", str(small / "records.sqlite"))
    assert result.returncode == 0, result.stderr
    assert (target / "plan.json").is_file() and not list(tmp_path.glob(".plan*"))
    # Files are written with the user's umask, not private to the writing account.
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [target, *target.rglob("*")]}
    umask = os.umask(0)
    os.umask(umask)
    assert all(mode & 0o044 == 0o044 & ~umask for mode in modes.values()), modes
    (target / "notes.txt").write_text("added by hand")  # no longer the plan its manifest lists
    one_line_error(wpk(*args), "is not a Woodpecker plan")
    assert (target / "notes.txt").read_text() == "added by hand"


def test_run_output_mistakes(small, tmp_path):
    run = ["run", str(small / "plan"), "--input", str(small / "x.npy"), "-o"]
    one_line_error(wpk(*run, str(tmp_path / "missing" / "y.npz")), "no such directory")
    one_line_error(wpk(*run, str(tmp_path)), "is a directory")
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    one_line_error(wpk(*run, str(other)), "refusing to overwrite")
    assert other.read_text() == "mine"
    for _ in range(2):  # an .npz written before is replaced
        assert wpk(*run, str(tmp_path / "y.npz")).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "y.npz"]  # no temporary file left


def test_records_mistakes(small, tmp_path):
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(bytes(range(256)) * 8)
    database = tmp_path / "new" / "records.sqlite"
    one_line_error(wpk("records", "import", str(binary), "--records", str(database)), "not a records export")
    assert not database.parent.exists()  # nothing created for a file that is no export
    one_line_error(wpk("records", "list", "--records", str(database)), "no records database")
    assert not database.parent.exists()
    export = tmp_path / "export.jsonl"
    assert wpk("records", "export", str(export), "--records", str(small / "records.sqlite")).returncode == 0
    one_line_error(wpk("records", "export", str(binary), "--records", str(small / "records.sqlite")), "refusing")
    # Records of another machine: imported, and said to be of no use here.
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    for line in lines:
        line["hardware"], line["hardware_description"]["cpu"] = "0" * 16, "another CPU"
    export.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = wpk("records", "import", str(export), "--records", str(tmp_path / "r.sqlite"))
    assert result.returncode == 0 and "other hardware (differing in cpu)" in result.stderr, result.stderr


def test_records_that_cannot_be_written_are_refused_before_any_work(tmp_path, monkeypatch):
    """A read-only records file (simulated: this test may run as root, whom permissions do not stop)."""
    import sqlite3

    from woodpecker.errors import RecordsError
    from woodpecker.records.database import Records

    path = tmp_path / "records.sqlite"
    Records(path).close()
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda target, **kw: connect(target.replace("mode=rwc", "mode=ro"), **kw))
    with pytest.raises(RecordsError, match="cannot write the records"):
        Records(path)


def test_bad_option_values_are_one_line(small):
    model = str(small / "model.onnx")
    for flags, fragment in [
        (["--seconds", "-5"], "--seconds must not be negative"),
        (["--patience", "-3"], "--patience must not be negative"),
        (["--budget", "0"], "--budget must be at least 1"),
        (["--tie", "-1"], "--tie must not be negative"),
        (["--ray", "no-port"], "--ray"),
        (["--max-memory", "lots"], "is not a size"),
        (["--strategy", "magic"], "invalid choice"),
    ]:
        one_line_error(wpk("optimize", model, "-o", str(small / "never"), *flags), fragment)
    start = time.monotonic()
    one_line_error(wpk("tune", model, "--ray", "127.0.0.1:1"), "cannot reach a Ray cluster")
    assert time.monotonic() - start < 60


def test_a_model_too_large_for_memory_is_refused_at_once(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])]
    weights = [const("w", np.ones((16, 3, 3, 3), np.float32))]
    model = make_model(nodes, [tensor("x", [1, 3, 20000, 20000])], [tensor("y", [1, 16, 20000, 20000])], weights)
    (tmp_path / "big.onnx").write_bytes(model.SerializeToString())
    start = time.monotonic()
    one_line_error(wpk("optimize", str(tmp_path / "big.onnx"), "-o", str(tmp_path / "plan")), "need", "available")
    assert time.monotonic() - start < 60
    small_model = [tensor("x", [1, 3, 64, 64])], [tensor("y", [1, 16, 64, 64])]
    (tmp_path / "small.onnx").write_bytes(make_model(nodes, *small_model, weights).SerializeToString())
    one_line_error(
        wpk("optimize", str(tmp_path / "small.onnx"), "-o", str(tmp_path / "plan"), "--max-memory", "100K"),
        "more than --max-memory",
    )


# Per subcommand: the flags and values to give, and where each must arrive: the function the
# handler calls (patched here) and the name of the argument or option it must arrive as.
def _search_flags(cls: type[SearchOptions]) -> dict[str, tuple[list[str], str, object]]:
    values = {
        "budget": (["--budget", "5"], 5),
        "strategy": (["--strategy", "ga"], "ga"),
        "records": (["--records", "r.sqlite"], "r.sqlite"),
        "batch": (["--batch", "3"], 3),
        "libraries": (["--libraries", "numpy,torch"], ("numpy", "torch")),
        "patience": (["--patience", "2"], 2),
        "seconds": (["--seconds", "1.5"], 1.5),
        "ray": (["--ray", "localhost:6379"], "localhost:6379"),
        "seed": (["--seed", "7"], 7),
        "layout": (["--layout", "plain"], "plain"),
        "threads": (["--threads", "1"], 1),
        "timeout_s": (["--timeout", "30"], 30.0),
        "max_memory": (["--max-memory", "2G"], 2 << 30),
        "tie": (["--tie", "5"], 0.05),
        "memory": (["--memory", "any"], "any"),
    }
    fields = [f.name for f in dataclasses.fields(cls) if "help" in f.metadata]
    return {name: (values[name][0], name, values[name][1]) for name in fields}


@pytest.mark.parametrize("command", ["optimize", "tune"])
def test_every_search_option_reaches_the_api(command, monkeypatch):
    """Each flag of optimize and tune, parsed and passed on: none parsed and then dropped."""
    cls = OptimizeOptions if command == "optimize" else SearchOptions
    seen = {}

    class Reached(Exception):
        pass

    def capture(model, options):
        seen["model"], seen["options"] = model, options
        raise Reached

    monkeypatch.setattr("woodpecker.api." + command, capture)
    monkeypatch.setattr("woodpecker.plan.manifest.check_output_dir", lambda path: Path(path))
    flags = _search_flags(cls)
    parsed = cli._parser().parse_args([command, "m.onnx", *(["-o", "out"] if command == "optimize" else [])])
    declared = {a.dest for a in cli._parser()._subparsers._group_actions[0].choices[command]._actions}
    assert declared - {"help", "model", "output", "json", "handler"} == set(flags)  # a new flag needs a line above
    argv = [command, "m.onnx", *(["-o", "out"] if command == "optimize" else [])]
    argv += [word for words, _, _ in flags.values() for word in words]
    with pytest.raises(Reached):
        parsed = cli._parser().parse_args(argv)
        parsed.handler(parsed)
    options = seen["options"]
    for name, (_, field, value) in flags.items():
        assert getattr(options, field) == value, name


def test_other_subcommands_pass_their_options_on(small, tmp_path, monkeypatch):
    """bench, profile, inspect, run, records and export: each flag given, each seen where it belongs."""
    calls = {}

    def record(name):
        def fake(*args, **kwargs):
            calls[name] = (args, kwargs)
            raise SystemExit(0)

        return fake

    monkeypatch.setattr("woodpecker.bench.bench", record("bench"))
    monkeypatch.setattr("woodpecker.profile.profile", record("profile"))
    monkeypatch.setattr("woodpecker.inspect_graph.inspect_model", record("inspect"))
    monkeypatch.setattr("woodpecker.plan.plan.Plan.load", record("run"))
    monkeypatch.setattr("woodpecker.records.database.Records.export_lines", record("records"))
    monkeypatch.setattr("woodpecker.models.export_torchvision", record("export torchvision"))
    monkeypatch.setattr("woodpecker.models.export_transformers", record("export"))
    records = str(small / "records.sqlite")
    cases = {
        "bench": ["bench", "m.onnx", "--vs", "onnxruntime,openvino", "--batch", "2", "--runs", "4", "--rounds", "5"]
        + ["--threads", "1", "--json", str(tmp_path / "b.json")],
        "profile": ["profile", "p", "--runs", "6", "--top", "3", "--json"],
        "inspect": ["inspect", "m.onnx", "--batch", "3", "--layout", "plain", "--json"],
        "run": ["run", "p", "--input", "x=x.npy", "-o", str(tmp_path / "y.npz")],
        "records": ["records", "export", str(tmp_path / "r.jsonl"), "--records", records, "--all-hardware"],
        "export": ["export", "hf:bert", "-o", str(tmp_path / "m.onnx"), "--seq", "64"],
    }
    subparsers = cli._parser()._subparsers._group_actions[0].choices
    for name, argv in cases.items():
        given = {a.dest for a in subparsers[name]._actions if any(o in argv for o in a.option_strings)}
        flags = {a.dest for a in subparsers[name]._actions if a.option_strings and a.dest != "help"}
        assert given == flags, f"{name}: a flag without a line here: {flags - given}"
        parsed = cli._parser().parse_args(argv)
        with pytest.raises(SystemExit):
            parsed.handler(parsed)
    (target, peers, settings), _ = calls["bench"]
    assert (target, peers) == ("m.onnx", ["onnxruntime", "openvino"])
    assert (settings.batch, settings.runs, settings.rounds, settings.threads) == (2, 4, 5, 1)
    assert calls["profile"][0] == ("p", 6)
    assert calls["inspect"][0] == ("m.onnx", 3, "plain")
    assert calls["run"][0] == ("p",)
    assert calls["records"][0][1:] == (True,)  # export_lines(all_hardware)
    assert calls["export"] == (("bert", str(tmp_path / "m.onnx")), {"seq": 64})
    parsed = cli._parser().parse_args(["export", "resnet18", "-o", str(tmp_path / "m.onnx")])
    with pytest.raises(SystemExit):
        parsed.handler(parsed)
    assert calls["export torchvision"][0] == ("resnet18", str(tmp_path / "m.onnx"))


def test_a_script_read_from_standard_input_can_optimize(small, tmp_path):
    """`python - <<EOF`: the compile and measuring workers must not try to import '<stdin>'."""
    script = (
        "import woodpecker\n"
        f"plan = woodpecker.optimize({str(small / 'model.onnx')!r}, budget=1, "
        f"records={str(small / 'records.sqlite')!r}, progress=False)\n"
        "print('selected', plan.meta['selected'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-"], input=script, capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert result.returncode == 0 and "selected" in result.stdout, result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_ctrl_c_is_one_line_and_stops_every_worker(small, tmp_path):
    """SIGINT reaches the whole process group: one line, status 130, no worker left, nothing written."""

    def new_group_with_default_sigint():
        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    args = ["optimize", str(small / "model.onnx"), "-o", str(tmp_path / "plan"), "--budget", "16"]
    process = subprocess.Popen(
        [*WPK, *args, "--records", str(tmp_path / "fresh.sqlite")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=new_group_with_default_sigint,
    )
    time.sleep(8)  # measuring by now
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "wpk: interrupted" and "Traceback" not in stderr, stderr
    deadline = time.monotonic() + 30
    while _running_in_group(process.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _running_in_group(process.pid), "a worker outlived the command"
    assert not (tmp_path / "plan").exists() and not list(tmp_path.glob(".plan*"))


def _running_in_group(group: int) -> list[int]:
    """Processes of a process group that still run (exited ones waiting to be reaped do not count)."""
    running = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            running.append(int(stat_file.parent.name))
    return running
