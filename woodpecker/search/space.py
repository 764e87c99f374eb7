"""Knob spaces: the free numbers of a kernel's schedule, declared once and read by the search."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

Config = dict[str, Any]


def config_key(config: Config) -> tuple:
    """A hashable identity for a config, for "never propose the same one twice"."""
    return tuple(sorted(config.items()))


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

    def starting_from(self, configs: list[Config], seed: int = 0) -> ConfigSpace:
        """This space, searched first from `configs` (e.g. winners on similar workloads), each
        repaired into this space's valid set: a tile that fit a wider layer may not fit this one,
        and a knob this space lacks is dropped (a 1x1 layer's `wide` on a depthwise one)."""
        rng = random.Random(seed)
        names = {k.name for k in self.knobs}
        kept = [{k: v for k, v in c.items() if k in names} for c in configs]
        return replace(self, defaults=(*[self.repair(c, rng) for c in kept], *self.defaults))

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

    # Vectors and variation operators, used by the genetic and learning searches.

    def encode(self, config: Config) -> list[int]:
        """A config as the index of each knob's choice."""
        return [knob.choices.index(config[knob.name]) for knob in self.knobs]

    def decode(self, vector: list[int]) -> Config:
        return {knob.name: knob.choices[index] for knob, index in zip(self.knobs, vector)}

    def random_valid(self, rng: random.Random, tries: int = 200) -> Config | None:
        """A uniformly drawn valid config (rejection sampling), or None if none was hit."""
        for _ in range(tries):
            config = {knob.name: rng.choice(knob.choices) for knob in self.knobs}
            if self.constraint(config):
                return config
        valid = list(self.all_configs())
        return rng.choice(valid) if valid else None

    def mutate(self, config: Config, rng: random.Random, rate: float = 0.2) -> Config:
        """Redraw each knob with probability `rate` (at least one), then repair."""
        child = dict(config)
        knobs = [k for k in self.knobs if len(k.choices) > 1]
        if not knobs:
            return child
        chosen = [k for k in knobs if rng.random() < rate] or [rng.choice(knobs)]
        for knob in chosen:
            child[knob.name] = rng.choice([c for c in knob.choices if c != config[knob.name]])
        return self.repair(child, rng)

    def crossover(self, a: Config, b: Config, rng: random.Random) -> Config:
        """Uniform crossover: each knob from one parent or the other, then repair."""
        return self.repair({knob.name: (a if rng.random() < 0.5 else b)[knob.name] for knob in self.knobs}, rng)

    def repair(self, config: Config, rng: random.Random, tries: int = 50) -> Config:
        """The nearest valid config found by redrawing one knob at a time; a random valid one failing that."""
        if self.is_valid(config):
            return config
        knobs = [k for k in self.knobs if len(k.choices) > 1]
        candidate = dict(config)
        for _ in range(tries):
            knob = rng.choice(knobs)
            candidate[knob.name] = rng.choice(knob.choices)
            if self.is_valid(candidate):
                return candidate
        return self.random_valid(rng) or config


EMPTY_SPACE = ConfigSpace()
