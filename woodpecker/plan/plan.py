"""The inference plan: the optimized graph plus, per node, the chosen kernel and its measurements.

On disk a plan is a directory: plan.json (graph, choices, metadata), constants.safetensors
(weights; no pickle), kernels/ (the generated kernels compiled ahead of time into one shared
library, their weights pre-packed), library<i>.onnx (each graph-library segment, its weights
referred to in constants.safetensors; see plan/compiled.py) and manifest.json (BLAKE3 of each
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3
import numpy as np

from woodpecker.errors import PlanError, WoodpeckerError
from woodpecker.graph.ir import Graph
from woodpecker.plan.choice import Choice
from woodpecker.plan.serialize import CONSTANTS, SavedConstants, graph_from_data, graph_to_data, save_constants

if TYPE_CHECKING:
    from woodpecker.kernels.generated.aot import KernelLibrary

KERNELS_DIR = "kernels"
FORMAT_VERSION = 5
CHECKSUM = "blake3"  # SHA-256 took 0.55 s of VGG-16's load (1 GB/s a core); BLAKE3 hashes 4-7 GB/s
FILES = ("plan.json", CONSTANTS)
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
    ):
        self.graph = graph
        self.choices = choices
        self.meta = meta or {}
        self._executor = executor  # built lazily: loading a plan only reads files
        self.library, self.kernels = library, kernels or {}  # compiled kernels (node -> entry), once saved
        self.library_models = library_models or {}  # segment label -> ONNX file, once saved

    @property
    def input_specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {n: (self.graph.values[n].shape, self.graph.values[n].dtype) for n in self.graph.inputs}

    def executor(self, progress: bool = False):
        if self._executor is None:
            from woodpecker.runtime.executor import Executor

            self._executor = Executor(
                self.graph, self.choices, progress, self.library, self.kernels, self.library_models
            )
        return self._executor

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.executor().run(inputs)

    def save(self, directory: str | Path, progress: bool = False) -> Path:
        from woodpecker.kernels.generated.aot import compiler, compiler_available  # Halide: saving only
        from woodpecker.plan.compiled import compile_plan_kernels, save_library_models

        target = Path(directory).resolve()
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
                "graph": graph_to_data(self.graph),
                "constant_keys": names,
                "choices": [c.to_json() for c in self.choices],
                "kernels": kernels,
                "library_models": models,
                "meta": self.meta,
            }
            (staging / "plan.json").write_text(json.dumps(data, indent=1, default=_json_default))
            files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
            manifest = {"checksum": CHECKSUM, "files": {name: _digest(staging / name) for name in files}}
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
            if kernels or models:
                self._check_saved(Plan.load(staging))
            _replace_dir(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    def _check_saved(self, saved: Plan) -> None:
        """The saved plan (compiled kernels, library segments from their files) must compute what
        this (verified) plan computes."""
        from woodpecker.measure.timing import relative_error
        from woodpecker.plan.verify import random_feeds

        feeds = random_feeds(self.input_specs, seed=4321)
        expected, actual = self.run(feeds), saved.run(feeds)
        error = max(relative_error(actual[n], expected[n]) for n in expected)
        if not error <= SAVE_CHECK_TOLERANCE:
            raise PlanError(f"the saved plan differs from the verified plan (max relative error {error:.2e})")

    @staticmethod
    def load(directory: str | Path) -> Plan:
        path = Path(directory)
        if not (path / "manifest.json").is_file():
            raise PlanError(f"{path}: not a Woodpecker plan (no manifest.json)")
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PlanError(f"{path}/manifest.json: unreadable ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("checksum") != CHECKSUM:
            raise PlanError(
                f"{path}: written by another version of Woodpecker (manifest without {CHECKSUM} checksums); "
                "optimize the model again"
            )
        files = manifest.get("files")
        if not isinstance(files, dict):
            raise PlanError(f"{path}/manifest.json: malformed (no table of files and their checksums)")
        for name in sorted(set(FILES) | set(files)):
            if not (path / name).is_file():
                raise PlanError(f"{path}: missing {name}")
            if files.get(name) != _digest(path / name):
                raise PlanError(f"{path}/{name}: checksum does not match the manifest (modified or damaged)")
        data = json.loads((path / "plan.json").read_text())
        if data.get("format") != FORMAT_VERSION:
            raise PlanError(
                f"{path}: plan format {data.get('format')} is not {FORMAT_VERSION}; optimize the model again"
            )
        graph = graph_from_data(data["graph"], SavedConstants(path / CONSTANTS, data["constant_keys"]))
        library = None
        if data["kernels"]:
            from woodpecker.kernels.generated.aot import KernelLibrary  # Halide: plans with compiled kernels only

            try:
                library = KernelLibrary(path / KERNELS_DIR)
            except WoodpeckerError as exc:
                raise PlanError(str(exc)) from None
        choices = [Choice.from_json(c) for c in data["choices"]]
        models = {label: path / name for label, name in data["library_models"].items()}
        return Plan(graph, choices, data["meta"], library=library, kernels=data["kernels"], library_models=models)


def _replace_dir(staging: Path, target: Path) -> None:
    """Move `staging` to `target`; an existing plan there is replaced only after the new one is in place."""
    if target.exists() and not (target / "manifest.json").exists() and any(target.iterdir()):
        raise PlanError(f"{target}: exists and is not a Woodpecker plan; refusing to overwrite it")
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    staging.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _digest(path: Path) -> str:
    """The file's BLAKE3, hashed on every core (VGG-16's two 550 MB weight files: 0.2 s)."""
    digest = blake3.blake3(max_threads=blake3.blake3.AUTO)
    if path.stat().st_size:  # an empty file cannot be mapped
        digest.update_mmap(path)
    return digest.hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float):
        return value
    raise TypeError(f"not JSON-serializable: {type(value).__name__}")
