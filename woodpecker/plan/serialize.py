"""Graph <-> JSON-safe data. Plans hold no pickle: arrays go to .npz (loaded with allow_pickle=False)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

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


def graph_from_data(data: dict[str, Any], constants: dict[str, np.ndarray]) -> Graph:
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


def load_constants(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[f"c{i}"] for i, name in enumerate(names)}


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
