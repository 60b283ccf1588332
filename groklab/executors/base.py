"""What every executor shares, written once: train one pack from its checkpoint and hand each run on
the moment it finishes; lease runs in the store so concurrent processes train each run once.

Executors differ only in where packs train (this process, local worker processes, Ray tasks) and so
where a pack's checkpoint lives (a file beside the store, or the Ray keeper actor): `Checkpoints`.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from groklab import checkpoint, engine
from groklab.config import Config, ConfigError
from groklab.store import Store
from groklab.sweep import pack_id

OnFinish = Callable[[engine.RunResult], None]


class Executor(Protocol):
    """Trains the runs of a sweep that are not yet in the store, storing each as it finishes."""

    def execute(self, configs: list[Config], store: Store, sweep_name: str | None = None, pack_size: int | None = None,
                progress: bool = True) -> int:
        """Train `configs` in packs of at most `pack_size`; return how many runs this call trained."""
        ...


class Checkpoints(Protocol):
    """Where one pack's latest checkpoint (a `Pack.state_dict()`) is kept between attempts."""

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...


class FileCheckpoints:
    """A pack's checkpoint as an atomic, checksummed file beside the store (local and pool executors)."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict[str, Any] | None:
        return checkpoint.load(self.path)

    def save(self, state: dict[str, Any]) -> None:
        checkpoint.save(self.path, state)

    def remove(self) -> None:
        checkpoint.remove(self.path)

    def __str__(self) -> str:
        return str(self.path)


class StopFlag:
    """Set by SIGINT/SIGTERM while a sweep trains: the pack checkpoints and stops at the next step. A pool worker
    listens to SIGTERM only (its parent forwards Ctrl-C; executors.pool)."""

    signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
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


def load_init_weights(configs: list[Config], store: Store | None) -> dict[str, engine.Weights]:
    """The stored final weights every `train.init_from` of `configs` names, loaded once each, before any
    training: a missing one is bad input, better refused now than after other packs have trained."""
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


def train_pack(
    pack: list[Config],
    todo: list[Config],
    checkpoints: Checkpoints | None,
    init_weights: dict[str, engine.Weights],
    on_finish: OnFinish,
    resume: bool = True,
    should_stop: Callable[[], bool] | None = None,
    label: str | None = None,
    heartbeat: Callable[[int, int], None] | None = None,
    starts: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Train the runs `todo` of `pack`, each handed to `on_finish` as it finishes, checkpointing as it goes.

    With `resume`, the pack's checkpoint continues: its runs not in `todo` (finished since, or trained
    by another process) are dropped. Runs of `todo` it lacks start from `starts` (a stored shorter run's
    state, `checkpoint.extended`) where given, in packs of runs that stopped at the same step, else from
    scratch. `label` names the progress bar (None: no bar); `heartbeat(step, total)` is called after every
    evaluation with the pack's step and its budget."""
    if not todo:
        return
    starts = starts or {}
    sd = checkpoints.load() if checkpoints is not None and resume else None
    by_id = {c.run_id: c for c in pack}
    mine = {c.run_id for c in todo}
    batches: list[tuple[list[Config], dict | None]] = []
    rest = todo
    if sd is not None and set(sd["run_ids"]) <= set(by_id):
        batches.append(([by_id[r] for r in sd["run_ids"]], sd))
        rest = [c for c in todo if c.run_id not in sd["run_ids"]]
    by_step: dict[int, list[Config]] = {}
    for c in rest:
        if c.run_id in starts:
            by_step.setdefault(starts[c.run_id]["step"], []).append(c)
    for runs in by_step.values():
        batches.append((runs, checkpoint.join([starts[c.run_id] for c in runs])))
    fresh = [c for c in rest if c.run_id not in starts]
    if fresh:
        batches.append((fresh, None))

    def save(p: engine.Pack) -> None:
        checkpoints.save(p.state_dict())

    for configs, state in batches:
        p = engine.Pack(configs, init_weights)
        if state is not None:
            p.load_state_dict(state)
            drop = [r for r, c in enumerate(p.configs) if c.run_id not in mine]
            if drop:  # finished after the checkpoint, or now trained by another process
                p.compact([r for r in range(p.size) if r not in drop])
            for res in p.release_spent():
                on_finish(res)
            if not p.size:
                continue
        total = max(c.train.steps for c in p.configs)
        bar = tqdm(total=total, initial=p.step, desc=f"{label} ({p.size} runs)", unit="step", file=sys.stderr,
                   disable=label is None, dynamic_ncols=True, leave=True)

        def update(step: int, active: int, grokked: int, bar: tqdm = bar, total: int = total) -> None:
            bar.update(step - bar.n)
            bar.set_postfix(active=active, grokked=grokked, refresh=False)
            if heartbeat is not None:
                heartbeat(step, total)

        try:
            p.run(on_finish=on_finish, progress=update, checkpoint=save if checkpoints is not None else None,
                  should_stop=should_stop, resumed=state is not None)
        except engine.Interrupted:
            bar.close()
            print(f"\ninterrupted at step {p.step}: checkpoint saved to {checkpoints}", file=sys.stderr)
            raise
        bar.close()


