"""The tuning records: round trips, concurrent writers, a kill mid-write, bad imports."""

import multiprocessing as mp
import os
import signal
import sqlite3
import time

import pytest

from woodpecker.errors import RecordsError
from woodpecker.measure.result import MeasureResult
from woodpecker.records.database import Records


def result(i: int, error: str | None = None) -> MeasureResult:
    return MeasureResult("halide.conv2d", {"tile": i}, error, 0.1, () if error else (1e-3 * (i + 1), 2e-3))


def writer(path, start: int, count: int) -> None:
    store = Records(path)
    for i in range(start, start + count):
        store.add("Conv-abc", result(i))


def test_export_import_round_trip(tmp_path):
    source = Records(tmp_path / "a.sqlite")
    for i in range(5):
        source.add("Conv-abc", result(i, error="compile: boom" if i == 3 else None))
    lines = list(source.export_lines())
    target = Records(tmp_path / "b.sqlite")
    assert target.import_lines(lines) == {"records": 5, "other_hardware": 0, "differs": []}
    assert target.count() == 5
    assert target.lookup("Conv-abc", "halide.conv2d", {"tile": 2}) == source.lookup(
        "Conv-abc", "halide.conv2d", {"tile": 2}
    )
    assert target.lookup("Conv-abc", "halide.conv2d", {"tile": 3}).error == "compile: boom"
    assert target.summary() == source.summary()


def test_a_bad_line_imports_nothing(tmp_path):
    source = Records(tmp_path / "a.sqlite")
    source.add("Conv-abc", result(1))
    lines = list(source.export_lines()) + ['{"hardware": "x"}']
    target = Records(tmp_path / "b.sqlite")
    with pytest.raises(RecordsError, match=":2: not a Woodpecker record"):
        target.import_lines(lines, "records.jsonl")
    assert target.count() == 0


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "shared.sqlite"
    Records(path)  # create it once
    context = mp.get_context("spawn")
    procs = [context.Process(target=writer, args=(path, k * 100, 40)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert Records(path).count() == 120


def test_kill_during_writes_leaves_a_consistent_database(tmp_path):
    path = tmp_path / "killed.sqlite"
    Records(path)
    proc = mp.get_context("spawn").Process(target=writer, args=(path, 0, 10**9))  # never finishes by itself
    proc.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as reader:
            if reader.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] >= 20:
                break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    store = Records(path)
    written = store.count()
    assert written >= 20
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store.add("Conv-abc", result(10**6))  # and it is still writable
    assert store.count() == written + 1


def conv_description(channels: int, size: int) -> dict:
    return {
        "op": "Conv",
        "attrs": {"pads": [1, 1, 1, 1], "strides": [1, 1]},
        "inputs": [[[1, channels, size, size], "float32", False], [[channels, channels, 3, 3], "float32", True]],
        "outputs": [[[1, channels, size, size], "float32"]],
    }


def test_transfer_returns_the_best_configs_of_the_nearest_workloads(tmp_path):
    store = Records(tmp_path / "r.sqlite")
    for key, channels, size, best_tile in (("Conv-near", 64, 56, 7), ("Conv-far", 512, 7, 9)):
        store.describe(key, conv_description(channels, size))
        for tile, seconds in ((best_tile, 1e-3), (best_tile + 100, 2e-3)):
            store.add(key, MeasureResult("halide.conv2d", {"tile": tile}, times_s=(seconds,)))
        store.add(key, MeasureResult("halide.conv2d", {"tile": -1}, error="compile: boom"))
    target = conv_description(64, 52)
    assert store.transfer("Conv-new", target, "halide.conv2d", k=1) == [{"tile": 7}]
    assert store.transfer("Conv-new", target, "halide.conv2d", k=3) == [{"tile": 7}, {"tile": 9}]
    assert store.transfer("Conv-new", target, "halide.dense") == []
    assert store.transfer("Conv-new", {**target, "op": "MaxPool"}, "halide.conv2d") == []


def test_a_kernel_revision_hides_the_measurements_of_its_older_code(tmp_path, monkeypatch):
    from woodpecker.explore.nodes import measure_with_records
    from woodpecker.kernels import registry

    class Runner:
        measured = 0

        def measure_batch(self, workload, impl, configs):
            Runner.measured += len(configs)
            return [MeasureResult(impl, c, None, 0.1, (1e-3,)) for c in configs]

    records = Records(tmp_path / "r.sqlite")
    configs = [{"tile": 1}, {"tile": 2}]
    measure_with_records(None, "Conv-abc", "halide.conv2d", configs, Runner(), records)
    measure_with_records(None, "Conv-abc", "halide.conv2d", configs, Runner(), records)
    assert Runner.measured == 2  # the second time from the records
    monkeypatch.setattr(registry.get("halide.conv2d"), "revision", 2)
    results = measure_with_records(None, "Conv-abc", "halide.conv2d", configs, Runner(), records)
    assert Runner.measured == 4 and all(r.impl == "halide.conv2d" for r in results)
    assert {s["impl"] for s in records.summary()} == {"halide.conv2d", "halide.conv2d@2"}
