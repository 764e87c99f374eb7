"""Plan-level exploration: per-node winners are not the whole story, so time whole plans.

Per node, isolated timings miss what happens between nodes (layout conversions inside a
library, cold caches, thread-pool wake-ups). The explorer therefore builds a few complete
candidate plans, times each end to end on random input in a process of its own (like
`wpk bench` times peers; see plan/candidate_worker.py), and keeps the fastest (see TIE below):
- "per-node": every node's fastest measured kernel (library runs merged into one call);
- "generated": every node that has a correct generated kernel on its fastest one, the rest as
  in "per-node". Libraries' thread pools slow the kernels around them (ONNX Runtime's pool
  on a ResNet-18 global pool cost 1.5 ms of Halide time), which isolated timings cannot see;
- "all-<library>": every node on one graph library, i.e. that library running the whole
  optimized graph. It is what the per-node plan must beat, and it wins while it is faster;
- "all-onnxruntime-unpacked": the same without ONNX Runtime's re-packed copies of the weights
  (`session.disable_prepacking`). VGG-16's session took a quarter of the time to create and
  peaked 270 MiB lower at the same speed; once made, the copies replace the originals, so only
  the peak shows the difference (see TIE below);
- "<library>+generated": "all-<library>" but the nodes on plain (not blocked) values whose generated
  kernel was faster alone, in practice a classifier's dense layers. Such a node adds no layout
  conversion where it cuts the library's graph, and a generated kernel holds its weights once
  where OpenVINO keeps the originals beside its re-packed copy (VGG-16 batch 1: 707 vs 1124 MiB at
  the same speed). Blocked nodes stay on the library: their isolated library times include the
  library's own layout conversions, so comparing with them would move nodes that then run slower;
- "per-node-<label>", "generated-<label>": the same two on an alternative graph, without the
  pool and depthwise fusions ("unfused") or with the 1x1 expansions fused into the depthwise
  convolutions instead ("expanded"): whether a fused kernel beats the two it replaces shows only
  in whole runs (timed alone, the unfused pair's second kernel reads a warm input).
Each candidate's process also reports its memory: the peak of building and running the plan once,
which is what loading the saved plan costs when its kernels are compiled ahead of time, and what
the plan holds after that. Plans within TIE (3 %) of the fastest count as equally fast, and the
one with the lowest peak is kept (the least held memory where a JIT build's peak would mislead).
By default no plan peaks above ONNX Runtime running the same graph ("all-onnxruntime", which always
qualifies): all-OpenVINO plans were the fastest candidates 4-6 % ahead on VGG-16 (batch 1),
MobileNetV2 and SqueezeNet (batch 8) and peaked 1.2-1.3x higher (`memory="any"` keeps them).
Candidates run their generated kernels as the saved plan will: compiled ahead of time into one
library with the native runtime (through the object cache, so the kernels that candidates share,
and the saved plan, compile once); JIT-compiled only where no C compiler is available.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from woodpecker.errors import PlanError, WoodpeckerError
from woodpecker.graph.ir import Graph
from woodpecker.kernels import registry
from woodpecker.kernels.base import importable
from woodpecker.kernels.generated.aot import KernelLibrary, compiler_available
from woodpecker.kernels.workload import Workload
from woodpecker.measure.threads import configure_threads
from woodpecker.options import MEMORY_RULES, TIE
from woodpecker.plan.candidate_worker import PREFIX
from woodpecker.plan.choice import Choice
from woodpecker.plan.compiled import compile_plan_kernels
from woodpecker.plan.segments import MERGEABLE
from woodpecker.plan.serialize import CONSTANTS, graph_to_data, save_constants

CANDIDATE_TIMEOUT_S = 900.0  # building (JIT) or timing one whole plan
ROUNDS = 3  # interleaved timing rounds per candidate; the best round counts


@dataclass(frozen=True)
class PlanCandidate:
    name: str
    choices: list[Choice]
    graph: Graph | None = None
    executor: object | None = None
    median_s: float | None = None
    resident_mib: float | None = None  # memory its process holds after building and running it once
    peak_mib: float | None = None  # its process's peak until then, where that is what loading costs
    error: str | None = None
    verification: object | None = None  # plan/verify.py's Verification of the selected candidate


def candidate_choices(
    choices: list[Choice], libraries: tuple[str, ...], graph: Graph | None = None
) -> dict[str, list[Choice]]:
    """Candidate name -> choices; the "<library>+generated" plans need the `graph`."""
    candidates = {"per-node": choices}
    generated = [on_generated(c) for c in choices]
    if generated != choices:
        candidates["generated"] = generated
    nodes = {n.name: n for n in graph.nodes} if graph is not None else {}
    for library in MERGEABLE:
        if library in libraries and (library != "openvino" or importable("openvino")):
            on_library = candidates[f"all-{library}"] = [_on_library(c, library) for c in choices]
            if library == "onnxruntime":
                candidates["all-onnxruntime-unpacked"] = [replace(c, config={"prepack": False}) for c in on_library]
            hybrid = [
                g if nodes and _plain_and_faster(Workload.of(graph, nodes[g.node]), g, c) else c
                for g, c in zip(generated, on_library)
            ]
            if hybrid not in (on_library, choices, generated):
                candidates[f"{library}+generated"] = hybrid
    return candidates


def _plain_and_faster(workload: Workload, generated: Choice, on_library: Choice) -> bool:
    return (
        generated.status == "generated"
        and not workload.blocked
        and on_library.median_s is not None
        and generated.median_s < on_library.median_s
    )


def on_generated(choice: Choice) -> Choice:
    ok = [c for c in choice.candidates if c["error"] is None and registry.get(c["impl"]).kind == "generated"]
    if not ok or registry.get(choice.impl).kind == "generated":
        return choice
    best = min(ok, key=lambda c: c["median_s"])
    return replace(
        choice,
        impl=best["impl"],
        config=best["config"],
        status="generated",
        median_s=best["median_s"],
        compile_s=best["compile_s"],
    )


def _on_library(choice: Choice, library: str) -> Choice:
    measured = next((c for c in choice.candidates if c["impl"] == library and c["error"] is None), None)
    return replace(
        choice,
        impl=library,
        config={},
        status="fallback" if choice.status == "fallback" else "library",
        median_s=measured["median_s"] if measured else None,
        compile_s=measured["compile_s"] if measured else None,
    )


def select_plan(
    graph: Graph,
    choices: list[Choice],
    libraries: tuple[str, ...],
    seed: int = 0,
    progress: bool = False,
    threads: int | None = None,
    rounds: int = ROUNDS,
    alternatives: dict[str, tuple[Graph, list[Choice]]] | None = None,
    tie: float = TIE,
    memory: str = "onnxruntime",
    verify: Callable[[Graph, list[Choice], Any], Any] | None = None,
) -> tuple[PlanCandidate, list[PlanCandidate]]:
    """Time every candidate plan in its own process, the candidates' rounds interleaved; return the
    fastest (best round; with its graph and the executor built here; a tie within `tie` goes to the
    smaller memory, see `pick`) and all candidates with their times, memory or errors. `alternatives`:
    label -> (graph, choices) of other graphs of the same model, whose weights are among `graph`'s;
    they add their own-kernel candidates. `verify(graph, choices, executor)` returns a Verification:
    a candidate that fails it is passed over (its error says why) for the next in `rank` order."""
    from woodpecker.runtime.executor import Executor

    threads = configure_threads(threads)
    candidates = {name: (graph, c) for name, c in candidate_choices(choices, libraries, graph).items()}
    for label, (other, other_choices) in (alternatives or {}).items():  # library plans do not change
        candidates |= {f"{name}-{label}": (other, c) for name, c in candidate_choices(other_choices, ()).items()}
    with tempfile.TemporaryDirectory(prefix="wpk-candidates-") as tmp:
        directory = Path(tmp)
        names = save_constants(graph, directory / CONSTANTS)
        graph_files: dict[int, str] = {}
        for candidate_graph, _ in candidates.values():
            if id(candidate_graph) not in graph_files:
                graph_files[id(candidate_graph)] = f"graph{len(graph_files)}.json"
                data = graph_to_data(candidate_graph) | {"constants": names}  # the weights file's keys
                (directory / graph_files[id(candidate_graph)]).write_text(json.dumps(data))
        workers: dict[str, _Worker] = {}
        errors: dict[str, str] = {}
        ready_messages: dict[str, dict] = {}  # candidate -> its ready message (memory figures)
        kernels: dict[str, dict[str, str]] = {}  # candidate -> its compiled kernels (node -> entry)
        try:
            for name, (candidate_graph, candidate) in tqdm(
                candidates.items(), desc="build plans", unit="plan", disable=not progress
            ):
                try:
                    kernels[name] = (
                        compile_plan_kernels(candidate_graph, candidate, directory / f"{name}-kernels", progress)
                        if compiler_available()
                        else {}  # JIT-compiled by the worker
                    )
                except WoodpeckerError as exc:
                    errors[name] = str(exc)[:300]
                    continue
                plan = {"choices": [c.to_json() for c in candidate], "kernels": kernels[name]}
                (directory / f"{name}.json").write_text(json.dumps(plan))
                # Started now, waited for below: the processes import and build while the next
                # candidate compiles (each measures its own memory, so they may overlap).
                workers[name] = _Worker(directory, graph_files[id(candidate_graph)], name, threads, seed)
            for name in list(workers):
                ready = workers[name].wait_ready()
                if "error" in ready:
                    errors[name] = ready["error"]
                    workers.pop(name).close()
                else:
                    ready_messages[name] = ready
            times: dict[str, list[float]] = {name: [] for name in workers}
            for _ in tqdm(range(rounds), desc="time plans", unit="round", disable=not progress):
                for name, worker in workers.items():
                    result = worker.time()
                    if "error" in result:
                        errors[name] = result["error"]
                    else:
                        times[name].append(result["median_s"])
        finally:
            for worker in workers.values():  # all told to end first: each takes a moment to exit
                worker.finish()
            for worker in workers.values():
                worker.close()
        timed = [
            PlanCandidate(
                name,
                candidate,
                candidate_graph,
                median_s=min(times[name]) if times.get(name) and name not in errors else None,
                resident_mib=ready_messages.get(name, {}).get("resident_mib"),
                peak_mib=ready_messages.get(name, {}).get("peak_mib"),
                error=errors.get(name),
            )
            for name, (candidate_graph, candidate) in candidates.items()
        ]
        ok = [c for c in timed if c.median_s is not None]
        if not ok:
            raise WoodpeckerError(
                "no candidate plan could be built: " + "; ".join(f"{c.name}: {c.error}" for c in timed)
            )
        rejected: dict[str, str] = {}
        for best in rank(ok, tie, memory):
            library = KernelLibrary(directory / f"{best.name}-kernels") if kernels[best.name] else None
            executor = Executor(best.graph, best.choices, progress, library, kernels[best.name])
            check = verify(best.graph, best.choices, executor) if verify else None
            if check is None or check.ok:
                timed = [replace(c, error=rejected[c.name]) if c.name in rejected else c for c in timed]
                return replace(best, executor=executor, verification=check), timed
            rejected[best.name] = f"does not match ONNX Runtime: {check.describe()}"
        raise PlanError(
            "no candidate plan matches ONNX Runtime, nothing saved: "
            + "; ".join(f"{n}: {e}" for n, e in rejected.items())
        )


def rank(timed: list[PlanCandidate], tie: float = TIE, memory: str = "onnxruntime") -> list[PlanCandidate]:
    """The candidates in the order `pick` prefers them: its choice, then its choice among the rest..."""
    left, order = list(timed), []
    while left:
        order.append(pick(left, tie, memory))
        left = [c for c in left if c is not order[-1]]
    return order


def pick(timed: list[PlanCandidate], tie: float = TIE, memory: str = "onnxruntime") -> PlanCandidate:
    """The fastest candidate, or among those within `tie` of it the one with the lowest peak, or
    where not every one has a peak that loading would reach, the one holding the least memory.
    `memory="onnxruntime"`: only among the candidates that peak no higher than "all-onnxruntime"."""
    if memory not in MEMORY_RULES:
        raise ValueError(f"memory rule {memory!r} is not one of {MEMORY_RULES}")
    ceiling = next((c.peak_mib for c in timed if c.name == "all-onnxruntime"), None)
    if memory == "onnxruntime" and ceiling is not None and all(c.peak_mib is not None for c in timed):
        timed = [c for c in timed if c.peak_mib <= ceiling]
    fastest = min(timed, key=lambda c: c.median_s)
    tied = [c for c in timed if c.median_s <= fastest.median_s * (1 + tie)]
    field = "peak_mib" if all(c.peak_mib is not None for c in tied) else "resident_mib"
    tied = [c for c in tied if getattr(c, field) is not None]
    return min(tied, key=lambda c: (getattr(c, field), c.median_s)) if tied else fastest


class _Worker:
    """A candidate plan built in its own process (plan/candidate_worker.py), timed on request."""

    def __init__(self, directory: Path, graph_file: str, name: str, threads: int, seed: int):
        command = [
            sys.executable,
            "-m",
            "woodpecker.plan.candidate_worker",
            str(directory),
            graph_file,
            name,
            str(threads),
            str(seed),
        ]
        self.log = directory / f"{name}.stderr"  # a file, not a pipe: a chatty library cannot block the worker
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
            )
        self.answers: queue.Queue[str] = queue.Queue()  # a thread reads stdout; EOF arrives as ""
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            if line.startswith(PREFIX):
                self.answers.put(line[len(PREFIX) :])
        self.answers.put("")

    def wait_ready(self) -> dict:
        """{"ready": true, "resident_mib": ..., "peak_mib": ...} or {"error": ...}."""
        return self._read()

    def time(self) -> dict:
        try:
            self.process.stdin.write("time\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            return self._failure()
        return self._read()

    def _read(self) -> dict:
        """The worker's next answer (lines a library printed are skipped by the reader thread)."""
        try:
            line = self.answers.get(timeout=CANDIDATE_TIMEOUT_S)
        except queue.Empty:
            self.process.kill()
            return {"error": f"no answer within {CANDIDATE_TIMEOUT_S:.0f} s"}
        return json.loads(line) if line else self._failure()

    def _failure(self) -> dict:
        self.process.kill()
        code = self.process.wait()
        return {"error": f"exit {code}: {self.log.read_text(errors='replace').strip()[-300:]}"}

    def finish(self) -> None:
        """Tell the worker to end (its input closes), without waiting for it."""
        if self.process.poll() is None and not self.process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()

    def close(self) -> None:
        self.finish()
        if self.process.poll() is None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
