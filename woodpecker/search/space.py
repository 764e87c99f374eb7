"""Knob spaces: the free numbers of a kernel's schedule, declared once and read by the search."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

Config = dict[str, Any]


@dataclass(frozen=True)
class Knob:
    name: str
    choices: tuple[Any, ...]


@dataclass(frozen=True)
class ConfigSpace:
    """A product of knobs filtered by a validity constraint (tiles fit extents, registers suffice)."""

    knobs: tuple[Knob, ...] = ()
    constraint: Callable[[Config], bool] = field(default=lambda config: True, compare=False)
    # Hand-picked starting points (like AutoTVM's fallback configs); searches try the valid ones first.
    defaults: tuple[Config, ...] = ()

    def valid_defaults(self) -> list[Config]:
        return [d for d in self.defaults if self.is_valid(d)]

    def is_valid(self, config: Config) -> bool:
        return all(config.get(k.name) in k.choices for k in self.knobs) and self.constraint(config)

    def all_configs(self) -> Iterator[Config]:
        for combo in itertools.product(*(k.choices for k in self.knobs)):
            config = dict(zip((k.name for k in self.knobs), combo))
            if self.constraint(config):
                yield config

    def sample(self, n: int, seed: int = 0) -> list[Config]:
        """Up to `n` distinct valid configurations, seeded; fewer if the space is smaller."""
        valid = list(self.all_configs())
        random.Random(seed).shuffle(valid)
        return valid[:n]

    def __len__(self) -> int:
        return sum(1 for _ in self.all_configs())


EMPTY_SPACE = ConfigSpace()
