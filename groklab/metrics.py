"""Events and statuses read off a run's evaluation curves.

`memorized_step` / `grokked_step`: the first evaluated step where train / val accuracy reaches the
threshold and stays there for `metrics.hold` consecutive evaluations (1 by default: the published
definition, the first evaluation at or above it). The status of a finished run:
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
# size in use (x accumulate), wall seconds since the pack started, the gradient noise scale
# (adaptive batch schedules only), and the train-set size in use (growing under gradual exposure).
COUNTERS = ("samples", "batch_size", "seconds", "noise_scale", "train_size")

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


def advance(streak: list, value: float | None, step: int, threshold: float, hold: int) -> int | None:
    """One evaluation of an event rule: `streak` = [first step, length] of the current run of evaluations at
    or above `threshold` (updated in place). Returns the event's step (the streak's first) once the
    threshold has held for `hold` consecutive evaluations, else None."""
    if value is not None and not math.isnan(value) and value >= threshold:
        if streak[1] == 0:
            streak[0] = step
        streak[1] += 1
        return streak[0] if streak[1] >= hold else None
    streak[0], streak[1] = None, 0
    return None


def replay(curve: dict[str, list], threshold: float, hold: int) -> tuple[int | None, int | None, dict[str, list]]:
    """memorized_step, grokked_step and the open streaks of a curve, evaluation by evaluation."""
    events: dict[str, int | None] = {"memorized": None, "grokked": None}
    streaks: dict[str, list] = {"memorized": [None, 0], "grokked": [None, 0]}
    for i, step in enumerate(curve["step"]):
        for event, key in (("memorized", "train_acc"), ("grokked", "val_acc")):
            if events[event] is None:
                events[event] = advance(streaks[event], curve[key][i], step, threshold, hold)
    return events["memorized"], events["grokked"], streaks
