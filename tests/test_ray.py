"""The Ray back end on a local one-node cluster: same results, same records as the local runner."""

import numpy as np
from conftest import const, make_model, tensor
from onnx import helper
from test_measure import FAST, conv_workload

import woodpecker
from woodpecker.measure.ray_runner import RayRunner
from woodpecker.records.database import Records


def test_ray_runner_measures_checks_and_reports_failures(rng, records_path):
    workload = conv_workload(rng)
    good = {
        "layout": "vec_c",
        "vec": 8,
        "tile_x": 4,
        "tile_c": 2,
        "reduce_order": "c_inner",
        "unroll_kw": False,
        "parallel": "y",
        "padding": "copy",
    }
    with RayRunner("local", settings=FAST) as runner:
        results = runner.measure_batch(workload, "halide.conv2d", [good, {"layout": "vec_x"}])
        library = runner.measure(workload, "onnxruntime", {})
        # optimize() joins the running cluster instead of starting another
        w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
        model = make_model(
            [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
            [tensor("x", [1, 3, 16, 16])],
            [tensor("y", [1, 8, 16, 16])],
            [const("w", w)],
        )
        plan = woodpecker.optimize(model, budget=3, records=records_path, ray="local", progress=False)
    assert results[0].ok and results[0].max_rel_error <= 1e-4 and len(results[0].times_s) >= 3
    assert not results[1].ok and results[1].error.startswith("compile")
    assert library.ok
    assert plan.meta["verification"]["output_error"] <= 1e-4
    assert len([c for c in plan.choices[0].candidates if c["impl"] == "halide.conv2d_blocked"]) == 3  # NCHW8c
    assert Records(records_path).count() >= 3  # the driver wrote the cluster's results to the records
