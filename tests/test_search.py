"""Spaces and strategies on synthetic cost functions with a known optimum (no kernels involved)."""

import math
import random
import time

import pytest

from woodpecker.search.genetic import GeneticSearch
from woodpecker.search.space import ConfigSpace, Knob
from woodpecker.search.strategies import STRATEGIES

SPACE = ConfigSpace(
    (Knob("a", tuple(range(12))), Knob("b", tuple(range(12))), Knob("c", ("x", "y", "z")), Knob("d", (1, 2, 4, 8))),
    lambda cfg: cfg["a"] + cfg["b"] <= 18 and not (cfg["c"] == "z" and cfg["d"] == 8),
)
OPTIMUM = {"a": 9, "b": 7, "c": "y", "d": 4}


def cost(config) -> float:
    """Smooth bowl around OPTIMUM, like throughput around a good tile size."""
    return (
        1.0
        + (config["a"] - 9) ** 2
        + (config["b"] - 7) ** 2
        + 5 * (config["c"] != "y")
        + 3 * abs(math.log2(config["d"]) - 2)
    )


def run(strategy, budget: int, batch: int = 8) -> list[tuple[float, dict]]:
    history = []
    while len(history) < budget:
        configs = strategy.propose(min(batch, budget - len(history)))
        if not configs:
            break
        costs = [cost(c) for c in configs]
        strategy.observe(configs, costs)
        history += list(zip(costs, configs))
    return history


def test_encode_decode_round_trip_and_operators_stay_valid():
    rng = random.Random(0)
    for _ in range(200):
        config = SPACE.random_valid(rng)
        assert SPACE.is_valid(config) and SPACE.decode(SPACE.encode(config)) == config
        assert SPACE.is_valid(SPACE.mutate(config, rng))
        assert SPACE.is_valid(SPACE.crossover(config, SPACE.random_valid(rng), rng))
    assert SPACE.repair({"a": 11, "b": 11, "c": "z", "d": 8}, rng) != {"a": 11, "b": 11, "c": "z", "d": 8}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_proposals_are_valid_and_never_repeat(name):
    history = run(STRATEGIES[name](SPACE, seed=3), budget=150)
    keys = [tuple(sorted(c.items())) for _, c in history]
    assert len(keys) == len(set(keys)) == 150 and all(SPACE.is_valid(c) for _, c in history)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ga", "rl", "anneal"])
def test_finds_the_optimum_within_budget(name):
    runs = [run(STRATEGIES[name](SPACE, seed=seed), budget=120) for seed in range(5)]
    found = [min(history, key=lambda pair: pair[0])[1] for history in runs]
    assert sum(f == OPTIMUM for f in found) >= 4, found  # 120 trials of 1474 valid configs; random: 0 of 10 seeds


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ga", "rl", "anneal"])
def test_beats_random_at_equal_trials(name):
    def best(strategy, seed):
        return min(c for c, _ in run(STRATEGIES[strategy](SPACE, seed=seed), budget=60))

    learned = sorted(best(name, s) for s in range(8))
    rnd = sorted(best("random", s) for s in range(8))
    assert learned[4] < rnd[4], (learned, rnd)  # medians over seeds


def test_strategies_are_deterministic_under_a_seed():
    for name, strategy in STRATEGIES.items():
        assert run(strategy(SPACE, seed=7), 40) == run(strategy(SPACE, seed=7), 40), name


def test_failed_trials_never_become_parents():
    ga = GeneticSearch(SPACE, seed=1)
    configs = ga.propose(8)
    ga.observe(configs, [math.inf] * 7 + [2.0])
    assert [c for _, c in ga.population] == [configs[7]]


class ScriptedRunner:
    """Stands in for the measuring worker: returns the costs a test scripts (tuner logic only)."""

    def __init__(self, cost_of):
        self.cost_of, self.calls = cost_of, 0

    def measure(self, workload, impl, config):
        from woodpecker.measure.result import MeasureResult

        self.calls += 1
        return MeasureResult(impl, config, times_s=(self.cost_of(config),))

    def measure_batch(self, workload, impl, configs):
        return [self.measure(workload, impl, c) for c in configs]


def tune_with(runner, **options):
    from tqdm import tqdm

    from woodpecker.explore.nodes import _tune
    from woodpecker.options import SearchOptions

    options = SearchOptions(**options, progress=False)
    return _tune(None, "key", "halide.test", SPACE, options, runner, None, tqdm(disable=True))


def test_tuner_stops_after_patience_batches_without_gain():
    runner = ScriptedRunner(lambda config: 1.0)  # nothing ever improves on the first batch
    results = tune_with(runner, budget=100, strategy="ga", patience=2)
    assert len(results) == 12 and runner.calls == 12  # first batch, then two stale ones


def test_tuner_spends_the_whole_budget_while_it_improves():
    runner = ScriptedRunner(cost)
    results = tune_with(runner, budget=40, strategy="ga", patience=0)
    assert len(results) == 40
    assert min(r.median_s for r in results) < min(r.median_s for r in results[:4])


def test_tuner_time_budget():
    runner = ScriptedRunner(lambda config: time.sleep(0.05) or 1.0)
    results = tune_with(runner, budget=1000, strategy="random", seconds=0.3)
    assert 2 <= len(results) <= 12


def test_transferred_configs_are_repaired_into_the_space():
    """A winner from a bigger workload (a + b too large here) still seeds the search, made valid."""
    seeded = SPACE.starting_from([{"a": 11, "b": 11, "c": "y", "d": 4}, OPTIMUM], seed=3)
    starts = seeded.valid_defaults()
    assert len(starts) == 2 and all(SPACE.is_valid(c) for c in starts) and starts[1] == OPTIMUM
    assert GeneticSearch(seeded, seed=0).propose(2) == starts


def test_transferred_configs_lose_knobs_the_space_lacks():
    """A 1x1 layer's `wide` seeded into a depthwise layer's search built a kernel reading past its blocks."""
    seeded = SPACE.starting_from([{**OPTIMUM, "wide": True}], seed=3)
    assert seeded.valid_defaults()[0] == OPTIMUM
