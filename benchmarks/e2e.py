"""Export models (the five torchvision CNNs of issue 4 by default), optimize each, time the plan against its peers.

Usage: .venv/bin/python benchmarks/e2e.py [--models resnet18,hf:bert,...] [--batch 1] [--budget 6]
       [--out out/bench] [--rounds 3] [--reuse-plans]

Models are torchvision names, timm models as `timm:<name>`, or Hugging Face transformers as
`hf:<model_type>[:field=value,...]` (sequence 128).

Every runtime is timed in its own process with the same thread count: ONNX Runtime,
OpenVINO fp32, PyTorch eager and torch.compile (fp32 peers), OpenVINO bf16 (reported
beside, not compared), in `--rounds` fresh processes each (see woodpecker/bench.py). The table
shows median latency, the ratio best fp32 peer / Woodpecker (above 1: Woodpecker is faster),
throughput, peak memory of the plan and of ONNX Runtime (resident memory added after the
libraries were imported), the optimizer's whole-plan candidates and tuning time.
`--reuse-plans` times the plans an earlier run left in `--out` instead of optimizing again.
`--publish` also writes the results to benchmarks/results/<date>-b<batch>.json, which
benchmarks/results.py renders into the README.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import woodpecker
from woodpecker.bench import BenchSettings, bench
from woodpecker.errors import WoodpeckerError
from woodpecker.models import KNOWN_MODELS, export_model
from woodpecker.options import TIE

PEERS = ["onnxruntime", "openvino", "torch", "torch-compile", "openvino-bf16"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(KNOWN_MODELS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--budget", type=int, default=6)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reuse-plans", action="store_true", help="time the plans already in --out")
    parser.add_argument("--out", default="out/bench")
    parser.add_argument("--from-json", action="store_true", help="print the table of a finished run, run nothing")
    parser.add_argument("--publish", action="store_true", help="also write benchmarks/results/<date>-b<batch>.json")
    args = parser.parse_args()
    out = Path(args.out)
    if args.from_json:
        rows = json.loads((out / f"results-b{args.batch}.json").read_text())
        print(format_table(rows, args.batch, args.budget))
        return
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in model_names(args.models):
        file_name = name.replace(":", "-")
        model = export_model(name, out / f"{file_name}.onnx")
        plan_dir = out / f"{file_name}-b{args.batch}.plan"
        try:
            plan = woodpecker.load(plan_dir) if args.reuse_plans else _optimize(model, plan_dir, args)
        except WoodpeckerError as exc:  # one model's failure is a row of the table, not the end of the run
            rows.append({"model_name": name, "error": str(exc)})
            print(format_row(rows[-1]), flush=True)
            continue
        report = bench(plan_dir, PEERS, BenchSettings(runs=args.runs, rounds=args.rounds))
        report.update(
            model_name=name,
            tuning_s=plan.meta["summary"]["optimize_seconds"],
            summary=plan.meta["summary"],
            selected=plan.meta["selected"],
            plan_candidates={n: c.get("median_ms") for n, c in plan.meta["plan_candidates"].items()},
        )
        rows.append(report)
        print(format_row(report), flush=True)
        (out / f"results-b{args.batch}.json").write_text(json.dumps(rows, indent=1))
    print()
    print(format_table(rows, args.batch, args.budget))
    if args.publish:
        path = publish(rows, args)
        print(f"written to {path}; render with benchmarks/results.py --readme")


def model_names(text: str) -> list[str]:
    """`resnet18,hf:vit:hidden_size=192,num_hidden_layers=6` as two names: an item that is only
    field=value belongs to the transformers name before it."""
    names: list[str] = []
    for item in text.split(","):
        if names and "=" in item and ":" not in item.partition("=")[0]:
            names[-1] += "," + item
        else:
            names.append(item)
    return names


def publish(rows: list[dict], args: argparse.Namespace) -> Path:
    """The run's rows with what it ran and where, as a dated file under benchmarks/results/."""
    import datetime
    import sys

    from woodpecker.records.fingerprint import fingerprint

    today = datetime.date.today().isoformat()
    path = Path(__file__).parent / "results" / f"{today}-b{args.batch}.json"
    path.parent.mkdir(exist_ok=True)
    document = {
        "date": today,
        "command": " ".join(["benchmarks/e2e.py", *sys.argv[1:]]),
        "batch": args.batch,
        "budget": args.budget,
        "machine": {k: fingerprint()[k] for k in ("cpu", "cores", "versions")},
        "rows": rows,
    }
    path.write_text(json.dumps(document, indent=1))
    return path


