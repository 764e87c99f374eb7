"""Operator coverage over torchvision's classification models: what `wpk inspect` reports for each.

    .venv/bin/python benchmarks/coverage.py --out out/coverage [--models resnet18,vit_b_16]

Exports each model (random weights, opset 17) once into --out, then prints per model: ONNX
nodes, nodes after the graph passes, operations fused, layout conversions, and how many nodes
have a generated kernel, only a library kernel, or only the ONNX Runtime fallback (with their
op types). Writes the same as JSON to --out/coverage.json.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from woodpecker.inspect_graph import inspect_model
from woodpecker.models import export_torchvision

MODELS = (
    "alexnet,vgg16,resnet18,resnet50,resnext50_32x4d,wide_resnet50_2,squeezenet1_1,densenet121,googlenet,"
    "inception_v3,mobilenet_v2,mobilenet_v3_small,mobilenet_v3_large,mnasnet0_5,shufflenet_v2_x1_0,"
    "efficientnet_b0,efficientnet_v2_s,regnet_x_400mf,regnet_y_400mf,convnext_tiny,vit_b_16,swin_t,maxvit_t"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--out", default="out/coverage")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        path = out / f"{name}.onnx"
        try:
            if not path.exists():
                export_torchvision(name, path)
            report = inspect_model(path)
        except Exception as exc:  # one model's failure is a row of the table, not the end of it
            rows.append({"model": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"})
            print(f"{name:<20} failed: {rows[-1]['error']}", flush=True)
            continue
        kinds = Counter(r["coverage"] for r in report["nodes"])
        rows.append(
            {
                "model": name,
                "onnx_nodes": report["nodes_before"],
                "nodes": len(report["nodes"]),
                "fused": report["fusions"],
                "relayouts": report["relayouts"],
                "generated": kinds["generated"],
                "library": kinds["library"],
                "fallback": kinds["fallback"],
                "fallback_ops": dict(Counter(r["op"] for r in report["nodes"] if r["coverage"] == "fallback")),
                "library_ops": dict(Counter(r["op"] for r in report["nodes"] if r["coverage"] == "library")),
            }
        )
        print(_format(rows[-1]), flush=True)
    (out / "coverage.json").write_text(json.dumps(rows, indent=1))


def _format(row: dict) -> str:
    fallback = ", ".join(f"{op} x{n}" for op, n in row["fallback_ops"].items()) or "-"
    library = ", ".join(f"{op} x{n}" for op, n in row["library_ops"].items()) or "-"
    return (
        f"| {row['model']} | {row['onnx_nodes']} | {row['nodes']} | {row['fused']} | {row['relayouts']} | "
        f"{row['generated']} | {row['library']} ({library}) | {row['fallback']} ({fallback}) |"
    )


if __name__ == "__main__":
    main()
