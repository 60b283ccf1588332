"""Training speed of a stored run's final state with denormal floats kept (IEEE) and flushed to zero.

Late in training float32 values fall below 1.2e-38 and x86 CPUs compute with them in microcode; groklab
flushes them while training (groklab/denormals.py). This measures why, side by side in one process: the
pack rebuilt from a stored run's final training state (kept with its weights, `train.save_weights`) and
the same pack from step 0, each timed with denormals kept and flushed, alternating for `--rounds` rounds.

    python bench/denormals.py --store STORE --run RUN_ID [--threads 1] [--steps 20] [--rounds 3]

One thread by default: the flag is per thread and torch's worker threads copy it once when they start,
so only the calling thread can switch between the two modes within one process.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from groklab.config import make_config
from groklab.engine import Pack
from groklab.store import open_store


def steps_per_second(pack: Pack, flush: bool, steps: int) -> float:
    torch.set_flush_denormal(flush)
    for _ in range(2):
        pack.train_step()
    t = time.perf_counter()
    for _ in range(steps):
        pack.train_step()
    return steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="store holding the run")
    ap.add_argument("--run", required=True, help="run id whose final state (kept with its weights) is timed")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with open_store(a.store) as st:
        cfg = make_config(st.summary(a.run)["config"])
        saved = st.load_weights(a.run)
    if saved is None or saved.get("state") is None:
        raise SystemExit(f"run {a.run}: no training state kept with its weights in {a.store}")
    late, fresh = Pack([cfg]), Pack([cfg])
    late.load_state_dict(saved["state"])
    print(f"run {a.run}: final state at step {late.step}; torch {torch.__version__}, {a.threads} thread(s); "
          f"{a.steps} steps per measurement, {a.rounds} rounds, medians")
    rates: dict[tuple[str, bool], list[float]] = {}
    states = (("step 0", fresh), (f"step {late.step}", late))
    for _ in range(a.rounds):
        for name, pack in states:
            for flush in (False, True):
                rates.setdefault((name, flush), []).append(steps_per_second(pack, flush, a.steps))
    print("| state | denormals kept | flushed | flushed ÷ kept |\n|---|---|---|---|")
    for name in dict.fromkeys(n for n, _ in rates):
        kept, flushed = statistics.median(rates[name, False]), statistics.median(rates[name, True])
        print(f"| {name} | {kept:.1f} steps/s | {flushed:.1f} steps/s | {flushed / kept:.2f}× |")


if __name__ == "__main__":
    main()
