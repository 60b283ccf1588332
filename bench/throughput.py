"""Throughput: groklab packs vs the plain per-run loop, side by side in one process.

    python bench/throughput.py [--seconds 1] [--rounds 3] [--sizes 1 8 64] [--configs a1 a2 b c] [--quick]
                               [--compile] [--device cuda --sizes 1 8 64 256 1024]

For each benchmark configuration and pack size R it alternates, `rounds` times: the plain loop
(bench/plain.py) training one run, then a groklab pack of R runs (fp32, then bf16), each timed over at
least `seconds`; and the plain loop in bf16 under `torch.autocast` (a user's own mixed-precision loop), which
the bf16 pack is also compared with ("x plain16"). It prints the median run-steps per second of each, the ratio
to the plain loop, and the achieved FLOP/s (nominal model FLOPs: 6 x matmul parameters x tokens, plus attention) against this
machine's measured matmul peak (fp32 and bf16, and their ratio, printed first), and the share of a
groklab step spent in matmul kernels (torch.profiler over a few steps: self time of mm / bmm / addmm /
baddbmm over the self time of every op). Alternating and taking medians keeps a busy machine from
favouring one side.
Evaluation is not timed (both sides evaluate on the full sets; see bench/time_to_grok.py).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch

from groklab import memory
from groklab.config import Config, make_config
from groklab.engine import Pack
from groklab.memory import task_shape

try:
    from bench.plain import PlainRun
except ImportError:  # run as a script from the repository root
    from plain import PlainRun

CONFIGS = {
    "a1) 2L w128 transformer, batch 512": {"task": {"op": "x/y", "modulus": 97, "train_frac": 0.5},
                                          "model": {"layers": 2, "width": 128}, "train": {"batch_size": 512}},
    "a2) 2L w128 transformer, batch 32": {"task": {"op": "x/y", "modulus": 97, "train_frac": 0.5},
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


def peak(dtype: torch.dtype, device: str, n: int = 1024, reps: int = 10, trials: int = 5) -> float:
    """FLOP/s of an n³ matmul: the best of `trials` timings of `reps` products (a busy moment lowers one trial)."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    best = 0.0
    for _ in range(trials):
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t))
    return best


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Utilisation:
    """Mean GPU utilisation (%) sampled every 0.1 s while the block runs (nvidia-smi's counter)."""

    def __init__(self, device: str):
        self.on, self.samples = device.startswith("cuda"), []

    def _poll(self) -> None:
        while not self.done.is_set():
            try:
                self.samples.append(torch.cuda.utilization())
            except Exception:  # no NVML: leave the column empty
                return
            self.done.wait(0.1)

    def __enter__(self) -> Utilisation:
        if self.on:
            self.done = threading.Event()
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.on:
            self.done.set()
            self.thread.join()

    @property
    def mean(self) -> float:
        return statistics.mean(self.samples) if self.samples else float("nan")


def timed(step, min_seconds: float, device: str = "cpu") -> float:
    """Steps per second of `step()` over at least `min_seconds` (and 2 steps), after one warm-up step."""
    step()
    sync(device)
    n, t = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t < min_seconds:
        step()
        n += 1
    sync(device)
    return n / (time.perf_counter() - t)


def time_plain(cfg: Config, min_seconds: float, device: str = "cpu", precision: str = "fp32") -> float:
    return timed(PlainRun(cfg, device, precision).train_step, min_seconds, device)


MATMULS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::addbmm")


