"""Graph <-> JSON-safe data. Plans hold no pickle: arrays go to .npz (loaded with allow_pickle=False)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from woodpecker.errors import PlanError
from woodpecker.graph.ir import Graph, Node, Value


def graph_to_data(graph: Graph) -> dict[str, Any]:
    return {
        "name": graph.name,
        "opset": graph.opset,
        "inputs": graph.inputs,
        "outputs": graph.outputs,
        "values": {
            n: {"shape": list(v.shape), "dtype": v.dtype, **({"block": v.block} if v.block else {})}
            for n, v in graph.values.items()
        },
        "nodes": [
            {
                "name": n.name,
                "op": n.op,
                "inputs": list(n.inputs),
                "outputs": list(n.outputs),
                "attrs": {k: _encode(v) for k, v in n.attrs.items()},
            }
            for n in graph.nodes
        ],
        "constants": sorted(graph.constants),
    }


def graph_from_data(data: dict[str, Any], constants: Mapping[str, np.ndarray]) -> Graph:
    values = {n: Value(n, tuple(v["shape"]), v["dtype"], v.get("block", 0)) for n, v in data["values"].items()}
    nodes = [
        Node(
            n["name"], n["op"], tuple(n["inputs"]), tuple(n["outputs"]), {k: _decode(v) for k, v in n["attrs"].items()}
        )
        for n in data["nodes"]
    ]
    return Graph(nodes, values, list(data["inputs"]), list(data["outputs"]), constants, data["opset"], data["name"])


def save_constants(graph: Graph, path: Path) -> list[str]:
    """The weights as .npz, keys c0, c1, ... for the names in sorted order (returned)."""
    names = sorted(graph.constants)
    np.savez(path, **{f"c{i}": np.asarray(graph.constants[n]) for i, n in enumerate(names)})
    return names


class SavedConstants(Mapping[str, np.ndarray]):
    """Weights saved by `save_constants`, read from the file each time one is asked for, never kept.

    Why: library kernels copy the weights they need into their own memory and compiled generated
    kernels carry theirs pre-packed, so holding every array here as well would add a copy of the
    model's weights to a loaded plan's peak memory (ResNet-50: 100 MB, VGG-16: 550 MB).
    """

    def __init__(self, path: Path, names: list[str]):
        self._npz = np.load(path, allow_pickle=False)  # reads the zip directory only
        self._keys = {name: f"c{i}" for i, name in enumerate(names)}
        missing = [key for key in self._keys.values() if key not in self._npz.files]
        if missing:
            raise PlanError(f"{path}: {len(missing)} weights missing (e.g. {missing[0]})")

    def __getitem__(self, name: str) -> np.ndarray:
        return self._npz[self._keys[name]]

    def __contains__(self, name: object) -> bool:
        return name in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _encode(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.name, "shape": list(value.shape)}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "__ndarray__" in value:
        return np.array(value["__ndarray__"], dtype=value["dtype"]).reshape(value["shape"])
    return value
