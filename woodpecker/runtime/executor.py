"""Runs a plan: buffers carved once from one arena (runtime/memory.py), then a flat list of kernel calls.

The graph is walked once, at build time; `run` only validates inputs, copies them in and
calls the steps in order. Consecutive kernels compiled ahead of time into the plan's library
run as one call into its native runtime (`NativeRun`), which walks them in C: called one by
one from Python through ctypes, MobileNetV2's 54 kernels cost about 24 us each in argument
marshalling, a sixth of the run.
"""

from __future__ import annotations

import ctypes
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from woodpecker.errors import InputError, PlanError
from woodpecker.graph.ir import Graph
from woodpecker.kernels import registry
from woodpecker.kernels.workload import Workload
from woodpecker.plan.choice import Choice
from woodpecker.plan.segments import Segment, segments
from woodpecker.runtime.memory import Lifetime, MemoryPlan, aligned_empty, check_memory, plan_memory

if TYPE_CHECKING:  # Halide is imported only for plans with compiled kernels
    from woodpecker.runtime.kernel_library import KernelLibrary


@dataclass(frozen=True)
class Step:
    node: str
    impl: str
    kernel: Callable
    inputs: list[np.ndarray]
    outputs: list[np.ndarray]
    input_names: list[str]
    output_names: list[str]
    members: tuple[str, ...] = ()  # the graph nodes the step runs (one, or a library segment's)


