"""The `wpk` command. Each subcommand is a thin wrapper over the Python API.

Errors the user can act on print one line and exit 1; --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from woodpecker.errors import InputError, WoodpeckerError
from woodpecker.measure.threads import configure_threads


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_threads()  # before any library starts a thread pool
    try:
        return args.handler(args) or 0
    except WoodpeckerError as exc:
        if args.debug:
            raise
        print(f"wpk: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("wpk: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if args.debug:
            raise
        print(f"wpk: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wpk", description="Woodpecker: make a trained model run faster here.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("optimize", help="optimize an ONNX model into a verified inference plan")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("-o", "--output", required=True, help="plan directory to write")
    _search_options(p)
    p.add_argument(
        "--tie",
        type=float,
        default=None,
        metavar="PERCENT",
        help="whole plans within PERCENT of the fastest count as equally fast; the one with the lowest peak"
        " memory is kept (default 3; raise it to trade speed for memory)",
    )
    p.add_argument(
        "--memory",
        choices=("onnxruntime", "any"),
        default="onnxruntime",
        help="onnxruntime (default): keep only plans that peak no higher than ONNX Runtime running the same"
        " graph; any: the fastest plan whatever its peak",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_optimize)

    p = sub.add_parser("tune", help="measure every distinct workload of a model into the records (no plan)")
    p.add_argument("model", help="the .onnx file")
    _search_options(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_tune)

    p = sub.add_parser("records", help="list, export or import tuning records")
    p.add_argument("action", choices=["list", "export", "import"])
    p.add_argument("file", nargs="?", default="-", help="JSON-lines file for export/import ('-': stdout/stdin)")
    p.add_argument("--records", help="the database (default: ~/.cache/woodpecker/records.sqlite)")
    p.add_argument("--all-hardware", action="store_true", help="export records of every machine, not just this one")
    p.set_defaults(handler=_records)

    p = sub.add_parser("run", help="run a plan on inputs from .npy files")
    p.add_argument("plan", help="plan directory")
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=FILE.npy",
        help="an input (NAME= may be left out when the plan has one input)",
    )
    p.add_argument("-o", "--output", required=True, help="where to write the outputs (.npz)")
    p.set_defaults(handler=_run)

    p = sub.add_parser("bench", help="time a plan against ONNX Runtime / OpenVINO / PyTorch")
    p.add_argument("target", help="plan directory or .onnx model")
    p.add_argument("--vs", default="onnxruntime", help=f"peers, comma-separated, from: {','.join(_peers())}")
    p.add_argument("--batch", type=int, help="batch size for an .onnx target (plans know theirs)")
    p.add_argument("--runs", type=int, default=30, help="timed runs per runtime and round (median reported)")
    p.add_argument(
        "--rounds", type=int, default=3, help="fresh processes per runtime, order rotating (median of their medians)"
    )
    p.add_argument("--threads", type=int, help="threads for every runtime (default: all cores)")
    p.add_argument("--json", metavar="FILE", nargs="?", const="-", help="write the figures as JSON (to FILE or stdout)")
    p.set_defaults(handler=_bench)

    p = sub.add_parser("profile", help="time a plan step by step, beside its nodes' kernels timed alone")
    p.add_argument("plan", help="plan directory")
    p.add_argument("--runs", type=int, default=20, help="whole-plan runs, each step's median reported")
    p.add_argument("--top", type=int, help="only the K slowest steps")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_profile)

    p = sub.add_parser("inspect", help="show the optimized graph and which nodes get which kernels")
    p.add_argument("model")
    p.add_argument("--batch", type=int)
    _layout_option(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_inspect)

    p = sub.add_parser("export", help="export a torchvision model with random weights to ONNX")
    p.add_argument("name", help="e.g. resnet18, resnet50, mobilenet_v2, vgg16, squeezenet1_1")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(handler=_export)
    return parser


def _search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", type=int, default=8, help="configurations tried per generated kernel (default 8)")
    p.add_argument(
        "--strategy", default="anneal", help="anneal (cost model, default), ga (genetic), rl (PPO) or random"
    )
    p.add_argument("--records", help="tuning-records database (default: ~/.cache/woodpecker/records.sqlite)")
    p.add_argument("--batch", type=int, help="batch size to plan for (default: the model's, or 1 if dynamic)")
    p.add_argument(
        "--libraries", default="onnxruntime,openvino,torch,numpy", help="library kernels to consider, comma-separated"
    )
    p.add_argument("--patience", type=int, default=0, help="stop a kernel's search after K batches without gain")
    p.add_argument("--seconds", type=float, default=0.0, help="time budget per workload and generated kernel")
    p.add_argument("--ray", metavar="ADDRESS", help="measure on a Ray cluster ('local' starts a one-node one)")
    p.add_argument("--seed", type=int, default=0)
    _layout_option(p)


def _layout_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--layout",
        choices=("blocked", "plain"),
        default="blocked",
        help="blocked: channels in blocks of one vector through the graph (default); plain: NCHW",
    )


def _search_kwargs(args) -> dict:
    return dict(
        budget=args.budget,
        strategy=args.strategy,
        records=args.records,
        batch=args.batch,
        libraries=tuple(x for x in args.libraries.split(",") if x),
        seed=args.seed,
        layout=args.layout,
    )


def _peers() -> tuple[str, ...]:
    from woodpecker.bench import PEERS

    return PEERS


def _optimize(args) -> int:
    from woodpecker.api import optimize

    tie = {"tie": args.tie / 100} if args.tie is not None else {}  # else the optimizer's default
    plan = optimize(args.model, **tie, memory=args.memory, **_search_kwargs(args))
    plan.save(args.output, progress=sys.stderr.isatty())
    summary = plan.meta["summary"]
    if args.json:
        extra = {k: plan.meta[k] for k in ("verification", "plan_candidates", "selected", "memory")}
        print(json.dumps({"plan": str(Path(args.output).resolve()), **summary, **extra}, indent=1))
        return 0
    print(f"plan written to {args.output}")
    print(f"  nodes: {summary['nodes_before']} -> {summary['nodes']} ({summary['fused']} ops fused)")
    print(
        f"  kernels: {summary['generated']} generated, {summary['library']} library, "
        f"{summary['fallback']} ONNX Runtime fallback; by implementation: {summary['by_impl']}"
    )
    if summary["fallback_nodes"]:
        print(f"  fell back: {', '.join(summary['fallback_nodes'])}")
    print(
        f"  {summary['measured_candidates']} kernel candidates measured or read from the records; "
        f"{summary['optimize_seconds']} s in all"
    )
    timings = ", ".join(
        f"{name} {c['median_ms']:.2f} ms"
        + (f" / {c['resident_mib']:.0f} MiB" if c.get("resident_mib") is not None else "")
        + (f" (peak {c['peak_mib']:.0f})" if c.get("peak_mib") is not None else "")
        if c["median_ms"]
        else f"{name} failed"
        for name, c in plan.meta["plan_candidates"].items()
    )
    rule = f"the fastest, or within {plan.meta['tie']:.0%} of it the lowest peak memory"
    if plan.meta.get("memory_rule") == "onnxruntime":
        rule += ", among those peaking no higher than all-onnxruntime"
    print(f"  whole-plan candidates: {timings}; selected {plan.meta['selected']} ({rule})")
    m = plan.meta["memory"]
    print(
        f"  memory: {m['arena_bytes'] / 2**20:.1f} MiB of activations in one arena "
        f"({m['unplanned_bytes'] / 2**20:.1f} MiB without reuse), {m['weight_bytes'] / 2**20:.1f} MiB of weights"
    )
    v = plan.meta["verification"]
    print(
        f"  verified against ONNX Runtime: max relative error {v['output_error']:.1e}, "
        f"input-difference error {v['difference_error']:.1e}"
    )
    if not v.get("input_sensitive", True):
        print(
            "  warning: the model's outputs do not change with its input (a zero-initialized layer?), "
            "so this check could not tell a wrong kernel from a right one",
            file=sys.stderr,
        )
    return 0


def _tune(args) -> int:
    from woodpecker.api import tune

    report = tune(args.model, **_search_kwargs(args))
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(
        f"tuned {report['workloads']} distinct workloads, {report['measured_candidates']} candidates "
        f"measured or read from the records, in {report['seconds']} s"
    )
    for row in report["best"]:
        print(f"  {row['impl']:<20}{(row['median_s'] or 0) * 1e3:>9.3f} ms  {row['node']}")
    return 0


def _profile(args) -> int:
    from woodpecker.profile import format_profile, profile

    if args.runs < 1:
        raise WoodpeckerError(f"--runs must be at least 1, got {args.runs}")
    report = profile(args.plan, args.runs)
    print(json.dumps(report, indent=1) if args.json else format_profile(report, args.top))
    return 0


def _records(args) -> int:
    from woodpecker.records.database import Records

    store = Records(args.records)
    try:
        if args.action == "list":
            for row in store.summary():
                best = f"{row['best_median_s'] * 1e3:.3f} ms" if row["best_median_s"] else "-"
                print(
                    f"{row['workload']:<36}{row['impl']:<20}{row['configs']:>5} configs {row['failures']:>4} failed"
                    f"  best {best}"
                )
        elif args.action == "export":
            lines = (line + "\n" for line in store.export_lines(args.all_hardware))
            if args.file == "-":
                sys.stdout.writelines(lines)
            else:  # written beside, then renamed: never a half-written export
                tmp = Path(args.file).with_name(Path(args.file).name + ".tmp")
                tmp.write_text("".join(lines))
                tmp.replace(args.file)
        else:
            source = sys.stdin if args.file == "-" else _open_for_import(args.file)
            count = store.import_lines(source, args.file)
            print(f"imported {count} records into {store.path}", file=sys.stderr)
    finally:
        store.close()
    return 0


def _open_for_import(path: str):
    try:
        return open(path)  # noqa: SIM115
    except OSError as exc:
        raise WoodpeckerError(f"{path}: cannot read ({exc.strerror})") from None


def _run(args) -> int:
    from woodpecker.plan.plan import Plan

    plan = Plan.load(args.plan)
    feeds = {}
    for item in args.input:
        name, _, file = item.rpartition("=")
        if not name:
            if len(plan.graph.inputs) != 1:
                raise InputError(f"the plan has inputs {plan.graph.inputs}: write --input NAME=FILE.npy")
            name = plan.graph.inputs[0]
        try:
            feeds[name] = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"input '{name}': cannot read {file} as .npy ({exc})") from None
    outputs = plan.run(feeds)
    out = Path(args.output)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, **outputs)
    tmp.replace(out)
    print(f"wrote {', '.join(f'{k}{list(v.shape)}' for k, v in outputs.items())} to {out}")
    return 0


def _bench(args) -> int:
    from woodpecker.bench import BenchSettings, bench, format_table

    settings = BenchSettings(batch=args.batch, runs=args.runs, rounds=args.rounds, threads=args.threads)
    report = bench(args.target, [p for p in args.vs.split(",") if p], settings)
    if args.json == "-":
        print(json.dumps(report, indent=1))
        return 0
    print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def _inspect(args) -> int:
    from woodpecker.inspect_graph import format_inspection, inspect_model

    report = inspect_model(args.model, args.batch, args.layout)
    print(json.dumps(report, indent=1) if args.json else format_inspection(report))
    return 0


def _export(args) -> int:
    from woodpecker.models import export_torchvision

    print(f"wrote {export_torchvision(args.name, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
