"""Sweeps: expand a spec into runs, skip what the store has, group the rest into packs, train.

Also the Python entry points `run` (one run = a pack of one) and `sweep`.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from tqdm import tqdm

from groklab import engine, memory
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
    return hashlib.sha256(",".join(sorted(c.run_id for c in pack)).encode()).hexdigest()[:16]


class _StopFlag:
    """Set by SIGINT/SIGTERM while a sweep trains: the pack checkpoints and stops at the next step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.signal = signum

    def __call__(self) -> bool:
        return self.signal is not None

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _load_init_weights(configs: list[Config], store: Store | None) -> dict[str, engine.Weights]:
    init_weights = {}
    for c in configs:
        src = c.train.init_from
        if src is not None and src not in init_weights:
            weights = store.load_weights(src) if store is not None else None
            if weights is None:
                raise ConfigError(
                    f"train.init_from: no final weights of run {src!r} in the store; train it first "
                    "(with train.save_weights: true) or name a stored run (groklab ls)"
                )
            init_weights[src] = weights
    return init_weights


def execute(
    configs: list[Config],
    store: Store | None,
    sweep_name: str | None = None,
    pack_size: int | None = None,
    progress: bool = True,
    replace: bool = False,
    start_at: int = 0,
    wait: bool = True,
) -> list[engine.RunResult]:
    """Train every run of `configs` not yet in the store, pack by pack, each run stored the moment
    it finishes. Packs are claimed in the store (so concurrent sweeps and workers train each run
    once), checkpointed every `train.checkpoint_every` steps, and resumed from their checkpoint.
    `start_at` rotates the order packs are tried in (workers start at different packs); with `wait`,
    runs claimed by another live process are waited for, and taken over if that process dies."""
    packs = group(configs, pack_size)
    packs = packs[start_at % len(packs):] + packs[: start_at % len(packs)] if packs else packs
    init_weights = _load_init_weights(configs, store)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    results: list[engine.RunResult] = []
    last_beat = [time.time()]

    def on_finish(res: engine.RunResult) -> None:
        results.append(res)
        if store is not None:
            store.write_run(res, sweep=sweep_name, replace=replace)
            store.release(owner, [res.run_id])

    with _StopFlag() as stop:
        try:
            pending = list(range(len(packs)))
            while pending:
                left = []
                for i in pending:
                    if not _train_pack(packs[i], i, len(packs), store, owner, init_weights, on_finish, progress,
                                       replace, stop, last_beat):
                        left.append(i)
                if not left or not wait:
                    break
                time.sleep(1.0)  # runs held by another live process: wait for them to land
                pending = left
        except engine.Interrupted:
            raise KeyboardInterrupt from None
        finally:
            if store is not None:
                store.release(owner)
    return results


def _train_pack(
    pack: list[Config], i: int, n: int, store: Store | None, owner: str, init_weights: dict[str, engine.Weights],
    on_finish: Any, progress: bool, replace: bool, stop: _StopFlag, last_beat: list[float],
) -> bool:
    """Train what this process can claim of one pack; False if runs remain held by another process."""
    from groklab import checkpoint

    ids = [c.run_id for c in pack]
    if store is None or replace:
        todo = pack  # `replace` retrains stored runs (run --force)
    else:
        stored = store.existing(ids)
        won = store.claim([r for r in ids if r not in stored], owner)
        todo = [c for c in pack if c.run_id in won]
        if not todo:
            return len(stored) == len(ids)  # False: some runs are held by another live process
    path = store.checkpoint_dir / f"{pack_id(pack)}.pt" if store is not None else None
    sd = checkpoint.load(path) if path is not None and not replace else None
    by_id = {c.run_id: c for c in pack}
    mine = {c.run_id for c in todo}
    batches: list[tuple[list[Config], dict | None]] = []
    if sd is not None and set(sd["run_ids"]) <= set(by_id):
        batches.append(([by_id[r] for r in sd["run_ids"]], sd))
        rest = [c for c in todo if c.run_id not in sd["run_ids"]]
        if rest:
            batches.append((rest, None))
    else:
        batches.append((todo, None))

    for configs, state in batches:
        p = engine.Pack(configs, init_weights)
        if state is not None:
            checkpoint.load_state_dict(p, state)
            drop = [r for r, c in enumerate(p.configs) if c.run_id not in mine]
            if drop:  # finished and stored after the checkpoint, or now trained by another process
                p.compact([r for r in range(p.size) if r not in drop])
            if not p.size:
                continue
        total = max(c.train.steps for c in p.configs)
        bar = tqdm(total=total, initial=p.step, desc=f"pack {i + 1}/{n} ({p.size} runs)", unit="step",
                   file=sys.stderr, disable=not progress, dynamic_ncols=True, leave=True)

        def update(step: int, active: int, grokked: int, bar: tqdm = bar) -> None:
            bar.update(step - bar.n)
            bar.set_postfix(active=active, grokked=grokked, refresh=False)
            if store is not None and time.time() - last_beat[0] > 10:
                store.heartbeat(owner)
                last_beat[0] = time.time()

        def save(pk: engine.Pack) -> None:
            if path is not None:
                checkpoint.save(path, checkpoint.state_dict(pk))

        try:
            p.run(on_finish=on_finish, progress=update, checkpoint=save if path is not None else None,
                  should_stop=stop, resumed=state is not None)
        except engine.Interrupted:
            bar.close()
            print(f"\ninterrupted at step {p.step}: checkpoint saved to {path}", file=sys.stderr)
            raise
        bar.close()
    if store is None:
        return True
    done = store.existing(ids)
    if len(done) == len(ids) and path is not None:
        checkpoint.remove(path)
    return len(done) == len(ids)


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
    group([cfg])  # refuse a run that cannot fit before the store is touched
    st = _open(store)
    if st is not None and not force and st.existing([cfg.run_id]):
        return st.summary(cfg.run_id)
    (res,) = execute([cfg], st, progress=progress, replace=force)
    return res.summary()


