"""The `wpk` command. Each subcommand is a thin wrapper over the Python API.

Errors the user can act on print one line and exit 1; --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path
from typing import NoReturn

import numpy as np

from woodpecker.errors import InputError, WoodpeckerError
from woodpecker.kernels.registry import FALLBACK
from woodpecker.measure.threads import configure_threads
from woodpecker.options import LAYOUTS, OptimizeOptions, SearchOptions, build, parse_size
from woodpecker.output_files import check_output_file, is_json_lines, is_json_with, is_npz, write_replacing


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_threads()  # before any library starts a thread pool
    if not args.debug:  # a warning is one line, like an error, not a source location and a line of code
        warnings.showwarning = _one_line_warning
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


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 1, like every other mistake a user can make."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"wpk: warning: {message}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wpk", description="Woodpecker: make a trained model run faster here.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("optimize", help="optimize an ONNX model into a verified inference plan")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("-o", "--output", required=True, help="plan directory to write (new, empty, or a plan to replace)")
    _add_options(p, OptimizeOptions)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_optimize)

    p = sub.add_parser("tune", help="measure every distinct workload of a model into the records (no plan)")
    p.add_argument("model", help="the .onnx file")
    _add_options(p, SearchOptions)
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

    p = sub.add_parser("export", help="export a torchvision, timm or Hugging Face model with random weights to ONNX")
    p.add_argument(
        "name",
        help="torchvision: resnet18, mobilenet_v2, ...; timm: timm:ghostnet_100, ...; "
        "Hugging Face transformers: hf:bert, hf:vit, ...",
    )
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--seq", type=int, default=128, help="sequence length of a text model (default 128)")
    p.set_defaults(handler=_export)
    return parser


def _add_options(p: argparse.ArgumentParser, cls: type[SearchOptions]) -> None:
    """One flag per field of `cls` that has help text; unset flags stay None (the field's default)."""
    from woodpecker.search.strategies import STRATEGIES

    parsers = {int: int, float: float, str: str, "list": _comma_list, "size": _size, "percent": _percent}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta:
            continue
        choices = tuple(STRATEGIES) if meta.get("choices") == "strategies" else meta.get("choices")
        p.add_argument(
            meta.get("flag", "--" + f.name.replace("_", "-")),
            dest=f.name,
            default=None,
            type=parsers[meta.get("type", str)],
            choices=choices,
            metavar=meta.get("metavar"),
            help=meta["help"],
        )


def options_from_args(args: argparse.Namespace, cls: type[SearchOptions]) -> SearchOptions:
    """The options the flags set (the others at their defaults), checked."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    return build(cls, **given)


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(x for x in text.split(",") if x)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _percent(text: str) -> float:
    return float(text) / 100


def _layout_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="blocked",
        help="blocked: channels in blocks of one vector through the graph (default); plain: NCHW",
    )


def _peers() -> tuple[str, ...]:
    from woodpecker.bench import PEERS

    return PEERS


def _optimize(args) -> int:
    from woodpecker.api import optimize
    from woodpecker.plan.manifest import check_output_dir

    options = options_from_args(args, OptimizeOptions)
    check_output_dir(args.output)  # before the work, which can take minutes; checked again when saving
    plan = optimize(args.model, options)
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
    if plan.meta.get("memory_rule") == FALLBACK:
        rule += ", among those peaking no higher than all-onnxruntime"
    print(f"  whole-plan candidates: {timings}; selected {plan.meta['selected']} ({rule})")
    m = plan.meta["memory"]
    print(
        f"  memory: {m['arena_bytes'] / 2**20:.1f} MiB of activations in one arena "
        f"({m['unplanned_bytes'] / 2**20:.1f} MiB without reuse), {m['weight_bytes'] / 2**20:.1f} MiB of weights"
    )
    v = plan.meta["verification"]
    nan = ", a NaN input propagated as ONNX Runtime propagates it" if v.get("nan_checked") else ""
    print(
        f"  verified against ONNX Runtime: max relative error {v['output_error']:.1e}, "
        f"input-difference error {v['difference_error']:.1e}{nan}"
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

    report = tune(args.model, options_from_args(args, SearchOptions))
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

    _at_least_one(runs=args.runs, top=args.top)
    report = profile(args.plan, args.runs)
    print(json.dumps(report, indent=1) if args.json else format_profile(report, args.top))
    return 0


def _records(args) -> int:
    from woodpecker.records.database import Records, default_path, parse_export

    if args.action == "export" and args.file != "-":  # before reading: never a half-written export
        target = check_output_file(args.file, is_json_lines({"hardware", "workload", "result"}), "a records export")
    if args.action != "import" and not args.records and not default_path().exists():
        print(f"no tuning records yet ({default_path()})", file=sys.stderr)
        return 0
    if args.action == "import":  # read first: a file that is no export adds nothing and creates nothing
        source = sys.stdin if args.file == "-" else _open_for_import(args.file)
        with source:
            exported = parse_export(source, args.file)
    store = Records(args.records, readonly=args.action != "import")
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
            else:
                write_replacing(target, lambda f: f.writelines(line.encode() for line in lines))
        else:
            report = store.import_records(exported)
            print(f"imported {report['records']} records into {store.path}", file=sys.stderr)
            if report["other_hardware"]:
                print(
                    f"note: {report['other_hardware']} of them were measured on other hardware (differing in "
                    f"{', '.join(report['differs'])}); they are kept but not used on this machine",
                    file=sys.stderr,
                )
    finally:
        store.close()
    return 0


def _open_for_import(path: str):
    try:
        return open(path, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise WoodpeckerError(f"{path}: cannot read ({exc.strerror})") from None


def _run(args) -> int:
    from woodpecker.plan.plan import Plan

    out = check_output_file(args.output, is_npz, "an .npz archive")  # before loading and running
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
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(f"input '{name}': cannot read {file} as .npy ({exc})") from None
    outputs = plan.run(feeds)
    write_replacing(out, lambda f: np.savez(f, **outputs))
    print(f"wrote {', '.join(f'{k}{list(v.shape)}' for k, v in outputs.items())} to {out}")
    return 0


def _bench(args) -> int:
    from woodpecker.bench import BenchSettings, bench, format_table

    _at_least_one(batch=args.batch, runs=args.runs, rounds=args.rounds, threads=args.threads)
    if args.json not in (None, "-"):
        target = check_output_file(args.json, is_json_with({"model", "batch", "results"}), "a bench report")
    settings = BenchSettings(batch=args.batch, runs=args.runs, rounds=args.rounds, threads=args.threads)
    report = bench(args.target, [p for p in args.vs.split(",") if p], settings)
    if args.json == "-":
        print(json.dumps(report, indent=1))
        return 0
    print(format_table(report))
    if args.json:
        write_replacing(target, lambda f: f.write(json.dumps(report, indent=1).encode()))
    return 0


def _inspect(args) -> int:
    from woodpecker.inspect_graph import format_inspection, inspect_model

    _at_least_one(batch=args.batch)
    report = inspect_model(args.model, args.batch, args.layout)
    print(json.dumps(report, indent=1) if args.json else format_inspection(report))
    return 0


def _export(args) -> int:
    from woodpecker.models import export_model, exported_name

    _at_least_one(seq=args.seq)
    check_output_file(args.output, lambda path: exported_name(path) is not None, "a model `wpk export` wrote")
    print(f"wrote {export_model(args.name, args.output, seq=args.seq)}")
    return 0


def _at_least_one(**values: int | None) -> None:
    """A one-line error for a count flag (--runs, --batch...) given as 0 or less."""
    for name, value in values.items():
        if value is not None and value < 1:
            raise WoodpeckerError(f"--{name} must be at least 1, got {value}")


if __name__ == "__main__":
    sys.exit(main())
