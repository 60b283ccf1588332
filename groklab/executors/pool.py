"""The local worker-process pool: `workers` processes each run the in-process executor on the same store.

The store's leases keep the workers from training a run twice; each starts at a different pack.
Processes are spawned, not forked, so CUDA and torch's thread pools start clean in each.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from groklab import threads
from groklab.config import Config
from groklab.executors.local import train_runs
from groklab.store import Store


def default_workers() -> int:
    """One worker per CUDA device, or one on CPU."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


class PoolExecutor:
    """Packs trained by `workers` local processes at once; a progress bar counts the runs they store."""

    def __init__(self, workers: int):
        self.workers = workers

    def execute(self, configs: list[Config], store: Store, sweep_name: str | None = None, pack_size: int | None = None,
                progress: bool = True) -> int:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        workers, ids = self.workers, [c.run_id for c in configs]
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            budget = threads.configure()  # this process's thread budget (--threads), shared by the workers
            futures = [pool.submit(_worker, configs, str(store.path), sweep_name, pack_size, i, workers, budget)
                       for i in range(workers)]
            bar = tqdm(total=len(ids), desc=f"sweep {sweep_name} ({workers} workers)", unit="run", file=sys.stderr,
                       disable=not progress, dynamic_ncols=True)
            try:
                while not all(f.done() for f in futures):
                    time.sleep(1.0)
                    _update_overall(bar, store, ids)
            except KeyboardInterrupt:
                print("\ninterrupted: workers are checkpointing", file=sys.stderr)
                for f in futures:
                    f.exception()
                raise
            finally:
                _update_overall(bar, store, ids)
                bar.close()
            return sum(f.result() for f in futures)


def _worker(configs: list[Config], store_path: str, sweep_name: str | None, pack_size: int | None, index: int,
            workers: int, budget: int) -> int:
    """One worker process: leases and trains packs of the sweep until none is left.
    With CUDA, worker i trains on device i mod the device count (`train.device: auto` follows it)."""
    import torch

    threads.configure(max(1, budget // workers))
    if torch.cuda.is_available():
        torch.cuda.set_device(index % torch.cuda.device_count())
    with Store(store_path) as st:
        res = train_runs(configs, st, sweep_name=sweep_name, pack_size=pack_size, progress=False, start_at=index)
    return len(res)


def _update_overall(bar: tqdm, st: Store, ids: list[str]) -> None:
    rows = st.conn.execute(
        f"SELECT status, COUNT(*) FROM runs WHERE run_id IN ({','.join('?' * len(ids))}) GROUP BY status", ids
    ).fetchall()
    counts = dict(rows)
    bar.update(sum(counts.values()) - bar.n)
    bar.set_postfix(grokked=counts.get("grokked", 0), diverged=counts.get("diverged", 0))
