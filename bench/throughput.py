"""Throughput: groklab packs vs the plain per-run loop, side by side in one process.

    python bench/throughput.py [--steps 6] [--sizes 1 8 64] [--quick]

For each benchmark configuration and pack size R it alternates: the plain loop (bench/plain.py) for
`steps` steps of one run, then a groklab pack of R runs for `steps` steps (fp32, then bf16). It prints
run-steps per second for each, the ratio to the plain loop, and the achieved FLOP/s (nominal model
FLOPs: 6 x matmul parameters x tokens, plus attention) against this machine's measured matmul peak.
Evaluation is not timed (both sides evaluate on the full sets; see bench/time_to_grok.py).
"""

from __future__ import annotations

import argparse
import time

import torch

from groklab.config import Config, make_config
from groklab.engine import Pack
from groklab.memory import task_shape

try:
    from bench.plain import PlainRun
except ImportError:  # run as a script from the repository root
    from plain import PlainRun

CONFIGS = {
    "a) 2L w128 transformer, batch 512": {"task": {"op": "x/y", "modulus": 97, "train_frac": 0.5},
                                          "model": {"layers": 2, "width": 128}, "train": {"batch_size": 512}},
    "a) 2L w128 transformer, batch 32": {"task": {"op": "x/y", "modulus": 97, "train_frac": 0.5},
                                         "model": {"layers": 2, "width": 128}, "train": {"batch_size": 32}},
    "b) 1L w128 transformer, full batch": {"task": {"modulus": 113, "train_frac": 0.3},
                                           "model": {"layers": 1, "width": 128}, "train": {"batch_size": 100_000}},
    "c) MLP w128, batch 64": {"task": {"modulus": 97, "train_frac": 0.5},
                              "model": {"kind": "mlp", "layers": 2, "width": 128}, "train": {"batch_size": 64}},
}


def flops_per_run_step(cfg: Config) -> float:
    n, t, v, c, _ = task_shape(cfg.task)
    b = min(cfg.train.batch_size, round(cfg.task.train_frac * n))
    d, h, layers = cfg.model.width, cfg.model.width * cfg.model.mlp_ratio, cfg.model.layers
    if cfg.model.kind == "transformer":
        matmul = layers * (4 * d * d + 2 * d * h) * t + d * c
        attention = layers * 2 * t * t * d
        return 3 * 2 * b * (matmul + attention)
    return 3 * 2 * b * (2 * d * d + (layers - 1) * d * d + d * c)


def peak(dtype: torch.dtype, n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def time_plain(cfg: Config, steps: int) -> float:
    run = PlainRun(cfg)
    run.train_step()
    t = time.perf_counter()
    for _ in range(steps):
        run.train_step()
    return steps / (time.perf_counter() - t)


def time_pack(cfg: Config, runs: int, steps: int, precision: str) -> float:
    configs = [make_config(cfg, {"train.seed": s, "train.precision": precision}) for s in range(runs)]
    pack = Pack(configs)
    pack.train_step()
    t = time.perf_counter()
    for _ in range(steps):
        pack.train_step()
    return runs * steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--quick", action="store_true", help="pack sizes 1 and 8, 3 steps")
    args = ap.parse_args()
    sizes, steps = ([1, 8], 3) if args.quick else (args.sizes, args.steps)
    p32, p16 = peak(torch.float32), peak(torch.bfloat16)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; matmul peak fp32 {p32 / 1e9:.0f} GFLOP/s, "
          f"bf16 {p16 / 1e9:.0f} GFLOP/s ({p16 / p32:.1f}x)")
    head = (f"{'config':<36} {'R':>3} {'plain rs/s':>10} {'fp32 rs/s':>10} {'x plain':>8} {'bf16 rs/s':>10} "
            f"{'x plain':>8} {'fp32 %peak':>10} {'bf16 %peak':>10}")
    print(head)
    for name, raw in CONFIGS.items():
        cfg = make_config(raw)
        f = flops_per_run_step(cfg)
        for r in sizes:
            plain = time_plain(cfg, steps)
            fp32 = time_pack(cfg, r, steps, "fp32")
            bf16 = time_pack(cfg, r, steps, "bf16")
            print(f"{name:<36} {r:>3} {plain:10.1f} {fp32:10.1f} {fp32 / plain:7.2f}x {bf16:10.1f} {bf16 / plain:7.2f}x "
                  f"{100 * fp32 * f / p32:9.1f}% {100 * bf16 * f / p16:9.1f}%", flush=True)


if __name__ == "__main__":
    main()
