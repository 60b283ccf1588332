"""The local worker-process pool: `workers` processes each run the in-process executor on the same store.

The store's leases keep the workers from training a run twice; each starts at a different pack.
Processes are spawned, not forked, so CUDA and torch's thread pools start clean in each.
"""

from __future__ import annotations

import sys
import time
from queue import Queue

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
    """Packs trained by `workers` local processes at once. A progress bar counts the runs they store, and one bar
    per worker follows the pack it trains (step of its budget), as one process's own bar does."""

    def __init__(self, workers: int):
        self.workers = workers

    def execute(self, configs: list[Config], store: Store, sweep_name: str | None = None, pack_size: int | None = None,
                progress: bool = True) -> int:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        workers, ids = self.workers, [c.run_id for c in configs]
        ctx = multiprocessing.get_context("spawn")
        with ctx.Manager() as manager, ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            steps = manager.Queue() if progress else None  # (worker, pack label, step, total) from the workers
            budget = threads.configure()  # this process's thread budget (--threads), shared by the workers
            futures = [pool.submit(_worker, configs, str(store.path), sweep_name, pack_size, i, workers, budget, steps)
                       for i in range(workers)]
            bar = tqdm(total=len(ids), desc=f"sweep {sweep_name} ({workers} workers)", unit="run", file=sys.stderr,
                       disable=not progress, dynamic_ncols=True)
            packs = [tqdm(total=0, desc=f"worker {i + 1}: waiting for a pack", unit="step", file=sys.stderr,
                          position=i + 1, disable=not progress, dynamic_ncols=True, leave=False) for i in range(workers)]
            try:
                while not all(f.done() for f in futures):
                    time.sleep(1.0)
                    _update_overall(bar, store, ids)
                    _update_packs(packs, steps)
            except KeyboardInterrupt:
                print("\ninterrupted: workers are checkpointing", file=sys.stderr)
                for f in futures:
                    f.exception()
                raise
            finally:
                _update_overall(bar, store, ids)
                _update_packs(packs, steps)
                for b in packs:
                    b.close()
                bar.close()
            return sum(f.result() for f in futures)


def _worker(configs: list[Config], store_path: str, sweep_name: str | None, pack_size: int | None, index: int,
            workers: int, budget: int, steps: Queue | None = None) -> int:
    """One worker process: leases and trains packs of the sweep until none is left, putting (index, pack label,
    step, total) on `steps` after every evaluation. With CUDA, worker i trains on device i mod the device count
    (`train.device: auto` follows it)."""
    import torch

    threads.configure(max(1, budget // workers))
    if torch.cuda.is_available():
        torch.cuda.set_device(index % torch.cuda.device_count())

    def on_step(label: str, step: int, total: int) -> None:
        try:
            steps.put((index, label, step, total))
        except (OSError, EOFError):  # the manager process is gone (the whole group was signalled): keep training
            pass

    with Store(store_path) as st:
        res = train_runs(configs, st, sweep_name=sweep_name, pack_size=pack_size, progress=False, start_at=index,
                         on_step=None if steps is None else on_step)
    return len(res)


def _update_packs(bars: list[tqdm], steps: Queue | None) -> None:
    """Move each worker's bar to the latest step it reported."""
    latest: dict[int, tuple[str, int, int]] = {}
    try:
        while steps is not None and not steps.empty():
            index, label, step, total = steps.get()
            latest[index] = (label, step, total)
    except (OSError, EOFError):  # the manager process is gone (a signal to the whole group): bars stay as they are
        pass
    for index, (label, step, total) in latest.items():
        bar, desc = bars[index], f"worker {index + 1}: {label}"
        if bar.desc != desc or bar.total != total or step < bar.n:
            bar.reset(total=total)
            bar.set_description_str(desc, refresh=False)
        bar.update(step - bar.n)
        bar.refresh()


def _update_overall(bar: tqdm, st: Store, ids: list[str]) -> None:
    rows = st.conn.execute(
        f"SELECT status, COUNT(*) FROM runs WHERE run_id IN ({','.join('?' * len(ids))}) GROUP BY status", ids
    ).fetchall()
    counts = dict(rows)
    bar.update(sum(counts.values()) - bar.n)
    bar.set_postfix(grokked=counts.get("grokked", 0), diverged=counts.get("diverged", 0))
