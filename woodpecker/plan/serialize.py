"""Graph <-> JSON-safe data, weights <-> safetensors. Plans hold no pickle.

Weights go to one safetensors file: a JSON header then each array's raw bytes at a recorded
offset, so a library can map them straight from the file (ONNX external data, see
`external_tensors`) instead of receiving a copy through Python.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from woodpecker.errors import PlanError
from woodpecker.graph.ir import Graph, Node, Subgraph, Value

if TYPE_CHECKING:
    from woodpecker.graph.onnx_export import ExternalTensor


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


CONSTANTS = "constants.safetensors"


def save_constants(graph: Graph, path: Path) -> list[str]:
    """The weights as safetensors, keys c0, c1, ... for the names in sorted order (returned)."""
    names = sorted(graph.constants)
    # (not np.ascontiguousarray, which makes a 0-d array 1-d)
    save_file({f"c{i}": np.require(graph.constants[n], requirements="C") for i, n in enumerate(names)}, str(path))
    return names


_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "I64": "int64", "I32": "int32", "I8": "int8"}
_DTYPES |= {"U8": "uint8", "BOOL": "bool"}


def external_tensors(path: Path, names: list[str]) -> dict[str, ExternalTensor]:
    """Each weight's place in a file written by `save_constants` (safetensors: an 8-byte little-endian
    header length, the JSON header with offsets relative to its end, then the data)."""
    from woodpecker.graph.onnx_export import ExternalTensor  # imports onnx, which loading a plan does not need

    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    places = {}
    for i, name in enumerate(names):
        entry = header[f"c{i}"]
        if entry["dtype"] not in _DTYPES:
            continue
        start, stop = entry["data_offsets"]
        places[name] = ExternalTensor(
            path.name, 8 + size + start, stop - start, _DTYPES[entry["dtype"]], tuple(entry["shape"])
        )
    return places


class SavedConstants(Mapping[str, np.ndarray]):
    """Weights saved by `save_constants`, read from the file each time one is asked for, never kept.

    Why: library kernels copy the weights they need into their own memory (or map them from the
    file) and compiled generated kernels carry theirs pre-packed, so holding every array here as
    well would add a copy of the model's weights to a loaded plan's peak memory (ResNet-50:
    100 MB, VGG-16: 550 MB).
    """

    def __init__(self, path: Path, names: list[str]):
        self._path = str(path)
        try:
            with safe_open(self._path, framework="numpy") as weights:  # reads the header only
                stored = set(weights.keys())
        except (SafetensorError, OSError) as exc:
            raise PlanError(f"{path}: unreadable weights ({exc})") from None
        self._keys = {name: f"c{i}" for i, name in enumerate(names)}
        missing = sorted(set(self._keys.values()) - stored)
        if missing:
            raise PlanError(f"{path}: {len(missing)} weights missing (e.g. {missing[0]})")

    def __getitem__(self, name: str) -> np.ndarray:
        # Opened per read: safetensors maps the file, and a handle kept open would keep every page
        # read so far resident beside the copy returned (VGG-16: 600 MB counted twice).
        with safe_open(self._path, framework="numpy") as weights:
            return weights.get_tensor(self._keys[name])

    def __contains__(self, name: object) -> bool:
        return name in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _encode(value: Any) -> Any:
    if isinstance(value, Subgraph):
        return {"__subgraph__": base64.b64encode(value.proto).decode()}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.name, "shape": list(value.shape)}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "__subgraph__" in value:
        return Subgraph(base64.b64decode(value["__subgraph__"], validate=True))
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict) and "__ndarray__" in value:
        return np.array(value["__ndarray__"], dtype=value["dtype"]).reshape(value["shape"])
    return value
