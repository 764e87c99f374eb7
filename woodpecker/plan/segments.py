"""Group consecutive nodes that the plan runs with the same graph library into one call.

A library such as ONNX Runtime or OpenVINO runs a sub-graph far better than the same nodes
one by one: it keeps its own blocked layout between them and pays its call overhead once.
The node list is topological, so a contiguous run only reads values produced before it.
"""

from __future__ import annotations

from dataclasses import dataclass

from woodpecker.graph.ir import Graph, Node
from woodpecker.kernels import registry
from woodpecker.plan.choice import Choice


@dataclass(frozen=True)
class Segment:
    impl: str
    nodes: tuple[Node, ...]
    config: dict

    @property
    def label(self) -> str:
        """The node's name, or `impl[first..last]` for a merged run."""
        if len(self.nodes) == 1:
            return self.nodes[0].name
        return f"{self.impl}[{self.nodes[0].name}..{self.nodes[-1].name}]"

    def subgraph(self, graph: Graph) -> Graph:
        """The segment as a graph: inputs read from outside it, outputs used after it (or by the model)."""
        produced = {o for n in self.nodes for o in n.outputs if o}
        inputs: list[str] = []
        for node in self.nodes:
            for name in node.inputs:
                if name and name not in produced and name not in graph.constants and name not in inputs:
                    inputs.append(name)
        inside = {n.name for n in self.nodes}
        used_later = {name for n in graph.nodes if n.name not in inside for name in n.inputs}
        outputs = [o for n in self.nodes for o in n.outputs if o and (o in used_later or o in graph.outputs)]
        names = set(inputs) | produced | {i for n in self.nodes for i in n.inputs if i}
        return Graph(
            list(self.nodes),
            {k: v for k, v in graph.values.items() if k in names},
            inputs,
            outputs,
            graph.constants,  # shared, not copied: a saved plan reads its weights only when exported
            graph.opset,
            f"{self.impl}-segment",
        )


def segments(graph: Graph, choices: list[Choice]) -> list[Segment]:
    by_node = {c.node: c for c in choices}
    groups: list[Segment] = []
    for node in graph.nodes:
        choice = by_node[node.name]
        last = groups[-1] if groups else None
        if last is not None and last.impl == choice.impl and registry.capabilities(choice.impl).runs_subgraphs:
            groups[-1] = Segment(last.impl, (*last.nodes, node), last.config)
        else:
            groups.append(Segment(choice.impl, (node,), choice.config))
    return groups
