"""The in-process executor: packs train one after another in this process (also inside each pool worker)."""

from __future__ import annotations

import time
from collections.abc import Callable

from groklab import engine
from groklab.config import Config
from groklab.executors.base import Lease, StopFlag, load_init_weights, train_stored_pack
from groklab.store import Store
from groklab.sweep import group


def train_runs(
    configs: list[Config],
    store: Store | None,
    sweep_name: str | None = None,
    pack_size: int | None = None,
    progress: bool = True,
    replace: bool = False,
    start_at: int = 0,
    wait: bool = True,
    on_step: Callable[[str, int, int], None] | None = None,
) -> list[engine.RunResult]:
    """Train every run of `configs` not yet in the store, pack by pack, each run stored the moment
    it finishes. Packs are leased in the store (so concurrent sweeps and workers train each run
    once), checkpointed every `train.checkpoint_every` steps, and resumed from their checkpoint.
    `start_at` rotates the order packs are tried in (workers start at different packs); with `wait`,
    runs leased by another live process are waited for, and taken over if that process dies.
    `on_step(pack label, step, total)` follows each pack after every evaluation."""
    packs = group(configs, pack_size)
    order = list(range(len(packs)))
    order = order[start_at % len(order):] + order[: start_at % len(order)] if order else order
    init_weights = load_init_weights(configs, store)
    lease = Lease(store) if store is not None else None
    results: list[engine.RunResult] = []

    def on_finish(res: engine.RunResult) -> None:
        results.append(res)
        if store is not None and lease is not None:
            store.write_run(res, sweep=sweep_name, replace=replace)
            lease.release([res.run_id])

    with StopFlag() as stop:
        try:
            pending = order
            while pending:
                left = []
                for i in pending:
                    if not train_stored_pack(packs[i], f"pack {i + 1}/{len(packs)}", store, lease, init_weights,
                                             on_finish, progress, replace, stop, on_step):
                        left.append(i)
                if not left or not wait:
                    break
                if stop():  # interrupted while waiting: stop here rather than take over another's runs
                    raise KeyboardInterrupt
                time.sleep(1.0)  # runs held by another live process: wait for them to land
                pending = left
        except engine.Interrupted:
            raise KeyboardInterrupt from None
        finally:
            if lease is not None:
                lease.release()
    return results


class LocalExecutor:
    """Every pack in this process, one after another."""

    def execute(self, configs: list[Config], store: Store, sweep_name: str | None = None, pack_size: int | None = None,
                progress: bool = True) -> int:
        return len(train_runs(configs, store, sweep_name=sweep_name, pack_size=pack_size, progress=progress))
