"""Ray executor: each pack is a Ray task; results flow back to the store on the driver.

Workers need no shared filesystem: a small actor (`Keeper`) holds each pack's latest checkpoint
and the runs it has finished, and the driver drains finished runs into the SQLite store as they
arrive. A task that fails or is pre-empted is retried by Ray (`max_retries`) and resumes from the
pack's last checkpoint in the keeper. Install with `pip install 'groklab[ray]'`.

    groklab sweep study.yaml --backend ray                       # local Ray started for you
    RAY_ADDRESS=ray://head:10001 groklab sweep study.yaml --backend ray --gpus-per-pack 0.25
"""

from __future__ import annotations

import io
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from groklab import denormals, engine
from groklab.config import Config, ConfigError, make_config
from groklab.executors.base import extension_starts, load_init_weights, train_pack
from groklab.store import Store
from groklab.sweep import group, pack_id


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend: 'ray' needs Ray; pip install 'groklab[ray]'") from None
    return ray


def _to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _from_bytes(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=False)


class Keeper:
    """Per pack: the latest checkpoint, the runs finished so far, and those not yet collected by the driver."""

    def __init__(self) -> None:
        self.checkpoints: dict[str, bytes] = {}
        self.finished: dict[str, set[str]] = {}
        self.results: dict[str, list[bytes]] = {}

    def put_checkpoint(self, pid: str, data: bytes) -> None:
        self.checkpoints[pid] = data

    def get_checkpoint(self, pid: str) -> bytes | None:
        return self.checkpoints.get(pid)

    def add_result(self, pid: str, run_id: str, data: bytes) -> None:
        self.finished.setdefault(pid, set()).add(run_id)
        self.results.setdefault(pid, []).append(data)

    def finished_runs(self, pid: str) -> set[str]:
        """The pack's runs already finished: a retried task must not train them again."""
        return self.finished.get(pid, set())

    def pop_results(self) -> list[bytes]:
        out = [r for rs in self.results.values() for r in rs]
        self.results.clear()
        return out

    def flush(self) -> None:
        """Called by a task before it returns: every call it made before has then been applied."""


class KeeperCheckpoints:
    """A pack's checkpoint kept in the keeper actor: Ray workers share no filesystem."""

    def __init__(self, keeper: Any, pid: str):
        self.keeper, self.pid = keeper, pid

    def load(self) -> dict[str, Any] | None:
        blob = _ray().get(self.keeper.get_checkpoint.remote(self.pid))
        return _from_bytes(blob) if blob is not None else None

    def save(self, state: dict[str, Any]) -> None:
        self.keeper.put_checkpoint.remote(self.pid, _to_bytes(state))

    def __str__(self) -> str:
        return f"the Ray keeper (pack {self.pid})"


def train_pack_task(cfg_dicts: list[dict], pid: str, keeper: Any, init_weights: dict, threads: int,
                    starts: dict[str, dict[str, Any]]) -> int:
    """Body of the Ray task: train one pack, resuming from the keeper's checkpoint if there is one, and
    continuing runs that extend a stored shorter run from its state (`starts`)."""
    ray = _ray()
    torch.set_num_threads(max(1, threads))
    denormals.configure()  # start torch's threads flushing denormals, where this worker process is fresh
    configs = [make_config(d) for d in cfg_dicts]
    finished = ray.get(keeper.finished_runs.remote(pid))
    todo = [c for c in configs if c.run_id not in finished]
    trained = []

    def on_finish(res: engine.RunResult) -> None:
        keeper.add_result.remote(pid, res.run_id, _to_bytes(res))
        trained.append(res.run_id)

    train_pack(configs, todo, KeeperCheckpoints(keeper, pid), init_weights, on_finish, starts=starts)
    ray.get(keeper.flush.remote())
    return len(trained)


@dataclass
class RayExecutor:
    """One Ray task per pack, with these resources each; a failed task is retried `max_retries` times."""

    address: str | None = None
    gpus_per_pack: float = 0.0
    cpus_per_pack: float = 1.0
    max_retries: int = 3

    def execute(self, configs: list[Config], store: Store, sweep_name: str | None = None, pack_size: int | None = None,
                progress: bool = True) -> int:
        """Train every run of `configs` not yet stored, one Ray task per pack; returns runs stored."""
        ray = _ray()
        stored = store.existing([c.run_id for c in configs])
        packs = [[c for c in p if c.run_id not in stored] for p in group(configs, pack_size)]
        packs = [p for p in packs if p]
        if not packs:
            return 0
        init_weights = load_init_weights([c for p in packs for c in p], store)
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address or os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                     log_to_driver=False, ignore_reinit_error=True)
        try:
            keeper = ray.remote(Keeper).remote()
            task = ray.remote(train_pack_task).options(num_cpus=self.cpus_per_pack, num_gpus=self.gpus_per_pack,
                                                       max_retries=self.max_retries, retry_exceptions=False)
            weights_ref = ray.put(init_weights)
            starts = extension_starts([c for p in packs for c in p], store)
            refs = [task.remote([c.resolved() for c in p], pack_id(p), keeper, weights_ref, int(self.cpus_per_pack),
                                {c.run_id: starts[c.run_id] for c in p if c.run_id in starts})
                    for p in packs]
            total = sum(len(p) for p in packs)
            bar = tqdm(total=total, desc=f"ray: {len(packs)} packs", unit="run", file=sys.stderr, disable=not progress)
            written = 0
            pending = list(refs)
            while True:
                _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0) if pending else ([], [])
                for data in ray.get(keeper.pop_results.remote()):
                    store.write_run(_from_bytes(data), sweep=sweep_name)
                    written += 1
                    bar.update(1)
                if not pending:
                    break
                time.sleep(0.2)
            ray.get(refs)  # re-raise a task that failed after all retries
            for data in ray.get(keeper.pop_results.remote()):
                store.write_run(_from_bytes(data), sweep=sweep_name)
                written += 1
                bar.update(1)
            bar.close()
            return written
        finally:
            if started_here:
                ray.shutdown()
