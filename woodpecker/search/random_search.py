"""Random search: the space's starting points, then a seeded sample, never proposing one twice."""

from __future__ import annotations

from woodpecker.search.space import Config, ConfigSpace


class RandomSearch:
    def __init__(self, space: ConfigSpace, seed: int = 0):
        defaults = space.valid_defaults()
        self._pending = defaults + [c for c in space.sample(len(space), seed) if c not in defaults]

    def propose(self, n: int) -> list[Config]:
        batch, self._pending = self._pending[:n], self._pending[n:]
        return batch

    def observe(self, configs: list[Config], costs: list[float]) -> None:
        """Random search learns nothing; kept for the common protocol."""