def sweep(
    spec: SweepSpec | dict[str, Any] | str | Path,
    overrides: list[str] | dict[str, Any] | None = None,
    store: Store | str | Path = DEFAULT_PATH,
    pack_size: int | None = None,
    progress: bool = False,
    workers: int | None = None,
    backend: str = "local",
    **backend_options: Any,
) -> pd.DataFrame:
    """Run every run of the sweep not yet in the store; return the sweep's runs as a DataFrame.

    Unfinished packs continue from their last checkpoint, so calling this again after a crash or
    Ctrl-C resumes the sweep. `workers` > 1 trains packs in that many local processes; `backend="ray"`
    runs each pack as a Ray task (see groklab.executors.ray_backend)."""
    spec = load_spec(spec, overrides)
    configs = expand(spec)
    group(configs, pack_size)  # validate pack_size before touching the store
    if workers is None:
        workers = default_workers()
    if workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {workers}")
    if backend not in ("local", "ray"):
        raise ConfigError(f"--backend: got {backend!r}; allowed: local, ray")
    st = _open(store)
    assert st is not None
    ids = [c.run_id for c in configs]
    st.add_sweep(spec.name, spec.model_dump(mode="json"), ids)
    done = st.existing(ids)
    if progress:
        print(f"sweep {spec.name}: {len(ids)} runs, {len(done)} already in {st.path}, {len(ids) - len(done)} to train",
              file=sys.stderr)
    if backend == "ray":
        from groklab.executors import ray_backend

        trained = ray_backend.execute(configs, st, sweep_name=spec.name, pack_size=pack_size, progress=progress,
                                      **backend_options)
    elif workers == 1:
        trained = len(execute(configs, st, sweep_name=spec.name, pack_size=pack_size, progress=progress))
    else:
        trained = _run_workers(spec, st, pack_size, workers, progress, ids)
    df = st.runs(sweep=spec.name)
    df.attrs["sweep"] = spec.name
    df.attrs["trained"] = trained  # runs this call trained (the rest were stored already or by others)
    return df


def default_workers() -> int:
    """One worker per CUDA device, or one on CPU."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def _worker(spec: dict[str, Any], store_path: str, pack_size: int | None, index: int, workers: int) -> int:
    """One local worker process: claims and trains packs of the sweep until none is left.
    With CUDA, worker i trains on device i mod the device count (`train.device: auto` follows it)."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    if torch.cuda.is_available():
        torch.cuda.set_device(index % torch.cuda.device_count())
    s = SweepSpec.model_validate(spec)
    with Store(store_path) as st:
        res = execute(expand(s), st, sweep_name=s.name, pack_size=pack_size, progress=False, start_at=index)
    return len(res)


def _run_workers(spec: SweepSpec, st: Store, pack_size: int | None, workers: int, progress: bool, ids: list[str]) -> int:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = [pool.submit(_worker, spec.model_dump(mode="json"), str(st.path), pack_size, i, workers)
                   for i in range(workers)]
        bar = tqdm(total=len(ids), desc=f"sweep {spec.name} ({workers} workers)", unit="run", file=sys.stderr,
                   disable=not progress, dynamic_ncols=True)
        try:
            while not all(f.done() for f in futures):
                time.sleep(1.0)
                _update_overall(bar, st, ids)
        except KeyboardInterrupt:
            print("\ninterrupted: workers are checkpointing", file=sys.stderr)
            for f in futures:
                f.exception()
            raise
        finally:
            _update_overall(bar, st, ids)
            bar.close()
        return sum(f.result() for f in futures)


def _update_overall(bar: tqdm, st: Store, ids: list[str]) -> None:
    rows = st.conn.execute(
        f"SELECT status, COUNT(*) FROM runs WHERE run_id IN ({','.join('?' * len(ids))}) GROUP BY status", ids
    ).fetchall()
    counts = dict(rows)
    bar.update(sum(counts.values()) - bar.n)
    bar.set_postfix(grokked=counts.get("grokked", 0), diverged=counts.get("diverged", 0))
