"""`wpk bench`: time the plan and its peers, each in its own process, same threads, same input.

Timing peers in separate processes keeps one library's thread pool from slowing another's.
Reported figures are medians over many runs after a warm-up; ratios are peer / Woodpecker
(above 1: Woodpecker is faster). On a shared machine one process can run 20-40 % slower than
the next for reasons of its own, so every runtime is timed in `rounds` fresh processes, the
runtimes' order rotating from round to round; a runtime's median is the median of its rounds',
and a ratio is the median of the ratios within each round (runtimes timed minutes apart do not
share a slow spell, those in one round more often do).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from woodpecker.errors import WoodpeckerError
from woodpecker.measure.protocol import WorkerProcess
from woodpecker.measure.rounds import interleaved_rounds
from woodpecker.models import pytorch_source

PEERS = ("onnxruntime", "openvino", "openvino-bf16", "torch", "torch-compile")
ONNX_PEERS = ("onnxruntime", "openvino", "openvino-bf16")
REDUCED_PRECISION = ("openvino-bf16",)


@dataclass(frozen=True)
class BenchSettings:
    batch: int | None = None
    warmup: int = 5
    runs: int = 30
    min_seconds: float = 1.0
    rounds: int = 3
    threads: int | None = None
    timeout_s: float = 900.0


def bench(target: str | Path, peers: list[str], settings: BenchSettings) -> dict:
    if settings.rounds < 1:
        raise WoodpeckerError(f"--rounds must be at least 1, got {settings.rounds}")
    target = Path(target)
    if target.is_dir():
        from woodpecker.plan.plan import Plan

        plan = Plan.load(target)
        model = plan.meta.get("source_model")
        batch = plan.meta.get("batch")
        runtimes = [("woodpecker", str(target))]
    else:
        model, batch, runtimes = str(target), settings.batch or 1, []
    for peer in peers:
        if peer not in PEERS:
            raise WoodpeckerError(f"unknown peer '{peer}'; choose from {', '.join(PEERS)}")
        if not model or not Path(model).exists():
            raise WoodpeckerError(f"cannot time peer {peer}: the plan's source model {model} is not available")
        runtimes.append((peer, model))
    with tempfile.TemporaryDirectory(prefix="wpk-bench-") as tmp:
        # Peers start from files as their users' code would: ONNX peers from a copy of the model
        # with the batch fixed, PyTorch from its torchvision or transformers name. Preparing either inside the
        # timed process would add a copy of the model to the peer's peak memory.
        static, inputs = _with_batch(model, batch, Path(tmp)) if peers else (None, {})
        pytorch = pytorch_source(model) if set(peers) & {"torch", "torch-compile"} else None
        sources = {
            name: static if name in ONNX_PEERS else pytorch if name.startswith("torch") else path
            for name, path in runtimes
        }
        with tqdm(
            total=settings.rounds * len(sources), desc="bench", unit="run", leave=False, disable=not sys.stderr.isatty()
        ) as bar:
            rounds = interleaved_rounds(
                list(sources),
                settings.rounds,
                lambda name: _run_isolated(name, sources[name], batch, settings, inputs, Path(tmp)),
                bar.update,
            )
    results, best = summarize(rounds, batch)
    return {
        "target": str(target),
        "model": model,
        "batch": batch,
        "results": results,
        "best_fp32_peer": best["runtime"] if best else None,
        "speedup_vs_best_fp32_peer": best.get("ratio_vs_woodpecker") if best else None,
        "rounds": settings.rounds,
    }


def summarize(rounds: list[dict[str, dict]], batch: int) -> tuple[list[dict], dict | None]:
    """Each runtime's rounds as one result, with its ratio to the plan (median of the ratios within
    each round); and the fastest fp32 peer."""
    results = [_over_rounds(name, [r[name] for r in rounds], batch) for name in rounds[0]]
    for r in results:
        paired = [one[r["runtime"]]["median_ms"] / one["woodpecker"]["median_ms"] for one in rounds if _ok(one, r)]
        if paired:
            r["ratio_vs_woodpecker"] = round(statistics.median(paired), 3)
    fp32_peers = [r for r in results if r["runtime"] not in ("woodpecker", *REDUCED_PRECISION) and r.get("median_ms")]
    return results, min(fp32_peers, key=lambda r: r["median_ms"]) if fp32_peers else None


def _ok(one_round: dict[str, dict], result: dict) -> bool:
    """Both this runtime and the plan were timed in this round."""
    return all(one_round.get(name, {}).get("median_ms") for name in (result["runtime"], "woodpecker"))


def _over_rounds(runtime: str, runs: list[dict], batch: int) -> dict:
    """One runtime's rounds as one result: median of the medians, the highest peak memory; a round
    that failed makes the result an error (a runtime that only sometimes works is reported)."""
    failed = [r for r in runs if r.get("error")]
    if failed:
        return {"runtime": runtime, "error": failed[0]["error"]}
    median = statistics.median(r["median_ms"] for r in runs)
    return runs[0] | {
        "median_ms": median,
        "p10_ms": statistics.median(r["p10_ms"] for r in runs),
        "p90_ms": statistics.median(r["p90_ms"] for r in runs),
        "round_medians_ms": [round(r["median_ms"], 3) for r in runs],
        "runs": sum(r["runs"] for r in runs),
        "throughput": batch / median * 1e3,
        "peak_mib": max(r["peak_mib"] for r in runs),
    }


def _with_batch(model: str, batch: int, directory: Path) -> tuple[str, dict]:
    """A copy of the ONNX model with its inputs' batch fixed, for the ONNX peers to load, and what
    their random feeds need: the inputs (name -> (shape, dtype)) and the token-id bounds."""
    import onnx

    from woodpecker.explore.verify import index_bounds
    from woodpecker.graph.onnx_import import import_model, load_onnx, with_static_inputs

    path = directory / "model.onnx"
    proto = with_static_inputs(load_onnx(model), batch)
    weights = {t.name for t in proto.graph.initializer}
    specs = {
        i.name: (
            [d.dim_value for d in i.type.tensor_type.shape.dim],
            onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name,
        )
        for i in proto.graph.input
        if i.name not in weights
    }
    integers = any(np.dtype(dtype).kind in "iu" for _, dtype in specs.values())
    bounds = index_bounds(import_model(proto)) if integers else {}
    onnx.save(proto, path, save_as_external_data=proto.ByteSize() > 2**31 - 2**26)  # protobuf's 2 GB limit
    return str(path), {"specs": specs, "bounds": bounds}


def _run_isolated(
    runtime: str, path: str | None, batch: int, settings: BenchSettings, inputs: dict, scratch: Path
) -> dict:
    """`path`: the plan, the model with its batch fixed (ONNX peers) or what PyTorch builds (`pytorch_source`);
    `inputs`: what the peers' random feeds need (`_with_batch`)."""
    if path is None:
        return {"runtime": runtime, "error": "model not exported by `wpk export` (PyTorch model unknown)"}
    args = {
        "runtime": runtime,
        "path": path,
        "batch": batch,
        "warmup": settings.warmup,
        "runs": settings.runs,
        "min_seconds": settings.min_seconds,
        "threads": settings.threads,
        "inputs": inputs,
    }
    worker = WorkerProcess("woodpecker.bench_worker", scratch / f"{runtime}.stderr")
    try:
        result = worker.ask(args, settings.timeout_s)
    finally:
        worker.close()
    return result if "error" not in result else {"runtime": runtime, "error": result["error"]}


