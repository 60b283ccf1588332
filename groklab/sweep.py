"""Sweeps: expand a spec into runs, skip what the store has, group the rest into packs, train.

Also the Python entry points `run` (one run = a pack of one) and `sweep`.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from tqdm import tqdm

from groklab import engine
from groklab.config import Config, ConfigError, load_yaml, make_config, pack_key, parse_override, set_dotted
from groklab.store import DEFAULT_PATH, Store

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
                try:
                    cfg = make_config(spec.base, overrides)
                except ConfigError as e:
                    raise ConfigError(f"sweep grid: {e}") from None
                configs.setdefault(cfg.run_id, cfg)
    return list(configs.values())


def group(configs: list[Config], pack_size: int | None = None) -> list[list[Config]]:
    """Split runs into packs of equal shape, at most `pack_size` runs each."""
    size = pack_size or DEFAULT_PACK_SIZE
    if size < 1:
        raise ConfigError(f"--pack-size: must be >= 1, got {size}")
    by_key: dict[str, list[Config]] = {}
    for c in configs:
        by_key.setdefault(pack_key(c), []).append(c)
    return [runs[i : i + size] for runs in by_key.values() for i in range(0, len(runs), size)]


def execute(
    configs: list[Config],
    store: Store | None,
    sweep_name: str | None = None,
    pack_size: int | None = None,
    progress: bool = True,
    replace: bool = False,
) -> list[engine.RunResult]:
    """Train `configs` pack by pack; each run goes to the store the moment it finishes."""
    packs = group(configs, pack_size)
    results: list[engine.RunResult] = []

    def on_finish(res: engine.RunResult) -> None:
        results.append(res)
        if store is not None:
            store.write_run(res, sweep=sweep_name, replace=replace)

    for i, pack in enumerate(packs):
        total = max(c.train.steps for c in pack)
        bar = tqdm(
            total=total, desc=f"pack {i + 1}/{len(packs)} ({len(pack)} runs)", unit="step",
            file=sys.stderr, disable=not progress, dynamic_ncols=True, leave=True,
        )

        def update(step: int, active: int, grokked: int, bar: tqdm = bar) -> None:
            bar.update(step - bar.n)
            bar.set_postfix(active=active, grokked=grokked, refresh=False)

        engine.train(pack, on_finish=on_finish, progress=update)
        bar.close()
    return results


def _open(store: Store | str | Path | None) -> Store | None:
    if store is None or isinstance(store, Store):
        return store
    return Store(store)


def run(
    config: Config | dict[str, Any] | str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    store: Store | str | Path | None = DEFAULT_PATH,
    force: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Train one run and return its JSON summary. A run already in the store is not trained again
    (its stored summary is returned) unless `force`; `store=None` keeps nothing on disk."""
    cfg = make_config(config, overrides)
    st = _open(store)
    if st is not None and not force and cfg.run_id in st.run_ids():
        return st.summary(cfg.run_id)
    (res,) = execute([cfg], st, progress=progress, replace=force)
    return res.summary()


def sweep(
    spec: SweepSpec | dict[str, Any] | str | Path,
    overrides: list[str] | dict[str, Any] | None = None,
    store: Store | str | Path = DEFAULT_PATH,
    pack_size: int | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Run every run of the sweep not yet in the store; return the sweep's runs as a DataFrame."""
    spec = load_spec(spec, overrides)
    configs = expand(spec)
    group(configs, pack_size)  # validate pack_size before touching the store
    st = _open(store)
    assert st is not None
    st.add_sweep(spec.name, spec.model_dump(mode="json"), [])
    done = st.run_ids()
    todo = [c for c in configs if c.run_id not in done]
    st.add_sweep(spec.name, spec.model_dump(mode="json"), [c.run_id for c in configs if c.run_id in done])
    if progress:
        print(
            f"sweep {spec.name}: {len(configs)} runs, {len(configs) - len(todo)} already in {st.path}, "
            f"{len(todo)} to train",
            file=sys.stderr,
        )
    execute(todo, st, sweep_name=spec.name, pack_size=pack_size, progress=progress)
    df = st.runs(sweep=spec.name)
    df.attrs["sweep"] = spec.name
    return df
