"""Fold an inference BatchNormalization into the convolution or Gemm that feeds it.

y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta is again a convolution with scaled
weights and a new bias, so the BatchNorm node disappears.
"""

from __future__ import annotations

import numpy as np

from woodpecker.graph.ir import Graph, Node
from woodpecker.graph.passes.weights import add_constant, scale_output_channels


def fold_batchnorm(graph: Graph) -> Graph:
    out = graph.copy()
    consumers = out.consumers()
    producers = out.producers()
    replaced: dict[str, Node] = {}
    removed: set[str] = set()
    for bn in out.nodes:
        if bn.op != "BatchNormalization" or len([o for o in bn.outputs if o]) != 1:
            continue
        if not all(n in out.constants for n in bn.inputs[1:5]):
            continue
        producer = producers.get(bn.inputs[0])
        if producer is None or producer.name in replaced or producer.op not in ("Conv", "Gemm"):
            continue
        if not out.single_use(bn.inputs[0], consumers):
            continue
        if producer.inputs[1] not in out.constants or (
            len(producer.inputs) > 2 and producer.inputs[2] and producer.inputs[2] not in out.constants
        ):
            continue
        if producer.op == "Gemm" and (producer.attrs.get("transA", 0) or len(out.shape(bn.inputs[0])) != 2):
            continue
        gamma, beta, mean, var = (out.constants[n].astype(np.float64) for n in bn.inputs[1:5])
        scale = gamma / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
        weight = scale_output_channels(producer, out.constants[producer.inputs[1]].astype(np.float64), scale)
        n_out = scale.shape[0]
        has_bias = len(producer.inputs) > 2 and producer.inputs[2]
        bias = out.constants[producer.inputs[2]].astype(np.float64) if has_bias else np.zeros(n_out)
        if producer.op == "Gemm":
            alpha, beta_g = producer.attrs.get("alpha", 1.0), producer.attrs.get("beta", 1.0)
            weight, bias = weight * alpha, bias * beta_g
        bias = (bias - mean) * scale + beta
        dtype = out.constants[producer.inputs[1]].dtype
        w_name = add_constant(out, f"{producer.name}/folded_W", weight.astype(dtype))
        b_name = add_constant(out, f"{producer.name}/folded_B", bias.astype(dtype))
        attrs = dict(producer.attrs, bias_folded=True)
        if producer.op == "Gemm":
            attrs.update(alpha=1.0, beta=1.0)
        replaced[producer.name] = producer.replace(
            inputs=(producer.inputs[0], w_name, b_name), outputs=bn.outputs[:1], attrs=attrs
        )
        removed.add(bn.name)
    out.nodes = [replaced.get(n.name, n) for n in out.nodes if n.name not in removed]
    return out
