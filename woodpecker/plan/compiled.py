"""What a saved plan prepares so that it loads fast: its generated kernels compiled ahead of time
into one self-contained shared library, and its graph-library segments as ONNX files.

Saved plans then load without a JIT or a search: `Plan.load` maps the library (with its own
Halide runtime) and the pre-packed weights, and the first run is an ordinary run. A library
segment's ONNX file refers to its weights in the plan's weights file (ONNX external data), so
OpenVINO maps them from disk and ONNX Runtime reads them itself: serializing VGG-16's weights
into a model in memory and parsing it back took about 7 s of its 7-10 s first run (now 0.4 s).
"""

from __future__ import annotations

from pathlib import Path

import onnx

from woodpecker.graph.ir import Graph
from woodpecker.graph.onnx_export import graph_to_onnx
from woodpecker.kernels import registry
from woodpecker.kernels.generated.common import Definition
from woodpecker.kernels.workload import Workload
from woodpecker.plan.choice import Choice
from woodpecker.plan.segments import MERGEABLE, segments
from woodpecker.plan.serialize import external_tensors

KERNELS_DIR = "kernels"


def generated_kernels(graph: Graph, choices: list[Choice]) -> dict[str, str]:
    """Entry point name for every node that runs a generated kernel (node name -> entry)."""
    chosen = {c.node: c for c in choices}
    return {
        node.name: f"wpk_node{i}"
        for i, node in enumerate(graph.nodes)
        if node.name in chosen and registry.get(chosen[node.name].impl).kind == "generated"
    }


def save_library_models(
    graph: Graph, choices: list[Choice], weights: Path, names: list[str], prefix: str = "library"
) -> dict[str, str]:
    """Write each graph-library segment as `<prefix><i>.onnx` beside `weights` (the file
    `save_constants` wrote, keys for `names`); returns segment label -> file name."""
    external = external_tensors(weights, names)
    models = {}
    for segment in segments(graph, choices):
        if segment.impl in MERGEABLE:
            name = f"{prefix}{len(models)}.onnx"
            onnx.save(graph_to_onnx(segment.subgraph(graph), external=external), weights.parent / name)
            models[segment.label] = name
    return models


def compile_plan_kernels(graph: Graph, choices: list[Choice], directory: Path, progress: bool = False) -> dict:
    """Compile the plan's generated kernels into `directory`; returns node name -> entry point."""
    from woodpecker.kernels.generated.aot import compile_library

    entries = generated_kernels(graph, choices)
    if not entries:
        return {}
    chosen = {c.node: c for c in choices}
    nodes = {n.name: n for n in graph.nodes}
    definitions: dict[str, Definition] = {}
    for name, entry in entries.items():
        choice = chosen[name]
        definitions[entry] = registry.get(choice.impl).define(Workload.of(graph, nodes[name]), choice.config)
    compile_library(definitions, directory, with_runtime=True, progress=progress)
    return entries
