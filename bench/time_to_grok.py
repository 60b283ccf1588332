"""Time to grok a fixed small study: groklab (packs, early stop after grok) vs the plain loop.

    python bench/time_to_grok.py [--plain-steps 3000]

The study: x+y mod 23, 1-layer width-64 transformer, AdamW lr 3e-3, weight decay {0.3, 1} x batch
size {64, 512} x seeds {0, 1}, evaluation every 50 steps. groklab trains it to completion (each run
stops 50 steps after grokking, budget 3000). The plain loop (bench/plain.py) trains every run one
after another for `--plain-steps` steps with the same evaluation cadence, as a user's script with a
fixed budget does; its time at the reference repositories' default budget of 100,000 steps is
extrapolated from its measured steps/s (labelled as such). The study also runs in bf16. Grok steps
are compared per cell (plain loop, groklab fp32, groklab bf16: different random streams, so they agree
within seed spread, not step for step).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import groklab
from groklab.config import make_config

try:
    from bench.plain import PlainRun
except ImportError:  # run as a script from the repository root
    from plain import PlainRun

STUDY = {
    "name": "bench-time-to-grok",
    "base": {"task": {"modulus": 23, "train_frac": 0.7}, "model": {"layers": 1, "width": 64, "heads": 4},
             "optim": {"lr": 3e-3}, "train": {"steps": 3000, "eval_every": 50, "stop": {"after_grok": 50}}},
    "grid": {"optim.weight_decay": [0.3, 1.0], "train.batch_size": [64, 512]},
    "seeds": [0, 1],
}


def plain_study(steps: int) -> tuple[float, int, dict]:
    from groklab.sweep import expand, load_spec

    grok: dict[tuple, list] = {}
    t = time.perf_counter()
    total = 0
    for cfg in expand(load_spec(STUDY)):
        run = PlainRun(make_config(cfg, {"train.steps": steps}))
        step_of_grok = None
        while run.step < steps:
            run.train_step()
            total += 1
            if run.step % 50 == 0 and step_of_grok is None and run.accuracy()[1] >= 0.99:
                step_of_grok = run.step
        grok.setdefault((cfg.optim.weight_decay, cfg.train.batch_size), []).append(step_of_grok)
    return time.perf_counter() - t, total, grok


def _order(values: list) -> list:
    """Sort grok steps with the runs that never grokked (None) last."""
    return sorted(values, key=lambda x: (x is None, x or 0))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plain-steps", type=int, default=3000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        df = groklab.sweep(STUDY, store=Path(tmp) / "g.db")
        g_wall = time.perf_counter() - t
        t = time.perf_counter()
        bf = groklab.sweep(STUDY, overrides=["train.precision=bf16"], store=Path(tmp) / "bf16.db")
        bf_wall = time.perf_counter() - t
    p_wall, p_steps, p_grok = plain_study(args.plain_steps)
    per_step = p_wall / p_steps
    runs = len(df)
    extrapolated = per_step * 100_000 * runs
    print(f"groklab, to completion:                 {g_wall:8.1f} s  ({runs} runs)")
    print(f"groklab bf16, to completion:            {bf_wall:8.1f} s")
    print(f"plain loop, {args.plain_steps} steps per run:          {p_wall:8.1f} s  ({p_wall / g_wall:.1f}x groklab)")
    print(f"plain loop, 100k steps per run (extrapolated from its measured {1 / per_step:.0f} steps/s): "
          f"{extrapolated:8.0f} s  ({extrapolated / g_wall:.0f}x groklab)")
    print(f"\n{'weight_decay':>12} {'batch':>6} {'groklab grok steps':>20} {'groklab bf16':>20} {'plain grok steps':>20}")
    for (wd, b), plain in sorted(p_grok.items()):
        cell = df[(df["optim.weight_decay"] == wd) & (df["train.batch_size"] == b)]
        ours = _order([None if v != v else int(v) for v in cell["grokked_step"].astype("float")])
        cell16 = bf[(bf["optim.weight_decay"] == wd) & (bf["train.batch_size"] == b)]
        ours16 = _order([None if v != v else int(v) for v in cell16["grokked_step"].astype("float")])
        med = statistics.median([v for v in plain if v is not None]) if any(v is not None for v in plain) else None
        print(f"{wd:>12} {b:>6} {str(ours):>20} {str(ours16):>20} {str(_order(plain)):>20}   plain median {med}")


if __name__ == "__main__":
    main()
