"""The measuring worker: right answers are timed, failures come back as results, hangs are cut off."""

import os
import time

import numpy as np
import pytest
from conftest import const, make_model, tensor
from onnx import helper

from woodpecker.graph.onnx_import import import_model
from woodpecker.kernels.halide.conv2d import HalideConv2d
from woodpecker.kernels.workload import Workload
from woodpecker.measure.runner import LocalRunner
from woodpecker.measure.timing import TimingSettings
from woodpecker.records.database import Records

FAST = TimingSettings(warmup=1, rounds=1, min_runs=3, max_runs=5, min_seconds=0.0, max_seconds=0.2)


def conv_workload(rng):
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        [tensor("x", [1, 8, 20, 20])],
        [tensor("y", [1, 16, 20, 20])],
        [const("w", w)],
    )
    graph = import_model(model)
    return Workload.of(graph, graph.nodes[0])


def test_measure_generated_and_library(rng):
    workload = conv_workload(rng)
    config = {
        "layout": "vec_x",
        "vec": 8,
        "tile_x": 2,
        "tile_c": 2,
        "reduce_order": "c_inner",
        "unroll_kw": False,
        "parallel": "y",
    }
    with LocalRunner(settings=FAST) as runner:
        generated = runner.measure(workload, "halide.conv2d", config)
        library = runner.measure(workload, "onnxruntime", {})
    assert generated.ok and library.ok, (generated.error, library.error)
    assert generated.compile_s > 0 and len(generated.times_s) >= 3 and generated.max_rel_error <= 1e-4


def test_invalid_config_is_a_failed_trial_not_a_crash(rng):
    workload = conv_workload(rng)
    with LocalRunner(settings=FAST) as runner:
        result = runner.measure(workload, "halide.conv2d", {"layout": "vec_x"})  # knobs missing
        after = runner.measure(workload, "onnxruntime", {})
    assert not result.ok and result.error.startswith("compile")
    assert after.ok


def test_batches_compile_in_parallel_processes_and_time_in_the_worker(rng):
    """Ahead-of-time compiled candidates measure like JIT ones; a broken one fails alone."""
    workload = conv_workload(rng)
    configs = HalideConv2d().space(workload).sample(3, seed=int(rng.integers(1 << 30)))
    with LocalRunner(settings=FAST, compile_processes=2) as runner:
        results = runner.measure_batch(workload, "halide.conv2d", [*configs, {"layout": "vec_x"}])
        scratch = runner._compiler._scratch
    assert [r.ok for r in results] == [True, True, True, False], [r.error for r in results]
    assert results[-1].error.startswith("compile")
    assert all(r.compile_s > 0 and r.max_rel_error <= 1e-4 for r in results[:3])
    assert not scratch.exists()  # compiled libraries are removed


def test_compile_timeout_fails_the_batch_and_the_pool_recovers(rng):
    workload = conv_workload(rng)
    configs = HalideConv2d().space(workload).sample(2, seed=0)
    with LocalRunner(settings=FAST, compile_processes=2, timeout_s=0.01) as runner:
        results = runner.measure_batch(workload, "halide.conv2d", configs)
        assert all(r.error == "compile timeout after 0s" for r in results), [r.error for r in results]
        runner.timeout_s = runner._compiler.timeout_s = 60
        again = runner.measure_batch(workload, "halide.conv2d", configs)
        assert all(r.ok for r in again), [r.error for r in again]


def test_timeout_costs_one_trial_and_the_runner_recovers(rng):
    workload = conv_workload(rng)
    endless = TimingSettings(min_runs=10**9, max_runs=10**9, min_seconds=30, max_seconds=30)
    with LocalRunner(settings=endless, timeout_s=2) as runner:
        result = runner.measure(workload, "onnxruntime", {})
        assert result.error == "timeout after 2s"
        runner.settings, runner.timeout_s = FAST, 60  # the restarted worker gets the new settings
        assert runner.measure(workload, "onnxruntime", {}).ok


def test_records_round_trip(rng, records_path):
    workload = conv_workload(rng)
    with LocalRunner(settings=FAST) as runner:
        result = runner.measure(workload, "onnxruntime", {})
    records = Records(records_path)
    records.add(workload.key(), result)
    again = Records(records_path).lookup(workload.key(), "onnxruntime", {})
    assert again is not None and again.times_s == result.times_s and records.count() == 1


def test_foreign_sqlite_file_is_refused(tmp_path):
    import sqlite3

    import pytest

    from woodpecker.errors import RecordsError

    path = tmp_path / "other.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE x (a)").connection.commit()
    with pytest.raises(RecordsError, match="not a Woodpecker records database"):
        Records(path)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(RecordsError):
        Records(garbage)


def _die_at_start() -> None:
    os._exit(3)


def test_a_pool_whose_workers_cannot_start_stops_at_once():
    """multiprocessing.Pool restarts such workers without end; WorkerPool reports the first death."""
    from woodpecker.measure.processes import WorkerDied, WorkerPool

    pool = WorkerPool(2, "test", initializer=_die_at_start)
    start = time.monotonic()
    with pytest.raises(WorkerDied, match="a test worker process died"):
        pool.result(pool.submit(abs, -1), timeout=60)
    pool.terminate()
    assert time.monotonic() - start < 30
