"""The inference plan: the optimized graph plus, per node, the chosen kernel and its measurements.

On disk a plan is a directory: plan.json (graph, choices, metadata), constants.safetensors
(weights; no pickle), kernels/ (the generated kernels compiled ahead of time into one shared
library, their weights pre-packed), library<i>.onnx (each graph-library segment, its weights
referred to in constants.safetensors; see compile/objects.py) and manifest.json (BLAKE3 of each
file). Loading checks the manifest and the CPU the kernels were compiled for; the only code it
runs from the plan is that library, and only once its checksum matched. Saving writes a
temporary directory first, checks that the saved plan computes what the plan in memory
computes, and renames it into place, so no half-written plan is ever left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from woodpecker.errors import PlanError, WoodpeckerError
from woodpecker.graph.ir import Graph
from woodpecker.output_files import umask
from woodpecker.plan.choice import Choice
from woodpecker.plan.manifest import (
    PLAN_FILE,
    check_manifest,
    check_output_dir,
    is_plan,
    nearest_existing,
    write_manifest,
)
from woodpecker.plan.serialize import CONSTANTS, SavedConstants, graph_from_data, graph_to_data, save_constants

if TYPE_CHECKING:
    from woodpecker.runtime.kernel_library import KernelLibrary

KERNELS_DIR = "kernels"
FORMAT_VERSION = 5
SAVE_CHECK_TOLERANCE = 1e-5  # compiled ahead of time vs JIT, libraries from files: only rounding may differ


class Plan:
    def __init__(
        self,
        graph: Graph,
        choices: list[Choice],
        meta: dict[str, Any] | None = None,
        executor=None,
        library: KernelLibrary | None = None,
        kernels: dict[str, str] | None = None,
        library_models: dict[str, Path] | None = None,
        source: Path | None = None,
    ):
        self.graph = graph
        self.choices = choices
        self.meta = meta or {}
        self._executor = executor  # built lazily: loading a plan only reads files
        self.library, self.kernels = library, kernels or {}  # compiled kernels (node -> entry), once saved
        self.library_models = library_models or {}  # segment label -> ONNX file, once saved
        self.source = source  # the directory it was loaded from

    @property
    def input_specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {n: (self.graph.values[n].shape, self.graph.values[n].dtype) for n in self.graph.inputs}

    def sample_feeds(self, seed: int) -> dict[str, np.ndarray]:
        """Random inputs the plan accepts: token ids below their embedding's rows, 0/1 masks."""
        from woodpecker.explore.verify import index_bounds, random_feeds

        return random_feeds(self.input_specs, seed, index_bounds(self.graph))

    def executor(self, progress: bool = False):
        if self._executor is None:
            from woodpecker.runtime.executor import Executor

            with self._as_plan_error("built"):
                self._executor = Executor(
                    self.graph, self.choices, progress, self.library, self.kernels, self.library_models
                )
        return self._executor

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        executor = self.executor()
        with self._as_plan_error("run"):
            return executor.run(inputs)

    @contextmanager
    def _as_plan_error(self, what: str) -> Iterator[None]:
        """A loaded plan is data from disk (its checksums only prove it unchanged since it was written):
        whatever fails while building or running it is reported as a PlanError naming the plan."""
        try:
            yield
        except WoodpeckerError:
            raise
        except Exception as exc:
            if self.source is None:
                raise
            raise PlanError(
                f"{self.source}: the plan cannot be {what} ({type(exc).__name__}: {exc}); optimize the model again"
            ) from None

    def save(self, directory: str | Path, progress: bool = False) -> Path:
        """Write the plan to `directory`: a new path, an empty directory or an existing plan, which
        is replaced only once the new one is complete and checked (manifest.check_output_dir)."""
        from woodpecker.compile.objects import compile_plan_kernels
        from woodpecker.compile.toolchain import compiler, compiler_available  # Halide: saving only
        from woodpecker.plan.library_models import save_library_models

        target = check_output_dir(directory)
        existing = nearest_existing(target.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            names = save_constants(self.graph, staging / CONSTANTS)
            models = save_library_models(self.graph, self.choices, staging / CONSTANTS, names)
            if compiler_available():
                kernels = compile_plan_kernels(self.graph, self.choices, staging / KERNELS_DIR, progress)
            else:
                kernels = {}
                message = f"no C compiler ({compiler()}): the plan's kernels will be JIT-compiled when it loads"
                warnings.warn(message, stacklevel=2)
            data = {
                "format": FORMAT_VERSION,
                "producer": "woodpecker",
                "graph": graph_to_data(self.graph),
                "constant_keys": names,
                "choices": [c.to_json() for c in self.choices],
                "kernels": kernels,
                "library_models": models,
                "meta": self.meta,
            }
            (staging / PLAN_FILE).write_text(json.dumps(data, indent=1, default=_json_default))
            write_manifest(staging)
            _readable_as_umask_allows(staging)
            if kernels or models:
                self._check_saved(Plan.load(staging))
            _replace_dir(staging, target, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            _remove_created(target.parent, existing)
            raise
        return target

    def _check_saved(self, saved: Plan) -> None:
        """The saved plan (compiled kernels, library segments from their files) must compute what
        this (verified) plan computes."""
        from woodpecker.measure.timing import relative_error

        feeds = self.sample_feeds(seed=4321)
        expected, actual = self.run(feeds), saved.run(feeds)
        error = max(relative_error(actual[n], expected[n]) for n in expected)
        if not error <= SAVE_CHECK_TOLERANCE:
            raise PlanError(f"the saved plan differs from the verified plan (max relative error {error:.2e})")

    @staticmethod
    def load(directory: str | Path) -> Plan:
        """Read a saved plan; a directory the manifest does not vouch for, or a plan.json that does not
        describe a plan, is refused with a PlanError before anything in it is run."""
        path = Path(directory)
        if not path.is_dir():
            raise PlanError(f"{path}: not a Woodpecker plan (not a directory)")
        check_manifest(path)
        try:
            data = json.loads((path / PLAN_FILE).read_text())
        except (ValueError, OSError) as exc:
            raise PlanError(f"{path}/{PLAN_FILE}: unreadable ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            found = data.get("format") if isinstance(data, dict) else None
            raise PlanError(f"{path}: plan format {found} is not {FORMAT_VERSION}; optimize the model again")
        try:
            graph = graph_from_data(data["graph"], SavedConstants(path / CONSTANTS, data["constant_keys"]))
            choices = [Choice.from_json(c) for c in data["choices"]]
            models = {label: _top_level_file(path, name) for label, name in data["library_models"].items()}
            kernels, meta = data["kernels"], data["meta"]
            check_plan_data(graph, choices, kernels, meta)
        except PlanError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PlanError(f"{path}/{PLAN_FILE}: malformed ({type(exc).__name__}: {exc})") from None
        library = None
        if kernels:
            from woodpecker.runtime.kernel_library import KernelLibrary  # Halide: plans with compiled kernels only

            try:
                library = KernelLibrary(path / KERNELS_DIR)
            except WoodpeckerError as exc:
                raise PlanError(str(exc)) from None
            except Exception as exc:  # a kernels.json, .npz or .so that is not what it should be
                message = f"{type(exc).__name__}: {exc}"
                raise PlanError(f"{path}/{KERNELS_DIR}: unreadable kernel library ({message})") from None
        return Plan(graph, choices, meta, library=library, kernels=kernels, library_models=models, source=path)


def check_plan_data(graph: Graph, choices: list[Choice], kernels: Any, meta: Any) -> None:
    """What a plan.json must hold beyond its syntax (a ValueError says what is wrong): values with
    shapes and dtypes, nodes that read values computed before them, one registered implementation
    per node, compiled kernels of the graph's nodes."""
    from woodpecker.kernels import registry

    for value in graph.values.values():
        if not all(isinstance(d, int) and d >= 0 for d in value.shape) or not isinstance(value.block, int):
            raise ValueError(f"value '{value.name}' has shape {value.shape}, block {value.block}")
        np.dtype(value.dtype)
        if value.block and (len(value.shape) != 4 or value.block < 0 or value.shape[1] % value.block):
            raise ValueError(f"value '{value.name}' of shape {value.shape} cannot be blocked by {value.block}")
    available = set(graph.inputs) | set(graph.constants)  # values a node may read: computed before it
    for node in graph.nodes:
        unknown = [n for n in node.inputs if n and n not in available]
        unknown += [n for n in node.outputs if n not in graph.values]
        if not isinstance(node.attrs, dict) or unknown:
            raise ValueError(f"node '{node.name}' refers to values no earlier node computes: {unknown}")
        available.update(node.outputs)
    for name in (*graph.inputs, *graph.outputs):
        if name not in graph.values or name not in available:
            raise ValueError(f"graph input or output '{name}' has no value")
    if sorted(c.node for c in choices) != sorted(n.name for n in graph.nodes):
        raise ValueError("the choices do not name each node once")
    for choice in choices:
        if choice.impl not in registry.WHERE or not isinstance(choice.config, dict):
            raise ValueError(f"node '{choice.node}' runs on unknown implementation '{choice.impl}'")
    if not isinstance(kernels, dict) or not set(kernels) <= {n.name for n in graph.nodes}:
        raise ValueError("the compiled kernels name nodes the graph does not have")
    if not isinstance(meta, dict):
        raise ValueError("meta is not a table")


def _top_level_file(directory: Path, name: Any) -> Path:
    """A file directly inside the plan directory (the manifest has vouched for every file there)."""
    if not isinstance(name, str) or "/" in name or name in ("", ".", "..") or not (directory / name).is_file():
        raise ValueError(f"library model '{name}' is not a file of the plan")
    return directory / name


def _replace_dir(staging: Path, target: Path, given: str | Path) -> None:
    """Move `staging` to `target`. What is there now is checked again (it may have changed while the
    plan was optimized): an empty directory is removed, a plan replaced once the new one is in place."""
    check_output_dir(given)
    old = None
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    elif target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    staging.rename(target)
    if old is not None and is_plan(old):
        shutil.rmtree(old, ignore_errors=True)


def _readable_as_umask_allows(directory: Path) -> None:
    """Modes as the user's umask makes them (mkdtemp makes 700, safetensors 600: a serving account
    could not read the plan)."""
    mask = umask()
    for path in [directory, *directory.rglob("*")]:
        executable = path.is_dir() or path.stat().st_mode & 0o111
        path.chmod((0o777 if executable else 0o666) & ~mask)


def _remove_created(directory: Path, existing: Path) -> None:
    """Remove the empty directories between `existing` and `directory` that saving created."""
    while directory != existing and directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
        directory = directory.parent


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float):
        return value
    raise TypeError(f"not JSON-serializable: {type(value).__name__}")