class Executor:
    """`library` and `kernels` (node -> entry point) supply kernels compiled ahead of time;
    generated kernels missing from them are JIT-compiled. `library_models` (segment label -> ONNX
    file) are a saved plan's graph-library segments, read by the library from disk."""

    def __init__(
        self,
        graph: Graph,
        choices: list[Choice],
        progress: bool = False,
        library: KernelLibrary | None = None,
        kernels: dict[str, str] | None = None,
        library_models: dict[str, Path] | None = None,
    ):
        self.graph = graph
        self.library, self.kernels = library, kernels or {}
        self.library_models = library_models or {}
        self.subgraphs: dict[str, Graph] = {}  # a graph-library segment's nodes as a graph, by label
        parts = [(segment, *self._io(segment)) for segment in segments(graph, choices)]
        self.concat_slices = _concats_in_place(graph, parts)
        # A graph library that runs beside no other pool may keep its workers spinning between runs.
        self.alone = sum(_uses_a_pool(segment.impl) for segment, _, _ in parts) == 1
        self.memory, slots = self._plan_memory(parts)
        check_memory(self.memory.arena_bytes, "the plan's activations")
        self.arena = aligned_empty(self.memory.arena_bytes)
        self.buffers = {
            name: self._view(name, self.memory.offsets[root])
            for name, root in slots.items()
            if name not in self.concat_slices
        }
        for name, (concat, start, stop) in self.concat_slices.items():
            self.buffers[name] = self.buffers[concat][:, start:stop]
        self.steps: list[Step] = []
        if progress:
            from tqdm import tqdm  # here: its import (30 ms) is a tenth of loading a small plan

            parts = tqdm(parts, desc="build kernels", unit="step", leave=False)
        for segment, inputs, outputs in parts:
            if not (_is_view(segment) or inputs and inputs[0] in self.concat_slices):
                self.steps.append(self._build_step(segment, inputs, outputs))
        self.calls = _calls(self.steps, self.library)

    def _io(self, segment: Segment) -> tuple[list[str], list[str]]:
        """The run-time values a segment reads and writes."""
        if len(segment.nodes) == 1 and not registry.capabilities(segment.impl).runs_subgraphs:
            node = segment.nodes[0]  # (not Workload.of: that would read the node's weights from the plan's file)
            return [n for n in node.inputs if n and n not in self.graph.constants], [n for n in node.outputs if n]
        subgraph = self.subgraphs[segment.label] = segment.subgraph(self.graph)
        return subgraph.inputs, subgraph.outputs

    def _plan_memory(self, parts: list) -> tuple[MemoryPlan, dict[str, str]]:
        """Lifetimes of the values steps exchange; views and in-place outputs share their input's slot.

        Returns the memory plan and, for every value, the value whose slot it uses."""
        first = {name: -1 for name in self.graph.inputs}
        last = {name: len(parts) for name in self.graph.outputs}
        slot: dict[str, str] = {name: name for name in self.graph.inputs}
        for i, (_, inputs, _) in enumerate(parts):
            for name in inputs:
                last[name] = max(last.get(name, i), i)

        def group_last(root: str) -> int:
            return max(last.get(n, first[n]) for n in slot if slot[n] == root)

        def group_first(root: str) -> int:
            return min(first[n] for n in slot if slot[n] == root)

        for i, (segment, inputs, outputs) in enumerate(parts):
            for name in outputs:
                slot[name], first[name] = name, i
            if inputs and inputs[0] in self.concat_slices:  # its inputs were written in place: one slot
                for name in inputs:
                    slot[name] = outputs[0]
            elif _is_view(segment):
                slot[outputs[0]] = slot[inputs[0]]
            elif registry.capabilities(segment.impl).in_place and len(outputs) == 1:
                out = outputs[0]
                for name in inputs:  # overwrite an input that no step (nor any view of it) reads later
                    root = slot[name]
                    if (
                        group_last(root) == i
                        and root not in self.graph.inputs
                        and self._nbytes(root) == self._nbytes(out)
                        and self.graph.values[root].dtype == self.graph.values[out].dtype
                    ):
                        slot[out] = root
                        break
        lifetimes = [
            Lifetime(root, self._nbytes(root), group_first(root), group_last(root)) for root in set(slot.values())
        ]
        return plan_memory(lifetimes), slot

    def _nbytes(self, name: str) -> int:
        value = self.graph.values[name]
        return int(np.prod(value.shape, dtype=np.int64)) * np.dtype(value.dtype).itemsize

    def _view(self, name: str, offset: int) -> np.ndarray:
        value = self.graph.values[name]
        return self.arena[offset : offset + self._nbytes(name)].view(value.dtype).reshape(value.stored_shape)

    def _build_step(self, segment: Segment, inputs: list[str], outputs: list[str]) -> Step:
        first = segment.nodes[0]
        try:
            if registry.capabilities(segment.impl).runs_subgraphs:  # a graph library runs the segment as one model
                model_file = self.library_models.get(segment.label)
                library = registry.get(segment.impl)
                subgraph = self.subgraphs[segment.label]
                kernel = library.build_graph(subgraph, model_file, alone=self.alone, config=segment.config)
            elif self.library is not None and first.name in self.kernels:
                kernel = self.library.kernel(self.kernels[first.name])
            else:
                kernel = registry.get(segment.impl).build(Workload.of(self.graph, first), segment.config)
        except Exception as exc:
            raise PlanError(f"{segment.label} ({first.op}): building {segment.impl} failed: {exc}") from None
        arrays = [self.buffers[n] for n in inputs], [self.buffers[n] for n in outputs]
        members = tuple(n.name for n in segment.nodes)
        return Step(segment.label, segment.impl, kernel, *arrays, inputs, outputs, members)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._load_inputs(feeds)
        for call in self.calls:
            call()
        return {
            name: np.array(self.graph.constants[name] if name in self.graph.constants else self.buffers[name])
            for name in self.graph.outputs
        }

    def profile(self, feeds: dict[str, np.ndarray], runs: int = 20) -> list[tuple[str, float, float | None]]:
        """Per step, median seconds inside whole-plan runs, and called again at once after its call
        in each run (inputs and weights left in cache by the call before; None for a step that writes
        over its input, whose values a repeat would change). Measured in the same minutes, the two show what
        running in sequence costs a step, which timings taken minutes apart cannot tell from noise."""
        calls = _calls(self.steps, self.library, one_by_one=True)
        in_run: list[list[float]] = [[] for _ in self.steps]
        again: list[list[float]] = [[] for _ in self.steps]
        repeatable = [not _writes_over_input(step) for step in self.steps]
        for _ in range(runs):
            self._load_inputs(feeds)  # the arena may reuse the input's memory once it is read
            for call, times, repeats, ok in zip(calls, in_run, again, repeatable):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
                if ok:  # at once: later steps may reuse this step's input memory (token ids too)
                    start = time.perf_counter()
                    call()
                    repeats.append(time.perf_counter() - start)
        return [
            (step.node, statistics.median(a), statistics.median(b) if b else None)
            for step, a, b in zip(self.steps, in_run, again)
        ]

    def _load_inputs(self, feeds: dict[str, np.ndarray]) -> None:
        if not isinstance(feeds, Mapping):
            raise InputError(f"inputs go in a dict of name -> array; expected {self.describe_inputs()}")
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


