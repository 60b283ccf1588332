"""Sweep specs: a sweep file's grid, seeds and random axes, expanded into runs and grouped into packs.

Training them is the executors' job (groklab.executors); `groklab.sweep()` (groklab.api) ties both.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from groklab import engine, memory
from groklab.config import (
    Config,
    ConfigError,
    InapplicableKeyError,
    load_yaml,
    make_config,
    pack_key,
    parse_override,
    set_dotted,
)

DEFAULT_PACK_SIZE = 64


class RandomAxis(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dist: Literal["uniform", "log_uniform", "int_uniform", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> RandomAxis:
        if self.dist == "choice":
            if not self.values:
                raise ValueError("dist 'choice' needs a non-empty `values` list")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"dist {self.dist!r} needs `low` < `high`")
        elif self.dist == "log_uniform" and self.low <= 0:
            raise ValueError("dist 'log_uniform' needs `low` > 0")
        return self

    def draw(self, rng: np.random.Generator) -> Any:
        if self.dist == "choice":
            return self.values[int(rng.integers(len(self.values)))]
        if self.dist == "uniform":
            return float(rng.uniform(self.low, self.high))
        if self.dist == "int_uniform":
            return int(rng.integers(int(self.low), int(self.high) + 1))
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))


class SweepSpec(BaseModel):
    """`{name, base, grid, seeds}`, plus optional random axes drawn `samples` times."""

    model_config = ConfigDict(extra="forbid")
    name: str
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0])
    random: dict[str, RandomAxis] = Field(default_factory=dict)
    samples: int = Field(0, ge=0)
    sample_seed: int = 0
    # Settings of the analysis of this sweep's runs (e.g. `{phases: {delay: 500}}`); they change no run, so
    # they are checked by groklab.analysis (groklab.sweep() does so before training), not here.
    analysis: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", v):
            raise ValueError(f"must be letters, digits, '_', '.', '-' only, got {v!r}")
        return v

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"grid.{key}: empty list of values; give at least one")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("empty list; give at least one seed, e.g. [0, 1, 2]")
        return v

    @model_validator(mode="after")
    def _samples(self) -> SweepSpec:
        if self.random and self.samples == 0:
            raise ValueError("random axes need `samples` > 0 (how many draws)")
        return self

    @property
    def axes(self) -> list[str]:
        """The swept keys, in the order the spec gives them."""
        return list(self.grid) + list(self.random)


def load_spec(
    source: SweepSpec | dict[str, Any] | str | Path, overrides: list[str] | dict[str, Any] | None = None
) -> SweepSpec:
    """A validated SweepSpec from a spec, dict or YAML file; overrides apply to its base config."""
    if isinstance(source, SweepSpec):
        raw = source.model_dump()
    elif isinstance(source, (str, Path)):
        raw = load_yaml(source)
    else:
        raw = dict(source)
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown key; allowed: {', '.join(SweepSpec.model_fields)}"
            msgs.append(f"sweep {loc}: {msg}" if loc else f"sweep: {msg}")
        raise ConfigError("; ".join(msgs)) from None
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    for key, value in items:
        set_dotted(spec.base, key, value)
    return spec


def expand(spec: SweepSpec) -> list[Config]:
    """Every run of the sweep: grid product x random samples x seeds, deduplicated by run id."""
    import itertools

    try:
        make_config(spec.base)
    except ConfigError as e:
        raise ConfigError(f"sweep base: {e}") from None
    rng = np.random.default_rng(spec.sample_seed)
    draws = [{k: ax.draw(rng) for k, ax in spec.random.items()} for _ in range(spec.samples)] or [{}]
    configs: dict[str, Config] = {}
    for combo in itertools.product(*spec.grid.values()):
        for draw in draws:
            for seed in spec.seeds:
                overrides = {**dict(zip(spec.grid, combo)), **draw, "train.seed": seed}
                cfg = _cell(spec.base, overrides)
                configs.setdefault(cfg.run_id, cfg)
    return list(configs.values())


def _cell(base: dict[str, Any], overrides: dict[str, Any]) -> Config:
    """One grid cell's config. A key of the base that does not apply to this cell (`model.heads` in the MLP
    cell of a grid over `model.kind`) is left out of the cell; a grid or random key that does not apply is
    refused, since the user asked for that value in that cell."""
    base = copy.deepcopy(base)
    while True:
        try:
            return make_config(base, overrides)
        except InapplicableKeyError as e:
            if any(k in overrides or not _drop_key(base, k) for k in e.keys):
                raise ConfigError(f"sweep grid: {e}") from None
        except ConfigError as e:
            raise ConfigError(f"sweep grid: {e}") from None


def _drop_key(d: dict[str, Any], dotted: str) -> bool:
    """Remove `dotted` from nested dict `d`; False if it is not there."""
    *parents, leaf = dotted.split(".")
    for p in parents:
        d = d.get(p)
        if not isinstance(d, dict):
            return False
    return d.pop(leaf, _MISSING) is not _MISSING


_MISSING = object()


def group(configs: list[Config], pack_size: int | None = None) -> list[list[Config]]:
    """Split runs into packs of equal shape, at most `pack_size` runs each (and what memory allows)."""
    if pack_size is not None and pack_size < 1:
        raise ConfigError(f"--pack-size: must be >= 1, got {pack_size}")
    by_key: dict[str, list[Config]] = {}
    for c in configs:
        by_key.setdefault(pack_key(c), []).append(c)
    packs = []
    for runs in by_key.values():
        # A pack never outgrows the device: a run that cannot fit at all is refused here.
        fit = memory.max_pack_size(runs[0], engine.resolve_device(runs[0].train.device))
        size = min(pack_size or DEFAULT_PACK_SIZE, fit)
        packs += [runs[i : i + size] for i in range(0, len(runs), size)]
    return packs


def pack_id(pack: list[Config]) -> str:
    """A pack's name (its checkpoint file): the same runs give the same id in any order."""
    return hashlib.sha256(",".join(sorted(c.run_id for c in pack)).encode()).hexdigest()[:16]
