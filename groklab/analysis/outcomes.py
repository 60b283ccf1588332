"""What a run's outcome is, measure by measure: the numbers that statistics, figures and verdicts compare.

Three kinds of measure (`kind(measure)`):

- **time** (`grokked_step`, `grokked_samples`, `grokked_seconds`, `grok_delay`, `memorized_step`): the time
  of an event, right-censored at the run's own budget in that unit when the event did not happen. A run
  that never grokked is neither dropped nor +∞: it is known to grok later than its budget, if ever.
  Budgets are per run: in samples, steps × the run's batch (× accumulate), so a batch-32 run that never
  grokked is censored at 32 × steps, not at the largest batch's budget. Wall seconds are the seconds since
  the run's pack started: they depend on the machine, its load and the pack's size.
- **binary** (`grokked`, `memorized`, `diverged`, `fell_back`, `phase=<name>`): 1 or 0 per run.
- **value**: final accuracies and losses (`final_val_acc`, ...), `generalization_gap` (final train minus
  val accuracy), `max_gap` (the largest train-minus-val accuracy gap at any evaluation: the memorization
  plateau), the stability figures (`loss_spikes`, `val_acc_std_after_grok`, `below_after_grok`,
  `last_norm_growth`), and any recorded curve reduced over a run: `final.<curve>` (its last recorded value),
  `max.<curve>`, `median.<curve>` — e.g. `final.sharpness`, `median.b_simple`, `max.train_loss`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TIME_MEASURES = {
    "grokked_step": "steps to grok",
    "grokked_samples": "samples to grok",
    "grokked_seconds": "wall seconds to grok",
    "grok_delay": "steps from memorizing to grokking",
    "memorized_step": "steps to memorize",
}
BINARY_MEASURES = {
    "grokked": "fraction grokked",
    "memorized": "fraction memorized",
    "diverged": "fraction diverged",
    "fell_back": "fraction that fell back after grokking",
}
VALUE_MEASURES = {
    "final_train_acc": "final train accuracy",
    "final_val_acc": "final val accuracy",
    "final_train_loss": "final train loss",
    "final_val_loss": "final val loss",
    "generalization_gap": "final train − val accuracy",
    "max_gap": "largest train − val accuracy gap",
    "loss_spikes": "loss spikes per run",
    "val_acc_std_after_grok": "std of val accuracy after grokking",
    "below_after_grok": "fraction of evaluations below threshold after grokking",
    "last_norm_growth": "largest last-layer norm growth factor",
}
REDUCTIONS = ("final", "max", "median")


def kind(measure: str) -> str:
    """'time', 'binary' or 'value'; a clear error naming the allowed measures otherwise."""
    if measure in TIME_MEASURES:
        return "time"
    if measure in BINARY_MEASURES or measure.startswith("phase="):
        return "binary"
    if measure in VALUE_MEASURES or measure.split(".", 1)[0] in REDUCTIONS and "." in measure:
        return "value"
    allowed = [*TIME_MEASURES, *BINARY_MEASURES, "phase=<phase>", *VALUE_MEASURES, "final.<curve>", "max.<curve>",
               "median.<curve>"]
    raise ValueError(f"measure: unknown {measure!r}; allowed: {', '.join(allowed)}")


def label(measure: str) -> str:
    """A human axis label for a measure, with its unit."""
    for table in (TIME_MEASURES, BINARY_MEASURES, VALUE_MEASURES):
        if measure in table:
            return table[measure]
    if measure.startswith("phase="):
        return f"fraction in phase {measure.removeprefix('phase=')}"
    how, curve = measure.split(".", 1)
    return f"{how} {curve}"


def _col(runs: pd.DataFrame, name: str, default: float = np.nan) -> np.ndarray:
    return runs[name].astype("float").to_numpy() if name in runs else np.full(len(runs), default)


def budget(runs: pd.DataFrame, unit: str, curves: pd.DataFrame | None = None) -> np.ndarray:
    """Each run's budget in `unit` (step, samples or seconds): where a run that never reached the event
    is censored. A run that stopped early without the event (diverged) is censored at its full budget:
    its last figure scaled by steps / steps run (it will not grok later)."""
    steps = _col(runs, "train.steps")
    if unit == "step":
        return steps
    scale = steps / np.maximum(_col(runs, "steps_run"), 1)
    if unit == "seconds":
        return _col(runs, "wall_seconds") * scale
    if unit != "samples":
        raise ValueError(f"unit: {unit!r}; allowed: step, samples, seconds")
    per_step = _col(runs, "train.batch_size") * _col(runs, "train.accumulate", 1.0)
    planned = steps * per_step
    if curves is not None and "samples" in curves and len(curves):
        # Batch schedules change the batch during the run: the samples it had seen when it stopped.
        last = curves.dropna(subset=["samples"]).sort_values("step").groupby("run_id")["samples"].last()
        seen = runs["run_id"].map(last).astype("float").to_numpy() * scale
        planned = np.where(np.isfinite(seen), seen, planned)
    return planned


def time_to_event(runs: pd.DataFrame, measure: str, curves: pd.DataFrame | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(time, observed) per run for a time measure; a run without the event is censored at its budget."""
    if measure == "grok_delay":
        grok, mem = _col(runs, "grokked_step"), _col(runs, "memorized_step")
        steps = budget(runs, "step")
        observed = np.isfinite(grok) & np.isfinite(mem)
        time = np.where(observed, grok - mem, steps - np.nan_to_num(mem, nan=0.0))
        return time, observed
    unit = {"grokked_step": "step", "memorized_step": "step", "grokked_samples": "samples",
            "grokked_seconds": "seconds"}[measure]
    t = _col(runs, measure)
    observed = np.isfinite(t)
    return np.where(observed, t, budget(runs, unit, curves)), observed


