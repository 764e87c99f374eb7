"""One runtime timed in a process of its own; prints one JSON line. Used by `wpk bench`."""

from __future__ import annotations

import importlib.util
import json
import resource
import signal
import statistics
import sys
import time

import numpy as np

from woodpecker.measure.threads import configure_threads


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: `wpk bench` stops this process and says so
    args = json.loads(sys.argv[1])
    # A peer has the cores to itself: its library's own waiting policy, as its users would run it.
    threads = configure_threads(args["threads"], shared=args["runtime"] == "woodpecker")
    import_runtime(args["runtime"])
    baseline = rss_mib()  # the libraries are loaded; what follows is the model's own memory
    run, feeds = _prepare(args["runtime"], args["path"], args["inputs"], threads)
    for _ in range(args["warmup"]):
        run(feeds)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < args["runs"] or time.perf_counter() - start < args["min_seconds"]:
        t0 = time.perf_counter()
        run(feeds)
        times.append(time.perf_counter() - t0)
        if len(times) >= 10 * args["runs"]:
            break
    median = statistics.median(times)
    print(
        json.dumps(
            {
                "runtime": args["runtime"],
                "median_ms": median * 1e3,
                "p10_ms": float(np.percentile(times, 10)) * 1e3,
                "p90_ms": float(np.percentile(times, 90)) * 1e3,
                "runs": len(times),
                "throughput": args["batch"] / median,
                "threads": threads,
                "peak_mib": peak_rss_mib() - baseline,
            }
        )
    )


def import_runtime(runtime: str) -> None:
    """Import what the runtime needs before the memory baseline (a plan may use any library)."""
    modules = {
        "woodpecker": ["onnxruntime", "openvino", "halide", "woodpecker.plan.plan", "woodpecker.runtime.executor"],
        "woodpecker-runtime": ["woodpecker.plan.plan", "woodpecker.runtime.executor"],
        "halide": ["halide"],
        "onnxruntime": ["onnxruntime"],
        "openvino": ["openvino"],
        "openvino-bf16": ["openvino"],
        "torch": ["torch", "torchvision"],
        "torch-compile": ["torch", "torchvision"],
    }
    for module in modules.get(runtime, []):
        if importlib.util.find_spec(module) is not None:  # OpenVINO and PyTorch are optional
            __import__(module)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would carry the parent's peak across exec)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024  # kB


def reset_peak() -> bool:
    """Start this process's peak resident memory (VmHWM) afresh, e.g. after imports that should not
    count (Linux only: writing 5 to clear_refs); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _prepare(runtime: str, path: str, inputs: dict, threads: int):
    from woodpecker.plan.verify import random_feeds

    if runtime == "woodpecker":
        from woodpecker.plan.plan import Plan

        plan = Plan.load(path)
        return plan.executor().run, random_feeds(plan.input_specs, seed=0)
    # Peers: `path` is the model with its batch fixed (ONNX), or the torchvision name (PyTorch).
    feeds = random_feeds({name: (tuple(shape), dtype) for name, (shape, dtype) in inputs.items()}, seed=0)
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
        import torchvision

        torch.set_num_threads(threads)
        model = getattr(torchvision.models, path)(weights=None).eval()
        if runtime == "torch-compile":
            model = torch.compile(model)  # compiled by the warm-up runs, before timing
        tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}

        def run(_):
            with torch.inference_mode():
                return model(*tensors.values())

        return run, feeds
    raise SystemExit(f"unknown runtime {runtime}")


if __name__ == "__main__":
    main()
