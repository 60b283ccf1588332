"""The optimizer update of a pack: torch's fused Adam(W) kernel against groklab's elementwise update.

    python bench/optimizer.py [--threads N] [--steps 200]

For each (runs R, parameters per run P) it times `optim.step` on flat [R, P] parameters both ways,
alternating, in one process, and prints microseconds per update and the ratio. P = 74,593 is the
benchmark MLP (w128, mod 97), 422,400 the 2-layer width-128 transformer.
"""

from __future__ import annotations

import argparse
import time

import torch

from groklab import optim, threads
from groklab.config import make_config


def per_update(fused: bool, runs: int, size: int, steps: int) -> float:
    elementwise = optim._fusable
    if not fused:
        optim._fusable = lambda *a: False
    try:
        cfg = make_config(None)
        g = torch.Generator().manual_seed(0)
        p, grad = torch.randn(runs, size, generator=g), torch.randn(runs, size, generator=g) * 1e-3
        state, hp = optim.OptimState(), optim.Hyper.from_configs([cfg] * runs, torch.device("cpu"))
        lr = optim.lr_at(hp, 100)
        optim.step(cfg.optim, p, grad, state, hp, lr, None)
        t = time.perf_counter()
        for _ in range(steps):
            optim.step(cfg.optim, p, grad, state, hp, lr, None)
        return (time.perf_counter() - t) / steps
    finally:
        optim._fusable = elementwise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=200)
    a = ap.parse_args()
    n = threads.configure(a.threads)
    print(f"torch {torch.__version__}, {n} thread(s); AdamW, {a.steps} updates per measurement, 3 alternating rounds, "
          "best of each")
    print("| R | P | elementwise µs | fused µs | fused speed-up |\n|---|---|---|---|---|")
    for runs, size in ((1, 74_593), (8, 74_593), (64, 74_593), (1, 422_400), (8, 422_400)):
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(3):
            for fused in (False, True):
                times[fused].append(per_update(fused, runs, size, max(10, a.steps // runs)))
        e, f = min(times[False]), min(times[True])
        print(f"| {runs} | {size:,} | {1e6 * e:.0f} | {1e6 * f:.0f} | {e / f:.1f}× |", flush=True)


if __name__ == "__main__":
    main()
