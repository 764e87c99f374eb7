"""Graph -> Graph rewrites for inference, and the default order to run them in."""

from __future__ import annotations

from collections.abc import Callable

from woodpecker.graph.ir import Graph
from woodpecker.graph.passes.canonicalize import canonicalize
from woodpecker.graph.passes.channel_shuffle import fuse_channel_shuffle
from woodpecker.graph.passes.eliminate_common import eliminate_common
from woodpecker.graph.passes.eliminate_dead import eliminate_dead
from woodpecker.graph.passes.fold_batchnorm import fold_batchnorm
from woodpecker.graph.passes.fold_constants import fold_constants
from woodpecker.graph.passes.fold_pad import fold_pad
from woodpecker.graph.passes.fold_scale import fold_scale
from woodpecker.graph.passes.fuse_attention import fuse_attention
from woodpecker.graph.passes.fuse_depthwise import fuse_depthwise
from woodpecker.graph.passes.fuse_epilogue import fuse_epilogue
from woodpecker.graph.passes.fuse_expand import fuse_expand
from woodpecker.graph.passes.fuse_group_norm import fuse_group_norm
from woodpecker.graph.passes.fuse_input_scale import fuse_input_scale
from woodpecker.graph.passes.fuse_pool import fuse_pool
from woodpecker.graph.passes.remove_identity import remove_identity

Pass = Callable[[Graph], Graph]
DEFAULT_PASSES: tuple[Pass, ...] = (
    remove_identity,
    fold_constants,
    canonicalize,
    remove_identity,  # again: canonicalize turns no-op Pads into Identity
    fuse_channel_shuffle,
    eliminate_common,
    fold_pad,
    fold_batchnorm,
    fuse_attention,
    fuse_group_norm,
    fuse_epilogue,
    fold_scale,  # after fuse_epilogue: a linear layer's bias is then part of it
    fuse_input_scale,
    eliminate_dead,
)
# Fusions whose kernel reads and writes the blocked layout: they run after it (api.graph_variants) and
# fuse only blocked values, so a value left NCHW keeps its unfused nodes and their kernels.
BLOCKED_PASSES: tuple[Pass, ...] = (fuse_pool, fuse_depthwise)
# The other way to fuse a depthwise Conv: with the 1x1 expansion before it instead of the 1x1 after
# it. Both are candidates (api.graph_variants); whole-plan timings decide.
EXPAND_PASSES: tuple[Pass, ...] = (fuse_pool, fuse_expand)


def optimize_graph(graph: Graph, passes: tuple[Pass, ...] = DEFAULT_PASSES) -> Graph:
    for run_pass in passes:
        before = len(graph.nodes)
        graph = run_pass(graph)
        if len(graph.nodes) != before:
            name = getattr(run_pass, "__name__", None) or run_pass.func.__name__  # a pass or a partial of one
            graph.history = [*graph.history, (name, before, len(graph.nodes))]
    return graph


__all__ = [
    "BLOCKED_PASSES",
    "DEFAULT_PASSES",
    "EXPAND_PASSES",
    "canonicalize",
    "eliminate_common",
    "eliminate_dead",
    "fold_batchnorm",
    "fold_constants",
    "fold_pad",
    "fold_scale",
    "fuse_attention",
    "fuse_channel_shuffle",
    "fuse_depthwise",
    "fuse_epilogue",
    "fuse_expand",
    "fuse_group_norm",
    "fuse_input_scale",
    "fuse_pool",
    "optimize_graph",
    "remove_identity",
]
