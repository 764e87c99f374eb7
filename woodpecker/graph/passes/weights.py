"""What passes that rewrite a layer's constant weights share: which axis holds the output
channels, scaling along it, and adding the result as a new constant."""

from __future__ import annotations

import numpy as np

from woodpecker.graph.ir import Graph, Node, Value


def scale_output_channels(layer: Node, weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """`weight` of a Conv, Gemm or MatMul with output channel i multiplied by scale[i]: the layer
    then computes its unscaled output times `scale` (before any bias)."""
    transposed = layer.op == "Conv" or (layer.op == "Gemm" and layer.attrs.get("transB", 0))
    shape = [1] * weight.ndim
    shape[0 if transposed else -1] = -1
    return weight * scale.reshape(shape)


def add_constant(graph: Graph, base: str, array: np.ndarray) -> str:
    """Add `array` as a constant named `base` (or `base1`, `base2`... if taken); returns the name."""
    name, i = base, 1
    while name in graph.values:
        name, i = f"{base}{i}", i + 1
    graph.constants[name] = array
    graph.values[name] = Value(name, array.shape, array.dtype.name)
    return name
