"""What measuring costs: each measure's overhead at its default period, side by side in one process.

    python bench/measures.py [--rounds 3] [--runs 8] [--steps 20] [--config a|b]

For one configuration and a pack of `runs` runs it times, alternating `rounds` times and taking medians:
training steps with the loss in float32 and in float64 (`train.loss_precision`, the only change to the
training step that the measurements issue brought); and one evaluation with no measures, with the
default ones (norms, stability) and with each measure alone. A measure's overhead is its extra
evaluation time over the training time between two evaluations (`train.eval_every` steps), the share of
a run's wall time it adds at its default period (every evaluation).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from groklab import threads
from groklab.config import make_config
from groklab.engine import Pack

CONFIGS = {
    "a": ("1L w128 transformer, x+y mod 97, batch 512", {"task": {"modulus": 97, "train_frac": 0.5},
                                                          "model": {"layers": 1, "width": 128},
                                                          "train": {"batch_size": 512}}),
    "b": ("1L w128 transformer, x+y mod 113, full batch (Nanda et al.)",
          {"task": {"modulus": 113, "train_frac": 0.3}, "model": {"layers": 1, "width": 128, "norm": "none"},
           "train": {"batch_size": 100_000}}),
}
SETS = {"none": [], "default (norms, stability)": ["norms", "stability"], "norms": ["norms"],
        "stability": ["stability"], "noise_scale": ["noise_scale"], "sharpness": ["sharpness"], "fourier": ["fourier"]}


def pack(base: dict, runs: int, measures: list[str], precision: str = "float64") -> Pack:
    cfgs = [make_config(base, {"train.seed": s, "metrics.measures": measures, "train.loss_precision": precision})
            for s in range(runs)]
    return Pack(cfgs)


def time_steps(p: Pack, steps: int) -> float:
    p.train_step()
    t = time.perf_counter()
    for _ in range(steps):
        p.train_step()
    return (time.perf_counter() - t) / steps


def time_eval(p: Pack) -> float:
    t = time.perf_counter()
    ev = p.evaluate()
    p.measures.at_evaluation(ev)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--config", default="a", choices=sorted(CONFIGS))
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: groklab's, the idle cores)")
    a = ap.parse_args()
    threads.configure(a.threads)
    name, base = CONFIGS[a.config]
    every = make_config(base).train.eval_every
    print(f"{name}; pack of {a.runs} runs; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"medians of {a.rounds} alternating rounds")

    step = {"float32": [], "float64": []}
    evals: dict[str, list[float]] = {k: [] for k in SETS}
    for _ in range(a.rounds):
        for prec in step:
            step[prec].append(time_steps(pack(base, a.runs, [], prec), a.steps))
        for k, ms in SETS.items():
            p = pack(base, a.runs, ms)  # at step 0, where every measure is due
            time_eval(p)  # warm-up
            evals[k].append(time_eval(p))
    s32, s64 = statistics.median(step["float32"]), statistics.median(step["float64"])
    print(f"\ntraining step: loss in float32 {s32 * 1e3:.1f} ms, float64 {s64 * 1e3:.1f} ms "
          f"(float64 / float32 = {s64 / s32:.3f})")
    between = every * s64
    base_eval = statistics.median(evals["none"])
    print(f"\n| measures | one evaluation (s) | extra over none (s) | overhead at every evaluation "
          f"(eval_every {every}: {between:.2f} s of training) |")
    print("|---|---|---|---|")
    for k in SETS:
        e = statistics.median(evals[k])
        print(f"| {k} | {e:.3f} | {e - base_eval:+.3f} | {100 * (e - base_eval) / (between + base_eval):+.1f}% |")


if __name__ == "__main__":
    main()
