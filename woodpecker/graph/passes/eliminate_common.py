"""Compute a node once when another node computes the same: the same op on the same inputs with the
same attributes, constants compared by value (transformer exports rebuild the attention mask's bias
in every layer, from constants of their own)."""

from __future__ import annotations

import hashlib

import numpy as np

from woodpecker.graph.ir import Graph, Node

RANDOM_OPS = ("RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli")  # equal inputs, other outputs
SMALL = 4096  # constants up to this many elements are compared by value (larger ones by name)


def eliminate_common(graph: Graph) -> Graph:
    out = graph.copy()
    alias: dict[str, str] = {}
    seen: dict[tuple, Node] = {}
    kept = []
    for node in out.nodes:
        node = node.replace(inputs=tuple(alias.get(n, n) for n in node.inputs))
        key = _key(node, out.constants)
        first = seen.get(key) if key is not None else None
        if first is None or any(o in out.outputs for o in node.outputs):
            if key is not None:
                seen.setdefault(key, node)
            kept.append(node)
            continue
        alias.update({mine: theirs for mine, theirs in zip(node.outputs, first.outputs) if mine})
    out.nodes = kept
    return out


def _key(node: Node, constants: dict[str, np.ndarray]) -> tuple | None:
    """What makes two nodes compute the same, or None for a node this pass leaves alone (subgraphs,
    array-valued attributes, no inputs)."""
    if node.has_subgraphs or not node.inputs or node.op in RANDOM_OPS:
        return None
    if any(isinstance(v, np.ndarray) for v in node.attrs.values()):
        return None
    inputs = tuple(
        _constant_key(constants[n]) if n in constants and constants[n].size <= SMALL else n for n in node.inputs
    )
    return node.op, inputs, len(node.outputs), repr(sorted(node.attrs.items()))


def _constant_key(array: np.ndarray) -> tuple:
    """A key equal for constants of equal type, shape and bytes."""
    array = np.ascontiguousarray(array)
    return array.dtype.str, array.shape, hashlib.blake2b(array.tobytes(), digest_size=16).digest()
