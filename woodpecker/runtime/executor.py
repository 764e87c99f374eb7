"""Runs a plan: every buffer allocated once, then a flat list of kernel calls.

The graph is walked once, at build time; `run` only validates inputs, copies them in and
calls the steps in order.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from woodpecker.errors import InputError, PlanError
from woodpecker.graph.ir import Graph
from woodpecker.kernels import registry
from woodpecker.kernels.workload import Workload
from woodpecker.plan.choice import Choice
from woodpecker.plan.segments import Segment, segments


@dataclass(frozen=True)
class Step:
    node: str
    kernel: Callable
    inputs: list[np.ndarray]
    outputs: list[np.ndarray]


class Executor:
    def __init__(self, graph: Graph, choices: list[Choice], progress: bool = False):
        self.graph = graph
        self.buffers = {
            name: np.empty(v.shape, v.dtype) for name, v in graph.values.items() if name not in graph.constants
        }
        self.steps: list[Step] = []
        for segment in tqdm(
            segments(graph, choices), desc="build kernels", unit="step", leave=False, disable=not progress
        ):
            self.steps.append(self._build_step(segment))

    def _build_step(self, segment: Segment) -> Step:
        first = segment.nodes[0]
        try:
            if len(segment.nodes) == 1:
                workload = Workload.of(self.graph, first)
                kernel = registry.get(segment.impl).build(workload, segment.config)
                inputs, outputs = workload.dynamic_inputs, [n for n in first.outputs if n]
            else:
                subgraph = segment.subgraph(self.graph)
                kernel = registry.get(segment.impl).build_graph(subgraph)
                inputs, outputs = subgraph.inputs, subgraph.outputs
        except Exception as exc:
            raise PlanError(f"{segment.label} ({first.op}): building {segment.impl} failed: {exc}") from None
        return Step(segment.label, kernel, [self.buffers[n] for n in inputs], [self.buffers[n] for n in outputs])

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._load_inputs(feeds)
        for step in self.steps:
            step.kernel(step.inputs, step.outputs)
        return {
            name: np.array(self.graph.constants[name] if name in self.graph.constants else self.buffers[name])
            for name in self.graph.outputs
        }

    def profile(self, feeds: dict[str, np.ndarray], runs: int = 20) -> list[tuple[str, float]]:
        """Median seconds per step inside whole-plan runs: where the time goes, node by node."""
        self._load_inputs(feeds)
        samples: list[list[float]] = [[] for _ in self.steps]
        for _ in range(runs):
            for step, times in zip(self.steps, samples):
                start = time.perf_counter()
                step.kernel(step.inputs, step.outputs)
                times.append(time.perf_counter() - start)
        return [(step.node, statistics.median(times)) for step, times in zip(self.steps, samples)]

    def _load_inputs(self, feeds: dict[str, np.ndarray]) -> None:
        missing = [n for n in self.graph.inputs if n not in feeds]
        unknown = [n for n in feeds if n not in self.graph.inputs]
        if missing or unknown:
            raise InputError(
                f"inputs do not match the plan: missing {missing}, unknown {unknown}; expected {self.describe_inputs()}"
            )
        for name in self.graph.inputs:
            array, value = np.asarray(feeds[name]), self.graph.values[name]
            if array.shape != value.shape:
                raise InputError(f"input '{name}' has shape {array.shape}, the plan expects {value.shape}")
            if array.dtype != np.dtype(value.dtype):
                raise InputError(f"input '{name}' has dtype {array.dtype}, the plan expects {value.dtype}")
            np.copyto(self.buffers[name], array)

    def describe_inputs(self) -> str:
        return ", ".join(
            f"{n}: {self.graph.values[n].dtype}{list(self.graph.values[n].shape)}" for n in self.graph.inputs
        )
