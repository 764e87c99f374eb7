"""The object cache of compiled Halide kernels and the self-contained library a saved plan links.

Saved plans then load without a JIT or a search: `Plan.load` maps the library (with its own
Halide runtime) and the pre-packed weights, and the first run is an ordinary run.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import os
from functools import cache
from pathlib import Path

import numpy as np

from woodpecker.compile import pool
from woodpecker.compile.toolchain import LibraryEntry, aot_target, cache_dir, link_library
from woodpecker.graph.ir import Graph
from woodpecker.kernels import registry
from woodpecker.kernels.workload import Workload
from woodpecker.plan.choice import Choice

MAX_CACHED_OBJECTS = 5000  # compiled kernels kept in the object cache (20-50 kB each)


def kernel_entries(graph: Graph, choices: list[Choice]) -> dict[str, str]:
    """Entry point name for every node that runs a generated kernel (node name -> entry). A kernel
    name that is not registered is no generated kernel; building the plan reports it."""
    chosen = {c.node: registry.get(c.impl) for c in choices if c.impl in registry.WHERE}
    return {
        node.name: f"wpk_node{i}"
        for i, node in enumerate(graph.nodes)
        if node.name in chosen and chosen[node.name].capabilities.compiled
    }


def compile_plan_kernels(graph: Graph, choices: list[Choice], directory: Path, progress: bool = False) -> dict:
    """Link the plan's generated kernels into a self-contained library in `directory`; returns
    node name -> entry point. Each kernel's object comes from the object cache (kernel_objects)."""
    entries = kernel_entries(graph, choices)
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
    directory = cache_dir() / "objects"
    directory.mkdir(parents=True, exist_ok=True)
    keys = [kernel_key(*kernel) for kernel in kernels]
    objects = [(f"wpk_{key[:24]}", directory / f"{key}.o") for key in keys]
    missing = {path: (*kernel, function) for kernel, (function, path) in zip(kernels, objects) if not path.exists()}
    pool.compile_objects(missing, progress)
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
    """The code that defines Halide kernels (the families, the modules they import, transitively),
    the target and Halide's version."""
    package = Path(__file__).resolve().parent.parent
    sources = hashlib.sha256(b"".join(f.read_bytes() for f in kernel_sources(package))).hexdigest()
    return f"{sources} {aot_target()} halide-{importlib.metadata.version('halide')}"


def kernel_sources(package: Path) -> list[Path]:
    """The Halide kernel families and every Woodpecker module they import, directly or not."""
    todo = sorted((package / "kernels" / "halide").glob("*.py"))
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("woodpecker"):
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                for name in names:
                    module = package.parent.joinpath(*name.split("."))
                    for candidate in (module.with_suffix(".py"), module / "__init__.py"):
                        if candidate.exists():
                            todo.append(candidate)
    return sorted(seen)


def prune(directory: Path, keep: int = MAX_CACHED_OBJECTS) -> None:
    """Delete the least recently used objects beyond `keep`."""
    objects = list(directory.glob("*.o"))
    if len(objects) > keep:
        objects.sort(key=lambda p: p.stat().st_mtime)
        for path in objects[: len(objects) - keep]:
            path.unlink(missing_ok=True)
