"""Plan-level exploration: per-node winners are not the whole story, so time whole plans.

Candidate plans (per-node winners, every node on its own kernel, each graph library running the
whole graph, and mixes) are built and timed end to end, each in a process of its own, their
rounds interleaved, the finalists again until their order holds; the fastest is kept, a tie within
TIE going to the lowest peak memory, within the user's memory limit or rule (`max_mib`, `memory`).
Why each candidate exists and what was measured: docs/architecture.md, "Selecting the whole plan".
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from woodpecker.compile.objects import compile_plan_kernels
from woodpecker.compile.toolchain import compiler_available
from woodpecker.errors import PlanError, WoodpeckerError
from woodpecker.graph.ir import Graph
from woodpecker.kernels import registry
from woodpecker.kernels.workload import Workload
from woodpecker.measure.protocol import WorkerProcess
from woodpecker.measure.rounds import interleaved_rounds
from woodpecker.measure.threads import configure_threads
from woodpecker.options import MEMORY_RULES, TIE
from woodpecker.plan.choice import Choice
from woodpecker.plan.serialize import CONSTANTS, graph_to_data, save_constants
from woodpecker.runtime.kernel_library import KernelLibrary

CANDIDATE_TIMEOUT_S = 900.0  # building (JIT) or timing one whole plan
FINALIST = 0.10  # candidates within this fraction of the fastest are timed again
EXTRA_ROUNDS = 3  # at most this many more rounds for them
CANDIDATE_WORKER = "woodpecker.explore.candidate_worker"
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
    verification: object | None = None  # explore/verify.py's Verification of the selected candidate


def candidate_choices(
    choices: list[Choice], libraries: tuple[str, ...], graph: Graph | None = None
) -> dict[str, list[Choice]]:
    """Candidate name -> choices; the "<library>+generated" plans need the `graph`."""
    candidates = {"per-node": choices}
    generated = [on_generated(c) for c in choices]
    if generated != choices:
        candidates["generated"] = generated
    nodes = {n.name: n for n in graph.nodes} if graph is not None else {}
    for library in registry.graph_libraries():
        if library in libraries:
            on_library = candidates[f"all-{library}"] = [_on_library(c, library) for c in choices]
            for suffix, config in registry.capabilities(library).plan_variants.items():
                candidates[f"all-{library}-{suffix}"] = [replace(c, config=config) for c in on_library]
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
    ok = [c for c in choice.candidates if c["error"] is None and registry.capabilities(c["impl"]).compiled]
    if not ok or registry.capabilities(choice.impl).compiled:
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
    memory: str = MEMORY_RULES[0],
    verify: Callable[[Graph, list[Choice], Any], Any] | None = None,
    max_mib: float | None = None,
) -> tuple[PlanCandidate, list[PlanCandidate]]:
    """Time every candidate plan in its own process, the candidates' rounds interleaved; return the
    fastest (best round; with its graph and the executor built here; a tie within `tie` goes to the
    smaller memory, see `pick`) and all candidates with their times, memory or errors. `alternatives`:
    label -> (graph, choices) of other graphs of the same model, whose weights are among `graph`'s;
    they add their own-kernel candidates. `verify(graph, choices, executor)` returns a Verification:
    a candidate that fails it is passed over (its error says why) for the next in `rank` order.
    Candidates within FINALIST of the fastest are timed again, a round at a time (at most
    EXTRA_ROUNDS), until the two fastest keep their order: a noisy round cannot decide alone."""
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
        workers: dict[str, WorkerProcess] = {}
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
                workers[name] = WorkerProcess(CANDIDATE_WORKER, directory / f"{name}.stderr")
                request = {"directory": str(directory), "graph_file": graph_files[id(candidate_graph)]}
                workers[name].send(request | {"name": name, "threads": threads, "seed": seed})
            for name in list(workers):
                ready = workers[name].read(CANDIDATE_TIMEOUT_S)
                if "error" in ready:
                    errors[name] = ready["error"] or "failed without a message"
                    workers.pop(name).close()
                else:
                    ready_messages[name] = ready

            def time_one(name: str) -> dict:
                return workers[name].ask({"time": True}, CANDIDATE_TIMEOUT_S)

            with tqdm(total=rounds * len(workers), desc="time plans", unit="run", disable=not progress) as bar:
                answers = interleaved_rounds(list(workers), rounds, time_one, bar.update)
            times: dict[str, list[float]] = {name: [] for name in workers}
            _collect(answers, times, errors)
            leaders = _leaders(times, errors)
            for _ in range(EXTRA_ROUNDS if len(_finalists(times, errors)) > 1 else 0):
                _collect(interleaved_rounds(_finalists(times, errors), 1, time_one), times, errors)
                leaders, before = _leaders(times, errors), leaders
                if leaders == before:
                    break
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
        for best in rank(ok, tie, memory, max_mib):
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


def _collect(answers: list[dict[str, dict]], times: dict[str, list[float]], errors: dict[str, str]) -> None:
    for name, result in ((n, r) for one in answers for n, r in one.items()):
        if "error" in result:
            errors[name] = result["error"] or "failed without a message"
        else:
            times[name].append(result["median_s"])


def _finalists(times: dict[str, list[float]], errors: dict[str, str]) -> list[str]:
    best = {name: min(t) for name, t in times.items() if t and name not in errors}
    fastest = min(best.values(), default=0.0)
    return [name for name, t in best.items() if t <= fastest * (1 + FINALIST)]


def _leaders(times: dict[str, list[float]], errors: dict[str, str]) -> list[str]:
    """The two fastest candidates, in order."""
    finalists = _finalists(times, errors)
    return sorted(finalists, key=lambda name: min(times[name]))[:2]


def rank(
    timed: list[PlanCandidate], tie: float = TIE, memory: str = MEMORY_RULES[0], max_mib: float | None = None
) -> list[PlanCandidate]:
    """The candidates in the order `pick` prefers them: its choice, then its choice among the rest..."""
    left, order = list(timed), []
    while left:
        order.append(pick(left, tie, memory, max_mib))
        left = [c for c in left if c is not order[-1]]
    return order


def pick(
    timed: list[PlanCandidate], tie: float = TIE, memory: str = MEMORY_RULES[0], max_mib: float | None = None
) -> PlanCandidate:
    """The fastest candidate, or among those within `tie` of it the one with the lowest peak, or
    where not every one has a peak that loading would reach, the one holding the least memory.
    `max_mib`: only among the candidates whose memory is within it (if any is).
    `memory="onnxruntime"`: only among the candidates that peak no higher than "all-onnxruntime"."""
    if memory not in MEMORY_RULES:
        raise ValueError(f"memory rule {memory!r} is not one of {MEMORY_RULES}")
    if max_mib is not None:
        timed = [c for c in timed if (c.peak_mib or c.resident_mib or 0.0) <= max_mib] or timed
    ceiling = next((c.peak_mib for c in timed if c.name == f"all-{registry.FALLBACK}"), None)
    if memory == registry.FALLBACK and ceiling is not None and all(c.peak_mib is not None for c in timed):
        timed = [c for c in timed if c.peak_mib <= ceiling]
    fastest = min(timed, key=lambda c: c.median_s)
    tied = [c for c in timed if c.median_s <= fastest.median_s * (1 + tie)]
    field = "peak_mib" if all(c.peak_mib is not None for c in tied) else "resident_mib"
    tied = [c for c in tied if getattr(c, field) is not None]
    return min(tied, key=lambda c: (getattr(c, field), c.median_s)) if tied else fastest
