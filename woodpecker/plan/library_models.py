"""The graph-library segments of a saved plan as ONNX files.

A segment's ONNX file refers to its weights in the plan's weights file (ONNX external data), so
OpenVINO maps them from disk and ONNX Runtime reads them itself: serializing VGG-16's weights
into a model in memory and parsing it back took about 7 s of its 7-10 s first run (now 0.4 s).
"""

from __future__ import annotations

from pathlib import Path

import onnx

from woodpecker.graph.ir import Graph
from woodpecker.graph.onnx_export import graph_to_onnx
from woodpecker.kernels import registry
from woodpecker.plan.choice import Choice
from woodpecker.plan.segments import segments
from woodpecker.plan.serialize import external_tensors


def save_library_models(
    graph: Graph, choices: list[Choice], weights: Path, names: list[str], prefix: str = "library"
) -> dict[str, str]:
    """Write each graph-library segment as `<prefix><i>.onnx` beside `weights` (the file
    `save_constants` wrote, keys for `names`); returns segment label -> file name."""
    external = external_tensors(weights, names)
    models = {}
    for segment in segments(graph, choices):
        if registry.capabilities(segment.impl).runs_subgraphs:
            name = f"{prefix}{len(models)}.onnx"
            onnx.save(graph_to_onnx(segment.subgraph(graph), external=external), weights.parent / name)
            models[segment.label] = name
    return models
