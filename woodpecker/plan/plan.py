"""The inference plan: the optimized graph plus, per node, the chosen kernel and its measurements.

On disk a plan is a directory: plan.json (graph, choices, metadata), constants.npz (weights,
read with allow_pickle=False) and manifest.json (SHA-256 of each file). Loading checks the
manifest and never executes anything from the plan's files. Saving writes a temporary
directory first and renames it into place, so no half-written plan is ever left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from woodpecker.errors import PlanError
from woodpecker.graph.ir import Graph
from woodpecker.plan.choice import Choice
from woodpecker.plan.serialize import graph_from_data, graph_to_data

FORMAT_VERSION = 1
FILES = ("plan.json", "constants.npz")


class Plan:
    def __init__(self, graph: Graph, choices: list[Choice], meta: dict[str, Any] | None = None, executor=None):
        self.graph = graph
        self.choices = choices
        self.meta = meta or {}
        self._executor = executor  # built lazily: loading a plan only reads files

    @property
    def input_specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {n: (self.graph.values[n].shape, self.graph.values[n].dtype) for n in self.graph.inputs}

    def executor(self, progress: bool = False):
        if self._executor is None:
            from woodpecker.runtime.executor import Executor

            self._executor = Executor(self.graph, self.choices, progress)
        return self._executor

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.executor().run(inputs)

    def save(self, directory: str | Path) -> Path:
        target = Path(directory).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            names = sorted(self.graph.constants)
            np.savez(
                staging / "constants.npz", **{f"c{i}": np.asarray(self.graph.constants[n]) for i, n in enumerate(names)}
            )
            data = {
                "format": FORMAT_VERSION,
                "graph": graph_to_data(self.graph),
                "constant_keys": names,
                "choices": [c.to_json() for c in self.choices],
                "meta": self.meta,
            }
            (staging / "plan.json").write_text(json.dumps(data, indent=1, default=_json_default))
            manifest = {name: _sha256(staging / name) for name in FILES}
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
            _replace_dir(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    @staticmethod
    def load(directory: str | Path) -> Plan:
        path = Path(directory)
        if not (path / "manifest.json").is_file():
            raise PlanError(f"{path}: not a Woodpecker plan (no manifest.json)")
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PlanError(f"{path}/manifest.json: unreadable ({exc})") from None
        for name in FILES:
            if not (path / name).is_file():
                raise PlanError(f"{path}: missing {name}")
            if manifest.get(name) != _sha256(path / name):
                raise PlanError(f"{path}/{name}: checksum does not match the manifest (modified or damaged)")
        data = json.loads((path / "plan.json").read_text())
        if data.get("format") != FORMAT_VERSION:
            raise PlanError(f"{path}: plan format {data.get('format')} is not {FORMAT_VERSION}")
        with np.load(path / "constants.npz", allow_pickle=False) as npz:
            constants = {name: npz[f"c{i}"] for i, name in enumerate(data["constant_keys"])}
        graph = graph_from_data(data["graph"], constants)
        return Plan(graph, [Choice.from_json(c) for c in data["choices"]], data["meta"])


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float):
        return value
    raise TypeError(f"not JSON-serializable: {type(value).__name__}")