def _optimize(model: Path, plan_dir: Path, args: argparse.Namespace) -> woodpecker.Plan:
    plan = woodpecker.optimize(model, budget=args.budget, batch=args.batch, records=Path(args.out) / "records.sqlite")
    plan.save(plan_dir)
    return plan


def _result(report: dict, runtime: str) -> dict:
    return next((r for r in report["results"] if r["runtime"] == runtime and r.get("median_ms")), {})


def format_row(report: dict) -> str:
    cells = [f"{report['model_name']:<14}"]
    if "error" in report:
        return cells[0] + f"  failed: {report['error']}"
    for runtime in ["woodpecker", *PEERS]:
        value = _result(report, runtime).get("median_ms")
        cells.append(f"{value:>10.2f}" if value else f"{'n/a':>10}")
    speedup = report.get("speedup_vs_best_fp32_peer")
    cells.append(f"{speedup:>9.2f}x  {report['best_fp32_peer'] or '-':<14}" if speedup else f"{'-':>10}  {'':<14}")
    throughput = _result(report, "woodpecker").get("throughput")
    cells.append(f"{throughput:>8.1f}" if throughput else f"{'-':>8}")
    for runtime in ("woodpecker", "onnxruntime"):
        peak = _result(report, runtime).get("peak_mib")
        cells.append(f"{peak:>9.0f}" if peak is not None else f"{'-':>9}")
    candidates = report["plan_candidates"]
    unfused = [m for name, m in candidates.items() if name.endswith("-unfused") and m]
    expanded = [m for name, m in candidates.items() if name.endswith("-expanded") and m]
    library = [m for name, m in candidates.items() if name.startswith("all-") and m]
    medians = (
        candidates.get("per-node"),
        candidates.get("generated"),
        min(unfused, default=None),
        min(expanded, default=None),
        min(library, default=None),
    )
    for median in medians:
        cells.append(f"{median:>10.2f}" if median else f"{'-':>10}")
    cells.append(f"  {report['selected']:<14}")
    cells.append(f"{report['tuning_s']:>7.0f}")
    return "".join(cells)


def format_table(rows: list[dict], batch: int, budget: int) -> str:
    header = (
        f"{'model':<14}"
        + "".join(f"{h:>10}" for h in ["wpk ms", "ORT ms", "OV f32 ms", "torch ms", "t.comp ms", "OV bf16"])
        + f"{'vs best':>10}  {'best fp32':<14}{'img/s':>8}{'wpk MiB':>9}{'ORT MiB':>9}"
        + f"{'per-node':>10}{'generated':>10}{'unfused':>10}{'expanded':>10}{'library':>10}"
        + f"  {'selected plan':<14}{'tune s':>7}"
    )
    lines = [
        f"batch {batch}, budget {budget}: medians in ms (median of each runtime's rounds, a fresh process each);",
        "'vs best' = best fp32 peer / Woodpecker, the median of the ratios within each round;",
        "img/s = Woodpecker throughput; MiB = peak resident memory added by the model (after library imports);",
        "'per-node' / 'generated' = candidate plans (per-node winners / every node on its generated kernel",
        "where one is correct), 'unfused' = the faster of those two without the pool and depthwise fusions,",
        "'expanded' = the same with the 1x1 expansions fused into the depthwise convolutions instead,",
        "'library' = the fastest plan running the whole graph on one library; each timed by the optimizer",
        f"in a process of its own; 'selected' = the fastest, or within {TIE:.0%} of it the one with the lowest peak",
        header,
        "-" * len(header),
    ]
    lines += [format_row(r) for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
