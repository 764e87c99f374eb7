"""Random search: a seeded sample of the valid configurations, never proposing one twice."""

from __future__ import annotations

from woodpecker.search.space import Config, ConfigSpace


class RandomSearch:
    def __init__(self, space: ConfigSpace, seed: int = 0):
        self._pending = space.sample(len(space), seed)

    def propose(self, n: int) -> list[Config]:
        batch, self._pending = self._pending[:n], self._pending[n:]
        return batch

    def observe(self, configs: list[Config], costs: list[float]) -> None:
        """Random search learns nothing; kept for the common protocol."""


STRATEGIES = {"random": RandomSearch}
