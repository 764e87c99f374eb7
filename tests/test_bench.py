"""`wpk bench` sums up its rounds: runtimes in rotating order, medians of medians, ratios paired within a round."""

import os

import pytest

from woodpecker import bench
from woodpecker.bench import BenchSettings, summarize


def result(runtime, ms):
    if ms is None:
        return {"runtime": runtime, "error": "crashed"}
    return {"runtime": runtime, "median_ms": ms, "p10_ms": ms, "p90_ms": ms, "runs": 5, "peak_mib": ms}


def test_ratio_is_the_median_of_the_ratios_within_rounds():
    # round 2 is a slow spell for both; the plan is slow alone in round 3
    plan, onnxruntime, openvino = [10.0, 20.0, 14.0], [12.0, 22.0, 13.0], [11.0, None, 16.0]
    rounds = [
        {
            "woodpecker": result("woodpecker", a),
            "onnxruntime": result("onnxruntime", b),
            "openvino": result("openvino", c),
        }
        for a, b, c in zip(plan, onnxruntime, openvino)
    ]
    results, best = summarize(rounds, batch=2)
    by_name = {r["runtime"]: r for r in results}
    assert by_name["onnxruntime"]["median_ms"] == 13.0 and by_name["onnxruntime"]["peak_mib"] == 22.0
    assert by_name["onnxruntime"]["ratio_vs_woodpecker"] == pytest.approx(1.1)  # of 1.2, 1.1, 0.93
    assert by_name["woodpecker"]["throughput"] == pytest.approx(2 / 14e-3)
    assert by_name["woodpecker"]["round_medians_ms"] == plan
    assert "crashed" in by_name["openvino"]["error"]  # failing in one round of three is reported
    assert best["runtime"] == "onnxruntime"


def test_each_round_starts_the_runtimes_in_a_rotated_order(monkeypatch, tmp_path):
    order = []

    def run_isolated(runtime, path, batch, settings, inputs, scratch):
        order.append(runtime)
        return result(runtime, 1.0)

    monkeypatch.setattr(bench, "_run_isolated", run_isolated)
    monkeypatch.setattr(bench, "_with_batch", lambda model, batch, directory: (model, {}))
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    report = bench.bench(model, ["onnxruntime", "openvino", "torch"], BenchSettings(rounds=3))
    assert order == ["onnxruntime", "openvino", "torch"] + ["openvino", "torch", "onnxruntime"] + [
        "torch",
        "onnxruntime",
        "openvino",
    ]
    assert [r["runtime"] for r in report["results"]] == ["onnxruntime", "openvino", "torch"]


def test_a_peer_keeps_its_library_waiting_policy(monkeypatch):
    """Woodpecker's process makes thread pools sleep at once (it mixes libraries); a peer timed alone
    must not inherit that, or its library runs slower than its users would see."""
    from woodpecker.measure.threads import SHARING, configure_threads

    for name in (*SHARING, "OMP_NUM_THREADS", "HL_NUM_THREADS"):  # restored after the test
        monkeypatch.delenv(name, raising=False)
    assert configure_threads(2) == 2
    assert all(os.environ[name] == value for name, value in SHARING.items())
    configure_threads(2, shared=False)  # as the peer's worker process, which inherited them
    assert not set(SHARING) & set(os.environ) and os.environ["OMP_NUM_THREADS"] == "2"


def test_an_exported_model_names_its_torchvision_source(exported):
    """The PyTorch peers find the architecture an ONNX file came from (the name, not a temporary file's)."""
    from woodpecker.models import torchvision_name

    assert torchvision_name(exported("squeezenet1_1")) == "squeezenet1_1"