def values(runs: pd.DataFrame, measure: str, curves: pd.DataFrame | None = None,
           phases: pd.Series | None = None) -> np.ndarray:
    """One number per run for a binary or value measure (NaN where a run has none, e.g. volatility after
    grokking for a run that never grokked)."""
    if measure == "grokked":
        return np.isfinite(_col(runs, "grokked_step")).astype(float)
    if measure == "memorized":
        return np.isfinite(_col(runs, "memorized_step")).astype(float)
    if measure == "diverged":
        return (runs["status"] == "diverged").to_numpy(dtype=float)
    if measure == "fell_back":
        return np.array([1.0 if v is True else 0.0 for v in runs.get("fell_back", [None] * len(runs))])
    if measure.startswith("phase="):
        if phases is None:
            raise ValueError(f"measure {measure!r} needs the runs' phases")
        return (phases.to_numpy() == measure.removeprefix("phase=")).astype(float)
    if measure == "generalization_gap":
        return _col(runs, "final_train_acc") - _col(runs, "final_val_acc")
    if measure == "max_gap":
        if curves is None or not len(curves):
            return np.full(len(runs), np.nan)
        return max_gap(runs, curves)
    if measure in VALUE_MEASURES:
        return _col(runs, measure)
    how, curve = measure.split(".", 1)
    return _reduce_curve(runs, curves, how, curve)


def _reduce_curve(runs: pd.DataFrame, curves: pd.DataFrame | None, how: str, curve: str) -> np.ndarray:
    if curves is None or curve not in curves:
        return np.full(len(runs), np.nan)
    c = curves[["run_id", "step", curve]].dropna().sort_values("step")
    red = c.groupby("run_id")[curve].agg({"final": "last", "max": "max", "median": "median"}[how])
    return runs["run_id"].map(red).astype("float").to_numpy()


def max_gap(runs: pd.DataFrame, curves: pd.DataFrame) -> np.ndarray:
    """The largest train − val accuracy gap at any evaluation, per run."""
    gap = curves.assign(_gap=curves["train_acc"] - curves["val_acc"]).groupby("run_id")["_gap"].max()
    return runs["run_id"].map(gap).astype("float").to_numpy()
