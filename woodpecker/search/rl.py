"""Reinforcement-learning search: a PPO agent whose actions are knob values.

The policy is a small PyTorch network that outputs one categorical distribution per knob
(factorized). Each batch of proposals is sampled from it; once measured, their rewards
(log-throughput, normalized within the history, failures scored below the worst success)
drive a few epochs of the PPO clipped objective (Schulman et al., 2017) with an entropy
bonus. Configs are never proposed twice; samples outside the valid set are repaired, and
the policy is trained on the config actually measured.
"""

from __future__ import annotations

import math
import random

from woodpecker.search.space import Config, ConfigSpace, config_key


class PPOSearch:
    def __init__(
        self,
        space: ConfigSpace,
        seed: int = 0,
        hidden: int = 32,
        lr: float = 0.03,
        clip: float = 0.2,
        epochs: int = 8,
        entropy: float = 0.01,
    ):
        import torch

        self.torch, self.space = torch, space
        self.rng = random.Random(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.sizes = [len(k.choices) for k in space.knobs]
        self.clip, self.epochs, self.entropy = clip, epochs, entropy
        with torch.random.fork_rng(devices=[]):  # deterministic init without touching global RNG state
            torch.manual_seed(seed)
            self.net = torch.nn.Sequential(
                torch.nn.Linear(1, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, sum(self.sizes))
            )
            torch.nn.init.zeros_(self.net[2].weight)  # start from the uniform policy
            torch.nn.init.zeros_(self.net[2].bias)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.state = torch.ones(1, 1)
        self.seen: set[tuple] = set()
        self.history: list[float] = []  # log-throughput of every success, for reward normalization
        self._starts = space.valid_defaults()
        self._old_logp: dict[tuple, float] = {}

    def _distributions(self):
        logits = self.net(self.state)[0].split(self.sizes)
        return [self.torch.distributions.Categorical(logits=lg) for lg in logits]

    def _log_prob(self, dists, configs: list[Config]):
        actions = self.torch.tensor([self.space.encode(c) for c in configs])
        return sum(d.log_prob(actions[:, i]) for i, d in enumerate(dists))

    def propose(self, n: int) -> list[Config]:
        batch: list[Config] = []
        with self.torch.no_grad():
            dists = self._distributions()
            for _ in range(50 * n):
                if len(batch) == n:
                    break
                if self._starts:
                    config = self._starts.pop(0)
                else:
                    vector = [self._sample(d) for d in dists]
                    config = self.space.repair(self.space.decode(vector), self.rng)
                for _ in range(20):  # a converged policy keeps sampling seen configs: explore around them
                    if config_key(config) not in self.seen:
                        break
                    config = self.space.mutate(config, self.rng)
                if config_key(config) in self.seen:
                    continue
                self.seen.add(config_key(config))
                batch.append(config)
            if batch:
                for config, logp in zip(batch, self._log_prob(dists, batch).tolist()):
                    self._old_logp[config_key(config)] = logp
        return batch

    def _sample(self, dist) -> int:
        return int(self.torch.multinomial(dist.probs, 1, generator=self.generator))

    def observe(self, configs: list[Config], costs: list[float]) -> None:
        torch = self.torch
        scores = [-math.log(c) if math.isfinite(c) and c > 0 else None for c in costs]
        self.history += [s for s in scores if s is not None]
        if not self.history:
            return
        mean = sum(self.history) / len(self.history)
        std = max((sum((s - mean) ** 2 for s in self.history) / len(self.history)) ** 0.5, 1e-6)
        floor = (min(self.history) - mean) / std - 1.0  # a failed trial scores below the worst success
        rewards = torch.tensor([(s - mean) / std if s is not None else floor for s in scores])
        advantages = rewards - rewards.mean() if len(rewards) > 1 else rewards
        old = torch.tensor([self._old_logp.pop(config_key(c)) for c in configs])
        for _ in range(self.epochs):
            dists = self._distributions()
            ratio = torch.exp(self._log_prob(dists, configs) - old)
            clipped = torch.clamp(ratio, 1 - self.clip, 1 + self.clip)
            entropy = sum(d.entropy() for d in dists)
            loss = -torch.min(ratio * advantages, clipped * advantages).mean() - self.entropy * entropy
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
