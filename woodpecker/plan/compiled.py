"""A plan's generated kernels, compiled ahead of time into one self-contained shared library.

Saved plans then load without a JIT or a search: `Plan.load` maps the library (with its own
Halide runtime) and the pre-packed weights, and the first run is an ordinary run.
"""

from __future__ import annotations

from pathlib import Path

from woodpecker.graph.ir import Graph
from woodpecker.kernels import registry
from woodpecker.kernels.generated.common import Definition
from woodpecker.kernels.workload import Workload
from woodpecker.plan.choice import Choice

KERNELS_DIR = "kernels"


def generated_kernels(graph: Graph, choices: list[Choice]) -> dict[str, str]:
    """Entry point name for every node that runs a generated kernel (node name -> entry)."""
    chosen = {c.node: c for c in choices}
    return {
        node.name: f"wpk_node{i}"
        for i, node in enumerate(graph.nodes)
        if node.name in chosen and registry.get(chosen[node.name].impl).kind == "generated"
    }


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
