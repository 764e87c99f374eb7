"""What a saved plan prepares so that it loads fast: its generated kernels compiled ahead of time
into one self-contained shared library, and its graph-library segments as ONNX files.

Saved plans then load without a JIT or a search: `Plan.load` maps the library (with its own
Halide runtime) and the pre-packed weights, and the first run is an ordinary run. A library
segment's ONNX file refers to its weights in the plan's weights file (ONNX external data), so
OpenVINO maps them from disk and ONNX Runtime reads them itself: serializing VGG-16's weights
into a model in memory and parsing it back took about 7 s of its 7-10 s first run (now 0.4 s).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from functools import cache
from pathlib import Path

import numpy as np
import onnx

from woodpecker.graph.ir import Graph
from woodpecker.graph.onnx_export import graph_to_onnx
from woodpecker.kernels import registry
from woodpecker.kernels.workload import Workload
from woodpecker.plan.choice import Choice
from woodpecker.plan.segments import MERGEABLE, segments
from woodpecker.plan.serialize import external_tensors

MAX_CACHED_OBJECTS = 5000  # compiled kernels kept in the object cache (20-50 kB each)


def generated_kernels(graph: Graph, choices: list[Choice]) -> dict[str, str]:
    """Entry point name for every node that runs a generated kernel (node name -> entry). A kernel
    name that is not registered is no generated kernel; building the plan reports it."""
    chosen = {c.node: registry.get(c.impl) for c in choices if c.impl in registry.WHERE}
    return {
        node.name: f"wpk_node{i}"
        for i, node in enumerate(graph.nodes)
        if node.name in chosen and chosen[node.name].kind == "generated"
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
    """Link the plan's generated kernels into a self-contained library in `directory`; returns
    node name -> entry point. Each kernel's object comes from the object cache (kernel_objects)."""
    from woodpecker.kernels.generated.aot import LibraryEntry, link_library

    entries = generated_kernels(graph, choices)
    if not entries:
        return {}
    chosen = {c.node: c for c in choices}
    nodes = {n.name: n for n in graph.nodes}
    kernels = {name: (Workload.of(graph, nodes[name]), chosen[name].impl, chosen[name].config) for name in entries}
    objects = kernel_objects(list(kernels.values()), progress)
    library_entries = {}
    for (name, entry), (function, _) in zip(entries.items(), objects):
        workload, impl, config = kernels[name]
        definition = registry.get(impl).define(workload, config)  # its packed constants
        library_entries[entry] = LibraryEntry(function, definition.constants, definition.flatten)
    directory.mkdir(parents=True, exist_ok=True)
    link_library(directory, [path for _, path in objects], library_entries, with_runtime=True)
    return entries


def kernel_objects(kernels: list[tuple[Workload, str, dict]], progress: bool = False) -> list[tuple[str, Path]]:
    """(function name, object file) for each (workload, generated implementation, config).

    Objects are cached by everything that decides their code (kernel_key), so the candidate
    plans of one optimization, the plan it saves and a later optimization of the same model
    compile each kernel once. The missing ones are compiled in parallel processes."""
    from woodpecker.kernels.generated.aot import cache_dir
    from woodpecker.measure.compile_pool import compile_objects

    directory = cache_dir() / "objects"
    directory.mkdir(parents=True, exist_ok=True)
    keys = [kernel_key(*kernel) for kernel in kernels]
    objects = [(f"wpk_{key[:24]}", directory / f"{key}.o") for key in keys]
    missing = {path: (*kernel, function) for kernel, (function, path) in zip(kernels, objects) if not path.exists()}
    compile_objects(missing, progress)
    for _, path in objects:
        os.utime(path)  # last use, for pruning the cache
    prune(directory)
    return objects


def kernel_key(workload: Workload, impl: str, config: dict) -> str:
    """A digest of what decides a kernel's object code: the kernel's source, implementation and
    configuration, the workload (shapes, attributes, layout) and its constants' values (a kernel may
    build small constants such as pads or scales into its code), the target and Halide's version."""
    digest = hashlib.sha256()
    for part in (
        _toolchain(),
        registry.record_name(impl),
        json.dumps(workload.description(), sort_keys=True),
        json.dumps(config, sort_keys=True),
    ):
        digest.update(part.encode() + b"\0")
    for name in workload.node.inputs:
        if name in workload.constants:
            array = np.ascontiguousarray(workload.constants[name])
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


@cache
def _toolchain() -> str:
    """The code that defines generated kernels (their algorithms, schedules and activations), the
    target and Halide's version."""
    from woodpecker.kernels.generated.aot import aot_target

    package = Path(__file__).resolve().parent.parent
    files = sorted((package / "kernels" / "generated").glob("*.py")) + sorted((package / "ops").glob("*.py"))
    sources = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    return f"{sources} {aot_target()} halide-{importlib.metadata.version('halide')}"


def prune(directory: Path, keep: int = MAX_CACHED_OBJECTS) -> None:
    """Delete the least recently used objects beyond `keep`."""
    objects = list(directory.glob("*.o"))
    if len(objects) > keep:
        objects.sort(key=lambda p: p.stat().st_mtime)
        for path in objects[: len(objects) - keep]:
            path.unlink(missing_ok=True)
