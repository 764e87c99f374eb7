"""AutoTVM-style baseline: a gradient-boosted cost model plus simulated annealing on it.

After a first batch of starting points and random configs is measured, a histogram
gradient-boosting regressor (scikit-learn) learns log-cost from the knob vector; several
annealing chains walk the space on the model's predictions (neighbour = one knob changed)
and the best predicted unseen configs are measured next, with a few random ones mixed in
so the model keeps seeing new regions (Chen et al., "Learning to Optimize Tensor Programs").
The model fits and predicts on one thread: it is small, and OpenMP threads spinning beside the
measuring workers (or another busy process) slow both by orders of magnitude.
"""

from __future__ import annotations

import math
import random

from threadpoolctl import threadpool_limits

from woodpecker.search.space import Config, ConfigSpace, config_key


class AnnealingSearch:
    def __init__(
        self,
        space: ConfigSpace,
        seed: int = 0,
        initial: int = 8,
        chains: int = 8,
        steps: int = 60,
        epsilon: float = 0.1,
    ):
        self.space, self.rng, self.seed = space, random.Random(seed), seed
        self.initial, self.chains, self.steps, self.epsilon = initial, chains, steps, epsilon
        self.seen: set[tuple] = set()
        self.data: list[tuple[list[int], float]] = []  # (knob vector, log-cost); failures get the worst + 1
        self.model = None
        self._starts = space.valid_defaults()

    def propose(self, n: int) -> list[Config]:
        batch: list[Config] = []
        if self.model is not None:
            explore = max(1, round(self.epsilon * n)) if n > 1 else 0
            with threadpool_limits(limits=1):
                batch += self._annealed(n - explore)
        for _ in range(50 * n):
            if len(batch) >= n:
                break
            config = self._starts.pop(0) if self._starts else self.space.random_valid(self.rng)
            if config is not None and config_key(config) not in self.seen:
                self.seen.add(config_key(config))
                batch.append(config)
        return batch

    def observe(self, configs: list[Config], costs: list[float]) -> None:
        finite = [math.log(c) for c in costs if math.isfinite(c) and c > 0]
        worst = max([y for _, y in self.data] + finite, default=0.0) + 1.0
        for config, cost in zip(configs, costs):
            y = math.log(cost) if math.isfinite(cost) and cost > 0 else worst
            self.data.append((self.space.encode(config), y))
        if len(self.data) >= self.initial:
            self._fit()

    def _fit(self) -> None:
        from sklearn.ensemble import HistGradientBoostingRegressor

        x = [v for v, _ in self.data]
        y = [c for _, c in self.data]
        with threadpool_limits(limits=1):
            self.model = HistGradientBoostingRegressor(
                max_iter=100, learning_rate=0.2, min_samples_leaf=2, random_state=self.seed
            ).fit(x, y)

    def _predict(self, configs: list[Config]) -> list[float]:
        return list(self.model.predict([self.space.encode(c) for c in configs]))

    def _annealed(self, n: int) -> list[Config]:
        """Simulated annealing on the model; the best predicted unseen configs it visited."""
        best_measured = sorted(self.data, key=lambda pair: pair[1])[: self.chains // 2]
        chains = [self.space.decode(v) for v, _ in best_measured]
        while len(chains) < self.chains:
            chains.append(self.space.random_valid(self.rng))
        scores = self._predict(chains)
        visited: dict[tuple, tuple[float, Config]] = {}
        for step in range(self.steps):
            temperature = 1.0 * (1 - step / self.steps) + 1e-3
            proposals = [self.space.mutate(c, self.rng, rate=0.0) for c in chains]  # one knob at a time
            new_scores = self._predict(proposals)
            for i, (proposal, score) in enumerate(zip(proposals, new_scores)):
                if score < scores[i] or self.rng.random() < math.exp((scores[i] - score) / temperature):
                    chains[i], scores[i] = proposal, score
                if config_key(proposal) not in self.seen:
                    visited[config_key(proposal)] = (score, proposal)
        ranked = sorted(visited.values(), key=lambda pair: pair[0])[:n]
        for _, config in ranked:
            self.seen.add(config_key(config))
        return [config for _, config in ranked]
