"""Genetic search over a ConfigSpace (Holland-style, as in Woodpecker-DL).

The first generation is the space's starting points plus random valid configs; after that
each proposal is a child of two tournament-selected parents (uniform crossover, mutation,
repair into the valid set). The population keeps the best configs measured so far
(elitism by construction), and no config is ever proposed twice.
"""

from __future__ import annotations

import math
import random

from woodpecker.search.space import Config, ConfigSpace, config_key


class GeneticSearch:
    def __init__(
        self, space: ConfigSpace, seed: int = 0, population: int = 16, tournament: int = 3, mutation_rate: float = 0.2
    ):
        self.space, self.rng = space, random.Random(seed)
        self.population_size, self.tournament, self.mutation_rate = population, tournament, mutation_rate
        self.seen: set[tuple] = set()
        self.population: list[tuple[float, Config]] = []  # (cost, config), best first
        self._starts = space.valid_defaults()

    def propose(self, n: int) -> list[Config]:
        batch: list[Config] = []
        attempts = 0
        while len(batch) < n and attempts < 50 * n:
            attempts += 1
            child = self._next_candidate()
            if child is None:
                break
            if config_key(child) in self.seen:
                continue
            self.seen.add(config_key(child))
            batch.append(child)
        return batch

    def observe(self, configs: list[Config], costs: list[float]) -> None:
        scored = [(c if math.isfinite(c) else math.inf, cfg) for cfg, c in zip(configs, costs)]
        merged = sorted(self.population + scored, key=lambda pair: pair[0])
        self.population = [pair for pair in merged if math.isfinite(pair[0])][: self.population_size]

    def _next_candidate(self) -> Config | None:
        while self._starts:
            start = self._starts.pop(0)
            if config_key(start) not in self.seen:
                return start
        if len(self.population) < 2:
            return self.space.random_valid(self.rng)
        a, b = self._select(), self._select()
        return self.space.mutate(self.space.crossover(a, b, self.rng), self.rng, self.mutation_rate)

    def _select(self) -> Config:
        """Tournament selection: the best of a few random members."""
        contestants = self.rng.sample(self.population, min(self.tournament, len(self.population)))
        return min(contestants, key=lambda pair: pair[0])[1]