class NativeRun:
    """Consecutive steps on the plan's compiled kernels, called one after another by the library's
    `wpk_run` without returning to Python. `pool_sleep` lets the library's pool workers sleep
    afterwards, when another library's threads are about to take the cores."""

    def __init__(self, library: KernelLibrary, steps: list[Step], pool_sleep: bool):
        self.library, self.nodes, self.pool_sleep = library, [s.node for s in steps], pool_sleep
        self._bound = [s.kernel.bind(s.inputs, s.outputs) for s in steps]
        self._functions = (ctypes.c_void_p * len(steps))(*[b.function for b in self._bound])
        self._arguments = (ctypes.c_void_p * len(steps))(*[ctypes.addressof(b.arguments) for b in self._bound])
        self._run = library.native_runner()
        self._failed = ctypes.c_int(0)

    def __call__(self) -> None:
        code = self._run(len(self.nodes), self._functions, self._arguments, ctypes.byref(self._failed))
        if self.pool_sleep:
            self.library.pool_sleep()
        if code != 0:
            raise PlanError(f"{self.nodes[self._failed.value]}: {self.library.error(code)}")


def _calls(steps: list[Step], library: KernelLibrary | None, one_by_one: bool = False) -> list[Callable[[], None]]:
    """The steps as argument-free calls; runs of compiled kernels become one NativeRun each, or
    with `one_by_one` (to time steps apart) a NativeRun per step: a few microseconds per call,
    where one from Python through ctypes costs 20-40, as much as one of MobileNetV2's kernels."""
    calls: list[Callable[[], None]] = []

    def in_library(step: Step) -> bool:  # an AotKernel of this library
        return library is not None and getattr(step.kernel, "library", None) is library

    for compiled, group in groupby(steps, key=in_library):
        group = list(group)
        if compiled:
            runs = [[step] for step in group] if one_by_one else [group]
            calls += [NativeRun(library, run, pool_sleep=False) for run in runs]
            continue
        if calls and _has_own_threads(group[0]):  # the native pool's workers must not spin beside it
            calls[-1].pool_sleep = True
        calls += [partial(s.kernel, s.inputs, s.outputs) for s in group]
    return calls


def _has_own_threads(step: Step) -> bool:
    return registry.capabilities(step.impl).owns_threads


def _uses_a_pool(impl: str) -> bool:
    """Whether `impl` computes on a thread pool: its own, or the native pool of compiled kernels."""
    capabilities = registry.capabilities(impl)
    return capabilities.owns_threads or capabilities.compiled


def _writes_over_input(step: Step) -> bool:
    """Whether the step's output shares memory with one of its inputs (an in-place kernel)."""
    return any(np.may_share_memory(out, inp) for out in step.outputs for inp in step.inputs)


def _is_view(segment: Segment) -> bool:
    """A reshape-like op run as a view: the same bytes under another shape, so no step at all."""
    return len(segment.nodes) == 1 and segment.nodes[0].op in registry.capabilities(segment.impl).view_ops


def _concats_in_place(graph: Graph, parts: list) -> dict[str, tuple[str, int, int]]:
    """Channel Concats whose producers can write straight into the output: input -> (output, start, stop).

    Axis 1 of the stored array is the channel (or channel-block) axis in both layouts, so each
    input is a slice of the output; the Concat then needs no step and no copy. Only inputs that
    a single-node step writes, that nothing else reads, and that are no graph input or output
    qualify (their bytes are the output's); with a batch above one a slice is strided, which
    only kernels declaring `strided_outputs` are built for. A Concat qualifies with all its inputs or not at all.
    """
    strided = {  # the values a single-node step writes (not a view, not a Concat) -> whether it may write a slice
        out: registry.capabilities(segment.impl).strided_outputs
        for segment, _, outputs in parts
        if len(segment.nodes) == 1 and not _is_view(segment) and segment.nodes[0].op != "Concat"
        for out in outputs
    }
    readers = graph.consumers()
    ends = set(graph.inputs) | set(graph.outputs)
    slices: dict[str, tuple[str, int, int]] = {}
    for segment, inputs, outputs in parts:
        node = segment.nodes[0]
        if not (
            len(segment.nodes) == 1 and node.op == "Concat" and registry.capabilities(segment.impl).concat_in_place
        ):
            continue
        out = graph.values[outputs[0]]
        contiguous = out.shape[0] == 1
        if not (
            len(out.shape) == 4
            and node.attrs["axis"] % 4 == 1
            and len(set(inputs)) == len(inputs) == len(node.inputs)
            and all(
                name in strided
                and len(readers[name]) == 1
                and name not in ends
                and name not in slices
                and (contiguous or strided[name])
                for name in inputs
            )
        ):
            continue
        start = 0
        for name in inputs:
            stop = start + graph.values[name].stored_shape[1]
            slices[name] = (outputs[0], start, stop)
            start = stop
    return slices
