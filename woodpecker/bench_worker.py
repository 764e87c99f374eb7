"""One runtime timed in a process of its own, asked and answered as measure/protocol.py says. Used by `wpk bench`."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import numpy as np

from woodpecker.measure.protocol import answer, requests
from woodpecker.measure.rounds import MemoryProbe, run_times
from woodpecker.measure.threads import configure_threads


def main() -> None:
    args = next(requests())
    # A peer has the cores to itself: its library's own waiting policy, as its users would run it.
    threads = configure_threads(args["threads"], shared=args["runtime"] == "woodpecker")
    import_runtime(args["runtime"], args["path"])
    memory = MemoryProbe()  # the libraries are loaded; what follows is the model's own memory
    run, feeds = _prepare(args["runtime"], args["path"], args["inputs"], threads)
    times = run_times(lambda: run(feeds), args["warmup"], args["runs"], min_seconds=args["min_seconds"])
    median = statistics.median(times)
    answer(
        {
            "runtime": args["runtime"],
            "median_ms": median * 1e3,
            "p10_ms": float(np.percentile(times, 10)) * 1e3,
            "p90_ms": float(np.percentile(times, 90)) * 1e3,
            "runs": len(times),
            "throughput": args["batch"] / median,
            "threads": threads,
            "peak_mib": memory.peak_mib(),
        }
    )


PEER_MODULES = {
    "onnxruntime": ["onnxruntime"],
    "openvino": ["openvino"],
    "openvino-bf16": ["openvino"],
    "torch": ["torch", "torchvision", "transformers"],
    "torch-compile": ["torch", "torchvision", "transformers"],
}


def import_runtime(runtime: str, path: str) -> None:
    """Import what the runtime needs before the memory baseline: a peer's modules, or the packages
    a plan's implementations run on (registry.WHERE) and the plan runtime."""
    if runtime == "woodpecker":
        choices = json.loads((Path(path) / "plan.json").read_text()).get("choices", [])
        import_plan_runtime({c.get("impl") for c in choices if isinstance(c, dict)})
    else:
        import_modules(PEER_MODULES.get(runtime, []))


def import_plan_runtime(impls: set) -> None:
    from woodpecker.kernels.registry import WHERE

    packages = sorted({WHERE[i].package for i in impls if i in WHERE})
    import_modules([*packages, "woodpecker.plan.plan", "woodpecker.runtime.executor"])


def import_modules(modules: list[str]) -> None:
    for module in modules:
        if importlib.util.find_spec(module) is not None:  # OpenVINO and PyTorch are optional
            __import__(module)


def _prepare(runtime: str, path: str, inputs: dict, threads: int):
    from woodpecker.explore.verify import random_feeds

    if runtime == "woodpecker":
        from woodpecker.plan.plan import Plan

        plan = Plan.load(path)
        return plan.executor().run, plan.sample_feeds(seed=0)
    # Peers: `path` is the model with its batch fixed (ONNX), or what PyTorch builds (models.pytorch_source).
    specs = {name: (tuple(shape), dtype) for name, (shape, dtype) in inputs["specs"].items()}
    feeds = random_feeds(specs, seed=0, bounds=inputs["bounds"])
    if runtime == "onnxruntime":
        import onnxruntime as ort

        from woodpecker.kernels.library.onnxruntime import session_options

        options = session_options(threads, spinning=True)
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return (lambda f: session.run(None, f)), feeds
    if runtime.startswith("openvino"):
        import openvino as ov

        precision = "bf16" if runtime.endswith("bf16") else "f32"
        compiled = ov.Core().compile_model(
            path,
            "CPU",
            {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads},
        )
        request = compiled.create_infer_request()
        return (lambda f: request.infer(f)), feeds
    if runtime in ("torch", "torch-compile"):
        import torch

        from woodpecker.models import build_pytorch

        torch.set_num_threads(threads)
        model, names = build_pytorch(path)
        names = names or list(feeds)
        if runtime == "torch-compile":
            model = torch.compile(model)  # compiled by the warm-up runs, before timing
        tensors = [torch.from_numpy(feeds[name]) for name in names]

        def run(_):
            with torch.inference_mode():
                return model(*tensors)

        return run, feeds
    raise SystemExit(f"unknown runtime {runtime}")


if __name__ == "__main__":
    main()