def format_table(report: dict) -> str:
    header = f"{'runtime':<16}{'median ms':>11}{'p90 ms':>10}{'img/s':>10}{'peak MiB':>10}{'ratio':>9}  note"
    lines = [f"model {report['model']}  batch {report['batch']}", header, "-" * len(header)]
    for r in report["results"]:
        if r.get("error"):
            lines.append(f"{r['runtime']:<16}{'-':>11}{'-':>10}{'-':>10}{'-':>10}{'-':>9}  {r['error']}")
            continue
        ratio = r.get("ratio_vs_woodpecker")
        note = "reduced precision (bf16), not comparable to fp32" if r["runtime"] in REDUCED_PRECISION else ""
        lines.append(
            f"{r['runtime']:<16}{r['median_ms']:>11.2f}{r['p90_ms']:>10.2f}{r['throughput']:>10.1f}"
            f"{r['peak_mib']:>10.0f}{(f'{ratio:.2f}x' if ratio else '-'):>9}  {note}"
        )
    lines.append(
        f"medians of {report['rounds']} rounds, each runtime in a fresh process per round; ratio = median over"
        " rounds of peer / Woodpecker (above 1: Woodpecker is faster)"
    )
    lines.append("peak MiB = peak resident memory after the runtime's libraries were imported (model, buffers, runs)")
    if report.get("speedup_vs_best_fp32_peer"):
        lines.append(f"vs best fp32 peer ({report['best_fp32_peer']}): {report['speedup_vs_best_fp32_peer']:.2f}x")
    return "\n".join(lines)
