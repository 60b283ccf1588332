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
from typing import Any

import torch
from tqdm import tqdm

from groklab import checkpoint, engine
from groklab.config import Config, ConfigError, make_config
from groklab.store import Store


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
    """Per pack: the latest checkpoint and the finished runs not yet collected by the driver."""

    def __init__(self) -> None:
        self.checkpoints: dict[str, bytes] = {}
        self.results: dict[str, list[bytes]] = {}

    def put_checkpoint(self, pid: str, data: bytes) -> None:
        self.checkpoints[pid] = data

    def get_checkpoint(self, pid: str) -> bytes | None:
        return self.checkpoints.get(pid)

    def add_result(self, pid: str, data: bytes) -> None:
        self.results.setdefault(pid, []).append(data)

    def pop_results(self) -> list[bytes]:
        out = [r for rs in self.results.values() for r in rs]
        self.results.clear()
        return out

    def flush(self) -> None:
        """Called by a task before it returns: every call it made before has then been applied."""


def train_pack_task(cfg_dicts: list[dict], pid: str, keeper: Any, init_weights: dict, threads: int) -> int:
    """Body of the Ray task: train one pack, resuming from the keeper's checkpoint if there is one."""
    ray = _ray()
    torch.set_num_threads(max(1, threads))
    configs = [make_config(d) for d in cfg_dicts]
    by_id = {c.run_id: c for c in configs}
    blob = ray.get(keeper.get_checkpoint.remote(pid))
    state = _from_bytes(blob) if blob is not None else None
    pack = engine.Pack([by_id[r] for r in state["run_ids"]] if state else configs, init_weights)
    if state is not None:
        checkpoint.load_state_dict(pack, state)

    def on_finish(res: engine.RunResult) -> None:
        keeper.add_result.remote(pid, _to_bytes(res))

    def save(p: engine.Pack) -> None:
        keeper.put_checkpoint.remote(pid, _to_bytes(checkpoint.state_dict(p)))

    results = pack.run(on_finish=on_finish, checkpoint=save, resumed=state is not None)
    ray.get(keeper.flush.remote())
    return len(results)


def execute(
    configs: list[Config],
    store: Store,
    sweep_name: str | None = None,
    pack_size: int | None = None,
    progress: bool = True,
    address: str | None = None,
    gpus_per_pack: float = 0.0,
    cpus_per_pack: float = 1.0,
    max_retries: int = 3,
) -> int:
    """Train every run of `configs` not yet stored, one Ray task per pack; returns runs stored."""
    from groklab.sweep import _load_init_weights, group, pack_id

    ray = _ray()
    stored = store.existing([c.run_id for c in configs])
    packs = [[c for c in p if c.run_id not in stored] for p in group(configs, pack_size)]
    packs = [p for p in packs if p]
    if not packs:
        return 0
    init_weights = _load_init_weights([c for p in packs for c in p], store)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                 log_to_driver=False, ignore_reinit_error=True)
    try:
        keeper = ray.remote(Keeper).remote()
        task = ray.remote(train_pack_task).options(num_cpus=cpus_per_pack, num_gpus=gpus_per_pack,
                                                   max_retries=max_retries, retry_exceptions=False)
        weights_ref = ray.put(init_weights)
        refs = [task.remote([c.resolved() for c in p], pack_id(p), keeper, weights_ref, int(cpus_per_pack))
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