def extension_starts(configs: list[Config], store: Store) -> dict[str, dict[str, Any]]:
    """Starting states for runs that extend a stored shorter run of the same experiment (only `train.steps`
    differs, and the lr schedule does not depend on it): {run_id: state}. Needs the stored run's training
    state, which `train.save_weights` (the default) keeps."""
    starts = {}
    sources = store.shorter_runs(configs)
    for c in configs:
        src = sources.get(c.run_id)
        weights = store.load_weights(src) if src is not None else None
        if weights is not None and "state" in weights:
            starts[c.run_id] = checkpoint.extended(weights["state"], c)
    return starts


class Lease:
    """This process's hold on runs in the store, so concurrent sweeps and workers train each run once.

    Kept alive by a heartbeat at most every 10 s; runs of a holder that stops beating (it died) go to
    the next process that asks."""

    def __init__(self, store: Store):
        self.store = store
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._last_beat = time.time()

    def take(self, run_ids: list[str]) -> set[str]:
        """The runs of `run_ids` now held by this process: neither stored nor held by another live one."""
        return self.store.lease(run_ids, self.owner)

    def beat(self) -> None:
        if time.time() - self._last_beat > 10:
            self.store.heartbeat(self.owner)
            self._last_beat = time.time()

    def release(self, run_ids: Iterable[str] | None = None) -> None:
        """Let go of `run_ids`, or of every run this process holds."""
        self.store.release(self.owner, run_ids)


def train_stored_pack(
    pack: list[Config], label: str, store: Store | None, lease: Lease | None, init_weights: dict[str, engine.Weights],
    on_finish: OnFinish, progress: bool, replace: bool, should_stop: Callable[[], bool],
    on_step: Callable[[str, int, int], None] | None = None,
) -> bool:
    """Train what this process can lease of one pack, resuming from the pack's checkpoint file beside the
    store; False if some runs are still held by another live process. `replace` retrains stored runs
    (run --force) from scratch; without a store nothing is leased or checkpointed. `on_step(label, step, total)`
    follows the pack's progress after every evaluation (a worker reports it to the process that shows it)."""
    ids = [c.run_id for c in pack]
    if store is None or lease is None or replace:
        todo = pack
    else:
        stored = store.existing(ids)
        won = lease.take([r for r in ids if r not in stored])
        todo = [c for c in pack if c.run_id in won]
        if not todo:
            return len(stored) == len(ids)  # False: some runs are held by another live process
    ckpt = FileCheckpoints(store.checkpoint_dir / f"{pack_id(pack)}.pt") if store is not None else None
    starts = extension_starts(todo, store) if store is not None and not replace else {}

    def heartbeat(step: int, total: int) -> None:
        if lease is not None:
            lease.beat()
        if on_step is not None:
            on_step(label, step, total)

    train_pack(pack, todo, ckpt, init_weights, on_finish, resume=not replace, should_stop=should_stop,
               label=label if progress else None, heartbeat=heartbeat, starts=starts)
    if store is None or ckpt is None:
        return True
    done = store.existing(ids)
    if len(done) == len(ids):
        ckpt.remove()
    return len(done) == len(ids)
