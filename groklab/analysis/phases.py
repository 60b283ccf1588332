"""Phases of a run (Liu et al., 2022, "Towards understanding grokking"): comprehension, grokking,
memorization, confusion.

Liu et al.'s criteria (their phase-diagram code): t_train is the first step with train accuracy ≥ 0.9,
t_val the first with validation accuracy ≥ 0.9; a time never reached counts as the budget. Then

- comprehension: both reached, and t_val − t_train < delay (generalizes about as soon as it fits);
- grokking: both reached, and t_val − t_train ≥ delay (generalizes long after fitting);
- memorization: train reached, val not (fits and never generalizes);
- confusion: train not reached (fits nothing; too much regularization or too small a learning rate).

A run whose validation accuracy reaches the threshold before its train accuracy does (possible with
strong regularization or label noise) is comprehension: it generalized without a memorizing phase.

Their delay is 1,000 steps at budgets of 10,000 (quick runs) and 100,000 steps; groklab's budgets vary
from hundreds of steps to 10⁵, so the default delay is a fraction of the run's budget: 10 %, their ratio
at 10⁴ steps. `delay` in steps replaces it. The 0.9 thresholds are theirs, not groklab's grok threshold
(`metrics.threshold`, 0.99): a run can be in the grokking phase and still not have `grokked_step`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from groklab.config import ConfigError

PHASES = ("comprehension", "grokking", "memorization", "confusion")
# One colour per phase in every figure: green generalizes at once, blue late, orange never, grey fits nothing.
PHASE_COLORS = {"comprehension": "#2ca02c", "grokking": "#1f77b4", "memorization": "#ff7f0e", "confusion": "#7f7f7f"}


class PhaseRule(BaseModel):
    """The thresholds of the phase classifier (the `analysis.phases` section of a sweep or hypotheses file)."""

    model_config = ConfigDict(extra="forbid")
    train_threshold: float = Field(0.9, gt=0.0, le=1.0, description="train accuracy that counts as fitted "
                                   "(Liu et al.: 0.9)")
    val_threshold: float = Field(0.9, gt=0.0, le=1.0, description="validation accuracy that counts as "
                                 "generalized (Liu et al.: 0.9)")
    delay: int | None = Field(None, ge=0, description="steps between fitting and generalizing that make it "
                              "grokking rather than comprehension; default: `delay_fraction` of the run's budget")
    delay_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="the delay as a fraction of the budget when "
                                  "`delay` is not given (Liu et al.: 1,000 of 10,000 steps)")


def rule_from(analysis: dict | None, where: str = "analysis") -> PhaseRule:
    """The PhaseRule of an `analysis:` section (`{phases: {...}}`); a ConfigError naming the key otherwise."""
    analysis = analysis or {}
    unknown = set(analysis) - {"phases"}
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key; allowed: phases")
    try:
        return PhaseRule.model_validate(analysis.get("phases") or {})
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        msg = (f"unknown key; allowed: {', '.join(PhaseRule.model_fields)}" if err["type"] == "extra_forbidden"
               else err["msg"])
        raise ConfigError(f"{where}.phases.{key}: {msg}") from None


def first_step(steps: np.ndarray, values: np.ndarray, threshold: float) -> float:
    """The first step at which `values` ≥ threshold, or NaN if never."""
    hit = np.flatnonzero(np.nan_to_num(values, nan=-np.inf) >= threshold)
    return float(steps[hit[0]]) if len(hit) else np.nan


def classify(t_train: float, t_val: float, budget: float, rule: PhaseRule) -> str:
    """The phase of one run from its times to fit and to generalize (NaN: never within `budget`)."""
    delay = rule.delay if rule.delay is not None else rule.delay_fraction * budget
    if np.isnan(t_train) and np.isnan(t_val):
        return "confusion"
    if np.isnan(t_val):
        return "memorization"
    if np.isnan(t_train) or t_val - t_train < delay:
        return "comprehension"
    return "grokking"


def phases(runs: pd.DataFrame, curves: pd.DataFrame, rule: PhaseRule | None = None) -> pd.DataFrame:
    """Per run (in the order of `runs`): run_id, t_train, t_val, phase. `curves` is the store's wide
    format (run_id, step, train_acc, val_acc, ...)."""
    rule = rule or PhaseRule()
    by_run = {rid: c.sort_values("step") for rid, c in curves.groupby("run_id")} if len(curves) else {}
    rows = []
    for rid, budget in zip(runs["run_id"], runs["train.steps"]):
        c = by_run.get(rid)
        if c is None:
            t_train = t_val = np.nan
        else:
            steps = c["step"].to_numpy()
            t_train = first_step(steps, c["train_acc"].to_numpy(dtype=float), rule.train_threshold)
            t_val = first_step(steps, c["val_acc"].to_numpy(dtype=float), rule.val_threshold)
        rows.append({"run_id": rid, "t_train": t_train, "t_val": t_val,
                     "phase": classify(t_train, t_val, float(budget), rule)})
    return pd.DataFrame(rows, columns=["run_id", "t_train", "t_val", "phase"])


def majority(labels: pd.Series) -> tuple[str, int]:
    """The most common phase of a cell and how many runs have it (ties go to the earlier phase in PHASES,
    the more generalizing one)."""
    counts = labels.value_counts()
    best = max(PHASES, key=lambda p: (counts.get(p, 0), -PHASES.index(p)))
    return best, int(counts.get(best, 0))
