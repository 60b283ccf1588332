"""Events and statuses read off a run's evaluation curves.

`memorized_step` / `grokked_step`: the first evaluated step where train / val accuracy reaches the
threshold. The status of a finished run:
  grokked        val accuracy reached the threshold;
  memorized      train accuracy reached it, val accuracy did not;
  diverged       a loss or gradient became NaN/Inf (the run was frozen at that step);
  budget         neither reached it, but train accuracy was still rising at the end (more steps may fit);
  failed_to_fit  neither reached it and train accuracy had stopped rising.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

EVAL_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "param_norm", "lr")
# Recorded at every evaluation beside the metrics: samples seen so far (steps x batch), the batch
# size in use (x accumulate), wall seconds since the pack started, and the gradient noise scale
# (adaptive batch schedules only).
COUNTERS = ("samples", "batch_size", "seconds", "noise_scale")

# "Still rising": train accuracy gained at least this much over the last quarter of evaluations.
RISING = 0.01


def first_step_at(steps: Sequence[int], values: Sequence[float], threshold: float) -> int | None:
    for s, v in zip(steps, values):
        if v is not None and not math.isnan(v) and v >= threshold:
            return int(s)
    return None


def status(
    train_acc: Sequence[float], memorized: int | None, grokked: int | None, diverged: bool
) -> str:
    if diverged:
        return "diverged"
    if grokked is not None:
        return "grokked"
    if memorized is not None:
        return "memorized"
    tail = [a for a in train_acc[-max(2, len(train_acc) // 4) :] if not math.isnan(a)]
    if len(tail) >= 2 and tail[-1] - min(tail) >= RISING:
        return "budget"
    return "failed_to_fit"
