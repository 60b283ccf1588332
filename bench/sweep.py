"""Sweep benchmark: wall time of one fixed small sweep with 1 worker, 2 workers and Ray local.

    python bench/sweep.py [--steps 600]

Each mode trains the same 16 runs (4 packs: batch 32/128 x two model widths, each with 2 weight
decays x 2 seeds) into a fresh store; the table gives wall seconds and the speed-up over one worker,
and checks that every mode stored identical metrics.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

import groklab


def spec(steps: int) -> dict:
    return {
        "name": "bench-sweep",
        "base": {"task": {"modulus": 31, "train_frac": 0.5}, "model": {"layers": 1, "width": 64, "heads": 4},
                 "optim": {"lr": 3e-3}, "train": {"steps": steps, "eval_every": 100}},
        "grid": {"train.batch_size": [32, 128], "model.width": [32, 64], "optim.weight_decay": [0.3, 1.0]},
        "seeds": [0, 1],
    }


def rows(db: Path) -> list:
    con = sqlite3.connect(db)
    out = con.execute("SELECT run_id, step, name, value FROM metrics ORDER BY 1, 3, 2").fetchall()
    con.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    modes = [("workers=1", {}), ("workers=2", {"workers": 2})]
    if not args.no_ray:
        modes.append(("ray local (1 CPU per pack)", {"backend": "ray"}))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in modes:
            db = Path(tmp) / f"{len(results)}.db"
            t = time.perf_counter()
            groklab.sweep(spec(args.steps), store=db, **kw)
            results.append((name, time.perf_counter() - t, rows(db)))
        base = results[0][1]
        print(f"{'mode':<28} {'wall s':>8} {'speed-up':>9}  same metrics as workers=1")
        for name, wall, r in results:
            print(f"{name:<28} {wall:8.1f} {base / wall:8.2f}x  {r == results[0][2]}")


if __name__ == "__main__":
    main()