def matmul_share(pack: Pack, steps: int = 5) -> float:
    """Fraction of the op self time of `steps` training steps spent in matmul kernels."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            pack.train_step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if e.key in MATMULS) / max(total, 1e-9)


def time_pack(cfg: Config, runs: int, min_seconds: float, precision: str, compile: bool = False,
              device: str = "cpu", util: Utilisation | None = None, share: list[float] | None = None) -> float:
    """Run-steps per second of a pack of `runs`; appends its matmul share to `share` when given (CPU)."""
    over = {"train.precision": precision, "train.compile": compile, "train.device": device}
    pack = Pack([make_config(cfg, {"train.seed": s, **over}) for s in range(runs)])
    if compile:
        pack.train_step()  # compilation, outside the timing
    with util or Utilisation("cpu"):
        rate = runs * timed(pack.train_step, min_seconds, device)
    if share is not None and device == "cpu":
        share.append(matmul_share(pack))
    return rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.0, help="minimum timed seconds per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--configs", nargs="+", default=["a1", "a2", "b", "c"], help="which configurations to run")
    ap.add_argument("--quick", action="store_true", help="pack sizes 1 and 8, one round of 0.3 s")
    ap.add_argument("--compile", action="store_true", help="also time fp32 with train.compile (compiles each pack)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]; on a GPU try --sizes 1 8 64 256 1024")
    args = ap.parse_args()
    sizes, seconds, rounds = ([1, 8], 0.3, 1) if args.quick else (args.sizes, args.seconds, args.rounds)
    dev = args.device
    p32, p16 = peak(torch.float32, dev), peak(torch.bfloat16, dev)
    where = torch.cuda.get_device_name(dev) if dev.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; matmul peak fp32 {p32 / 1e9:.0f} GFLOP/s, "
          f"bf16 {p16 / 1e9:.0f} GFLOP/s ({p16 / p32:.1f}x); median of {rounds} alternating rounds, >= {seconds} s each")
    head = (f"{'config':<36} {'R':>4} {'plain rs/s':>10} {'fp32 rs/s':>10} {'x plain':>8} {'bf16 rs/s':>10} "
            f"{'x plain':>8} {'plain bf16':>12} {'x plain16':>9} {'fp32 %peak':>10} {'bf16 %peak':>10} {'fp32 mm%':>8} "
            f"{'bf16 mm%':>8}")
    head += f" {'compiled rs/s':>10} {'x plain':>8}" if args.compile else ""
    head += f" {'GPU util fp32/bf16':>18}" if dev.startswith("cuda") else ""
    print(head)
    for name, raw in CONFIGS.items():
        if name.split(")")[0] not in args.configs:
            continue
        cfg = make_config(raw)
        f = flops_per_run_step(cfg)
        fit = memory.max_pack_size(make_config(cfg, {"train.device": dev}), torch.device(dev))
        for r in sizes:
            if r > fit:
                print(f"{name:<36} {r:>4} skipped: memory.max_pack_size allows {fit} runs of this config here")
                continue
            u32, u16 = Utilisation(dev), Utilisation(dev)
            s32: list[float] = []
            s16: list[float] = []
            rows = [(time_plain(cfg, seconds, dev), time_pack(cfg, r, seconds, "fp32", device=dev, util=u32, share=s32),
                     time_plain(cfg, seconds, dev, "bf16"),
                     time_pack(cfg, r, seconds, "bf16", device=dev, util=u16, share=s16),
                     time_pack(cfg, r, seconds, "fp32", compile=True, device=dev) if args.compile else float("nan"))
                    for _ in range(rounds)]
            plain, fp32, plain16, bf16, comp = (statistics.median(col) for col in zip(*rows))
            line = (f"{name:<36} {r:>4} {plain:10.1f} {fp32:10.1f} {fp32 / plain:7.2f}x {bf16:10.1f} {bf16 / plain:7.2f}x "
                    f"{plain16:12.1f} {bf16 / plain16:8.2f}x "
                    f"{100 * fp32 * f / p32:9.1f}% {100 * bf16 * f / p16:9.1f}% "
                    f"{_pct(s32):>8} {_pct(s16):>8}")
            line += f" {comp:10.1f} {comp / plain:7.2f}x" if args.compile else ""
            line += f" {u32.mean:8.0f}% /{u16.mean:4.0f}%" if dev.startswith("cuda") else ""
            print(line, flush=True)


def _pct(shares: list[float]) -> str:
    return f"{100 * statistics.median(shares):.0f}%" if shares else "-"


if __name__ == "__main__":
    main()
