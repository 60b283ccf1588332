"""The local worker-process pool: `workers` processes each run the in-process executor on the same store.

The store's leases keep the workers from training a run twice; each starts at a different pack.
Processes are spawned, not forked, so CUDA and torch's thread pools start clean in each.
"""

from __future__ import annotations

import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm

from groklab import threads
from groklab.config import Config
from groklab.executors.base import StopFlag
from groklab.executors.local import train_runs
from groklab.store import Store


def default_workers() -> int:
    """One worker per CUDA device, or one on CPU."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


class PoolExecutor:
    """Packs trained by `workers` local processes at once. A progress bar counts the runs they store, and one bar
    per worker follows the pack it trains (step of its budget), as one process's own bar does.

    The workers take their orders from this process, not from the terminal: Ctrl-C (to the whole process group or to
    this process alone) or SIGTERM to this process sends each worker one SIGTERM, and they checkpoint and stop; a
    second Ctrl-C sends another, and they stop at once, as one process does."""

    def __init__(self, workers: int):
        self.workers = workers

    def execute(self, configs: list[Config], store: Store, sweep_name: str | None = None, pack_size: int | None = None,
                progress: bool = True) -> int:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        workers, ids = self.workers, [c.run_id for c in configs]
        ctx = multiprocessing.get_context("spawn")
        steps = ctx.Queue() if progress else None  # (worker, pack label, step, total) from the workers
        budget = threads.configure()  # this process's thread budget (--threads), shared by the workers
        with _sigterm_interrupts(), ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker,
                                                         initargs=(steps,)) as pool:
            futures = [pool.submit(_worker, configs, str(store.path), sweep_name, pack_size, i, workers, budget)
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
                _update_packs(packs, steps)
            except KeyboardInterrupt:
                print("\ninterrupted: workers are checkpointing", file=sys.stderr)
                _stop(pool)
                try:
                    for f in futures:
                        f.exception()
                except KeyboardInterrupt:  # a second Ctrl-C: the workers give up at once
                    _stop(pool)
                raise
            finally:
                _update_overall(bar, store, ids)
                for b in packs:
                    b.close()
                bar.close()
            return sum(f.result() for f in futures)


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM to this process stops the sweep as Ctrl-C does (the main thread only can set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _stop(pool: Any) -> None:
    """One SIGTERM to each live worker: it checkpoints its pack and stops (a second one: at once)."""
    for proc in list(pool._processes.values()):  # ProcessPoolExecutor has no public handle on its processes
        if proc.is_alive():
            proc.terminate()


_steps: Any = None  # this worker's progress queue


def _start_worker(steps: Any) -> None:
    """In each worker as it starts: it reports progress on `steps`, and stops on its parent's SIGTERM only, so that
    a Ctrl-C to the whole process group counts once (the parent forwards it)."""
    global _steps
    _steps = steps
    if steps is not None:
        steps.cancel_join_thread()  # exiting never waits for a parent that stopped reading
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    StopFlag.signals = (signal.SIGTERM,)


def _worker(configs: list[Config], store_path: str, sweep_name: str | None, pack_size: int | None, index: int,
            workers: int, budget: int) -> int:
    """One worker process: leases and trains packs of the sweep until none is left, putting (index, pack label,
    step, total) on the progress queue after every evaluation. With CUDA, worker i trains on device i mod the
    device count (`train.device: auto` follows it)."""
    import torch

    threads.configure(max(1, budget // workers))
    if torch.cuda.is_available():
        torch.cuda.set_device(index % torch.cuda.device_count())

    def on_step(label: str, step: int, total: int) -> None:
        _steps.put((index, label, step, total))

    with Store(store_path) as st:
        res = train_runs(configs, st, sweep_name=sweep_name, pack_size=pack_size, progress=False, start_at=index,
                         on_step=None if _steps is None else on_step)
    return len(res)


def _update_packs(bars: list[tqdm], steps: Any) -> None:
    """Move each worker's bar to the steps it reported, naming every pack it started."""
    while steps is not None:
        try:
            index, label, step, total = steps.get_nowait()
        except queue.Empty:
            break
        bar, desc = bars[index], f"worker {index + 1}: {label}"
        if bar.desc != desc or bar.total != total or step < bar.n:
            bar.reset(total=total)
            bar.set_description_str(desc)
        bar.update(step - bar.n)
    for bar in bars:
        bar.refresh()


def _update_overall(bar: tqdm, st: Store, ids: list[str]) -> None:
    rows = st.conn.execute(
        f"SELECT status, COUNT(*) FROM runs WHERE run_id IN ({','.join('?' * len(ids))}) GROUP BY status", ids
    ).fetchall()
    counts = dict(rows)
    bar.update(sum(counts.values()) - bar.n)
    bar.set_postfix(grokked=counts.get("grokked", 0), diverged=counts.get("diverged", 0))
