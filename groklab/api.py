"""The Python entry points: `run` (one run, a pack of one) and `sweep` (a sweep file, on an executor)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

from groklab import threads
from groklab.analysis import phases
from groklab.config import Config, ConfigError, make_config
from groklab.executors.base import Executor
from groklab.executors.local import LocalExecutor, train_runs
from groklab.executors.pool import PoolExecutor, default_workers
from groklab.executors.ray_backend import RayExecutor
from groklab.store import DEFAULT_PATH, Store
from groklab.sweep import SweepSpec, expand, group, load_spec


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
    n_threads: int | None = None,
) -> dict[str, Any]:
    """Train one run and return its JSON summary. A run already in the store is not trained again
    (its stored summary is returned) unless `force`; one that differs from a stored run only in a larger
    `train.steps` continues it; `store=None` keeps nothing on disk. `n_threads`: as in `sweep`."""
    cfg = make_config(config, overrides)
    group([cfg])  # refuse a run that cannot fit before the store is touched
    threads.configure(n_threads)
    st = _open(store)
    if st is not None and not force and st.existing([cfg.run_id]):
        return st.summary(cfg.run_id)
    (res,) = train_runs([cfg], st, progress=progress, replace=force)
    return res.summary()


def sweep(
    spec: SweepSpec | dict[str, Any] | str | Path,
    overrides: list[str] | dict[str, Any] | None = None,
    store: Store | str | Path = DEFAULT_PATH,
    pack_size: int | None = None,
    progress: bool = False,
    workers: int | None = None,
    backend: str = "local",
    n_threads: int | None = None,
    **backend_options: Any,
) -> pd.DataFrame:
    """Run every run of the sweep not yet in the store; return the sweep's runs as a DataFrame.

    Unfinished packs continue from their last checkpoint, so calling this again after a crash or
    Ctrl-C resumes the sweep. `workers` > 1 trains packs in that many local processes; `backend="ray"`
    runs each pack as a Ray task (see groklab.executors.ray_backend). The sweep's name then means this
    expansion: runs of an earlier one stay in the store but leave the sweep (`df.attrs["change"]` says what
    changed). A run that differs from a stored one only in a larger `train.steps` continues it. `n_threads`:
    CPU threads (default $GROKLAB_THREADS, else the idle cores; see groklab.threads)."""
    spec = load_spec(spec, overrides)
    phases.rule_from(spec.analysis, f"sweep {spec.name}: analysis")  # a bad analysis section fails before training
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
    threads.configure(n_threads)
    ids = [c.run_id for c in configs]
    change = st.add_sweep(spec.name, spec.model_dump(mode="json"), ids)
    if change.message():
        print(change.message(), file=sys.stderr)
    done = st.existing(ids)
    extending = st.shorter_runs([c for c in configs if c.run_id not in done])
    if progress:
        print(f"sweep {spec.name}: {len(ids)} runs, {len(done)} already in {st.path}, {len(ids) - len(done)} to train"
              + (f" ({len(extending)} continue a stored run with a smaller train.steps)" if extending else ""),
              file=sys.stderr)
    trained = _executor(backend, workers, backend_options).execute(configs, st, sweep_name=spec.name,
                                                                    pack_size=pack_size, progress=progress)
    df = st.runs(sweep=spec.name)
    df.attrs["sweep"] = spec.name
    df.attrs["trained"] = trained  # runs this call trained (the rest were stored already or by others)
    df.attrs["change"] = change  # what this expansion changed in the sweep (store.SweepChange)
    return df


def _executor(backend: str, workers: int, options: dict[str, Any]) -> Executor:
    """Ray tasks for `backend="ray"` (with its options); else local worker processes, or this process alone."""
    if backend == "ray":
        return RayExecutor(**options)
    return LocalExecutor() if workers == 1 else PoolExecutor(workers)
