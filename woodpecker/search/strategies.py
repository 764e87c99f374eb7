"""The search-strategy protocol and the strategies `--strategy` can name."""

from __future__ import annotations

from typing import Protocol

from woodpecker.search.annealing import AnnealingSearch
from woodpecker.search.genetic import GeneticSearch
from woodpecker.search.random_search import RandomSearch
from woodpecker.search.rl import PPOSearch
from woodpecker.search.space import Config, ConfigSpace


class Strategy(Protocol):
    def __init__(self, space: ConfigSpace, seed: int = 0): ...

    def propose(self, n: int) -> list[Config]:
        """Up to n configs never proposed before; fewer (or none) when the space is spent."""

    def observe(self, configs: list[Config], costs: list[float]) -> None:
        """Measured costs (seconds; inf for a failed trial) of configs this strategy proposed."""


STRATEGIES: dict[str, type[Strategy]] = {
    "random": RandomSearch,
    "ga": GeneticSearch,
    "rl": PPOSearch,
    "anneal": AnnealingSearch,
}
