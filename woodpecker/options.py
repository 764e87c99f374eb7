"""The options of `optimize` and `tune`: one object for the CLI, the API and the explorer.

Each field is one setting with its default, its check and its help text; `wpk` builds its flags
from these fields (cli.py), so a flag cannot be parsed and then dropped on the way to the code it
names, and a default lives here only.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from woodpecker.errors import WoodpeckerError
from woodpecker.kernels.registry import FALLBACK, LIBRARIES

LAYOUTS = ("blocked", "plain")
MEMORY_RULES = ("any", FALLBACK)  # the peak a plan may reach: any (the fastest wins), or ONNX Runtime's on the graph
# Plans within this fraction of the fastest are a tie, which the smaller memory wins: two runs of the
# same plans differ by more than this, so the speed given up is noise (explore/select.py).
TIE = 0.03
RAY_ADDRESS = re.compile(r"(ray://)?[\w.\-]+:\d{1,5}")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from '512M', '4G', '1.5g' or a plain number of bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not match:
        raise ValueError(f"'{text}' is not a size (e.g. 512M, 4G)")
    return int(float(match[1]) * _UNITS[match[2]])


def _option(default: Any, help: str, **cli: Any) -> Any:
    """A field with its help text and how the CLI spells and parses it (`flag`, `type`, `metavar`)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class SearchOptions:
    """How `tune` (and `optimize`) explore kernels."""

    budget: int = _option(8, "configurations tried per generated kernel (default 8)", type=int)
    strategy: str = _option(
        "anneal", "anneal (cost model, default), ga (genetic), rl (PPO) or random", choices="strategies"
    )
    records: str | None = _option(None, "tuning-records database (default: ~/.cache/woodpecker/records.sqlite)")
    batch: int | None = _option(None, "batch size to plan for (default: the model's, or 1 if dynamic)", type=int)
    libraries: tuple[str, ...] = _option(
        LIBRARIES, "library kernels to consider, comma-separated (default: all)", type="list"
    )
    patience: int = _option(0, "stop a kernel's search after K batches without gain (0: never)", type=int, metavar="K")
    seconds: float = _option(
        0.0, "time budget per workload and generated kernel, in seconds (0: none)", type=float, metavar="S"
    )
    ray: str | None = _option(
        None, "measure on a Ray cluster at ADDRESS (host:port; 'local' starts a one-node one)", metavar="ADDRESS"
    )
    seed: int = _option(0, "random seed of the search and the test inputs", type=int)
    layout: str = _option(
        "blocked", "blocked: channel blocks through the graph (default); plain: NCHW", choices=LAYOUTS
    )
    threads: int | None = _option(None, "threads for measuring (default: all cores)", type=int)
    timeout_s: float = _option(120.0, "seconds one candidate may take to build and run", type=float, flag="--timeout")
    max_memory: int | None = _option(
        None,
        "refuse models, and pass over plans, whose activations and weights need more than SIZE (e.g. 4G)",
        type="size",
        metavar="SIZE",
    )
    progress: bool | None = None  # progress bars; None: when standard error is a terminal

    def check(self) -> None:
        """Raise a one-line WoodpeckerError, naming the flag, for any value out of range."""
        from woodpecker.search.strategies import STRATEGIES

        _at_least("--budget", self.budget, 1)
        _at_least("--patience", self.patience, 0)
        _at_least("--seconds", self.seconds, 0)
        _at_least("--timeout", self.timeout_s, 1e-3)
        for flag, value in (("--batch", self.batch), ("--threads", self.threads), ("--max-memory", self.max_memory)):
            if value is not None:
                _at_least(flag, value, 1)
        _one_of("--strategy", self.strategy, tuple(STRATEGIES))
        _one_of("--layout", self.layout, LAYOUTS)
        unknown = sorted(set(self.libraries) - set(LIBRARIES))
        if unknown:
            raise WoodpeckerError(f"--libraries: unknown {', '.join(unknown)}; choose from {', '.join(LIBRARIES)}")
        if self.ray is not None and self.ray not in ("local", "auto") and not RAY_ADDRESS.fullmatch(self.ray):
            raise WoodpeckerError(f"--ray: '{self.ray}' is not 'local', 'auto' nor an address HOST:PORT")


@dataclass(frozen=True)
class OptimizeOptions(SearchOptions):
    """`SearchOptions` and how `optimize` picks among whole plans."""

    tie: float = _option(
        TIE,
        "whole plans within PERCENT of the fastest count as equally fast; the one with the lowest peak memory is kept"
        " (default 3)",
        type="percent",
        metavar="PERCENT",
    )
    memory: str = _option(
        MEMORY_RULES[0],
        "any (default): the fastest verified plan, within --max-memory if given; onnxruntime: only plans that"
        " peak no higher than ONNX Runtime running the same graph",
        choices=MEMORY_RULES,
    )

    def check(self) -> None:
        super().check()
        if not self.tie >= 0:
            raise WoodpeckerError(f"--tie must not be negative, got {self.tie * 100:g}")
        _one_of("--memory", self.memory, MEMORY_RULES)


def build(cls: type[SearchOptions], base: SearchOptions | None = None, **changes: Any) -> Any:
    """A checked `cls`: `base`'s values (default: the defaults) with `changes`; an unknown name is a
    TypeError, as for any keyword argument."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise TypeError(f"unexpected option {unknown[0]!r}; options are {', '.join(sorted(known))}")
    values = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)} if base is not None else {}
    if "libraries" in changes and changes["libraries"] is not None:
        changes["libraries"] = tuple(changes["libraries"])
    elif "libraries" in changes:
        changes.pop("libraries")
    result = cls(**{k: v for k, v in values.items() if k in known}, **changes)
    result.check()
    return result


def _at_least(flag: str, value: float, low: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= low:
        bound = "be positive" if low > 0 and low < 1 else f"be at least {low}" if low else "not be negative"
        raise WoodpeckerError(f"{flag} must {bound}, got {value}")


def _one_of(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise WoodpeckerError(f"{flag}: unknown '{value}'; choose from {', '.join(choices)}")
