"""How fast the matmuls of a training step run inside the step, against the same products run alone.

    python bench/matmul_context.py [--config a1] [--precision bf16] [--runs 1] [--steps 5]

A step's matmuls (bmm / baddbmm, forward and backward) are timed where they happen, through a dispatch mode
that wraps each call; right after each one, the same product is run again on the same operands, now hot in
the cache, and timed too. The gap between the two columns is what the step's context costs the matmuls
(operands coming from memory rather than cache, outputs freshly allocated): the part no faster kernel can
win back. Timing each call adds a little to both columns alike. Prints each distinct product (median over
`--steps` steps), then the totals per step and the FLOP/s of each. CPU only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from groklab import threads
from groklab.config import make_config
from groklab.engine import Pack

try:
    from bench.throughput import CONFIGS
except ImportError:  # run as a script from the repository root
    from throughput import CONFIGS

MATMULS = (torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default)


def flops(func: object, args: tuple) -> float:
    a, b = (args[1], args[2]) if func is torch.ops.aten.baddbmm.default else (args[0], args[1])
    return 2.0 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


class Timed(TorchDispatchMode):
    """Times every matmul in context, then again on the same, now cached, operands."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
        self.flops: dict[tuple, float] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in MATMULS:
            return func(*args, **kwargs)
        t0 = time.perf_counter()
        out = func(*args, **kwargs)
        t1 = time.perf_counter()
        func(*args, **kwargs)
        t2 = time.perf_counter()
        key = (func.__name__, *((tuple(a.shape), a.stride()) for a in args if isinstance(a, torch.Tensor)))
        self.calls[key].append((t1 - t0, t2 - t1))
        self.flops[key] = flops(func, args)
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="a1", choices=[k.split(")")[0] for k in CONFIGS])
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--runs", type=int, default=1, help="pack size R")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after 5 untimed)")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    threads.configure(a.threads)
    raw = next(v for k, v in CONFIGS.items() if k.startswith(a.config + ")"))
    # CPU only: the timings read the clock around each kernel, which on a GPU would time its launch
    over = {"train.precision": a.precision, "train.device": "cpu"}
    pack = Pack([make_config(raw, {"train.seed": s, **over}) for s in range(a.runs)])
    for _ in range(5):
        pack.train_step()
    mode = Timed()
    with mode:
        for _ in range(a.steps):
            pack.train_step()
    print(f"config {a.config}, {a.precision}, R={a.runs}, {torch.get_num_threads()} threads; per step, median of {a.steps}")
    print(f"{'op':<8} {'shapes (with strides)':<72} {'in step us':>10} {'alone us':>9} {'ratio':>6}")
    total = [0.0, 0.0, 0.0]
    for key, calls in sorted(mode.calls.items(), key=lambda kv: -sum(c[0] for c in kv[1])):
        per_step = len(calls) / a.steps
        ctx = statistics.median(c[0] for c in calls) * per_step
        alone = statistics.median(c[1] for c in calls) * per_step
        total[0] += ctx
        total[1] += alone
        total[2] += mode.flops[key] * per_step
        shapes = " x ".join(f"{list(shape)}{list(stride)}" for shape, stride in key[1:])
        print(f"{key[0]:<8} {shapes:<72} {1e6 * ctx:10.0f} {1e6 * alone:9.0f} {ctx / alone:5.1f}x")
    ctx, alone, fl = total
    print(f"\nmatmuls per step: {1e3 * ctx:.2f} ms in the step ({fl / ctx / 1e9:.0f} GFLOP/s), "
          f"{1e3 * alone:.2f} ms alone ({fl / alone / 1e9:.0f} GFLOP/s); {fl / 1e9:.2f} GFLOP; ratio {ctx / alone:.2f}x")


if __name__ == "__main__":
    main()
