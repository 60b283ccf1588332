"""Tables from the store: swept axes, per-run events, per-cell statistics over seeds."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

# Config keys that never define a cell: seeds are the repeats within a cell, and the others change what is
# recorded or when a run stops, not how it trains.
NOT_AXES = ("train.seed", "train.device", "train.steps", "train.eval_every", "train.checkpoint_every",
            "train.save_weights", "train.compile", "train.stop.after_grok", "train.init_from")
NOT_AXES_PREFIX = ("metrics.",)
EVENT_COLUMNS = ["run_id", "sweeps", "status", "memorized_step", "grokked_step", "grok_delay", "grokked_samples",
                 "grokked_seconds", "steps_run", "final_train_acc", "final_val_acc", "wall_seconds"]


def hashable(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def groups(runs: pd.DataFrame, keys: list[str]) -> list[tuple[tuple, pd.DataFrame]]:
    """Runs grouped by the values of `keys` (lists/dicts made hashable), each key a tuple, sorted."""
    keyed = runs.assign(**{k: runs[k].map(hashable) for k in keys})
    if not keys:
        return [((), keyed)]
    return [(k if isinstance(k, tuple) else (k,), g) for k, g in keyed.groupby(keys, sort=True, dropna=False)]


def varying_axes(runs: pd.DataFrame) -> list[str]:
    """Config columns whose values differ between runs (the axes of a store without a sweep)."""
    cfg_cols = [c for c in runs.columns if "." in c and c not in NOT_AXES and not c.startswith(NOT_AXES_PREFIX)]
    return [c for c in cfg_cols if runs[c].map(hashable).nunique(dropna=False) > 1]


def events(runs: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """One row per run: the swept values, the seed, events and final accuracies."""
    cols = axes + ["train.seed"] + EVENT_COLUMNS
    out = runs[cols].copy()
    for a in axes:
        out[a] = out[a].map(hashable)
    return out.sort_values(axes + ["train.seed"]).reset_index(drop=True)


def cells(runs: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Per cell (a combination of swept values): seeds, how many grokked, grok-step statistics.

    Runs that never grokked count as +inf in the median and quartiles (they are right-censored at
    their budget), so a cell where most seeds failed has no finite median instead of a flattering one.
    """
    rows = []
    for key, g in groups(runs, axes):
        grok = g["grokked_step"].astype("float").fillna(np.inf).to_numpy()
        mem = g["memorized_step"].astype("float").dropna().to_numpy()
        finite = grok[np.isfinite(grok)]
        q25, q50, q75 = np.quantile(grok, [0.25, 0.5, 0.75], method="inverted_cdf") if len(grok) else [np.nan] * 3
        rows.append({
            **dict(zip(axes, key)),
            "seeds": len(g),
            "grokked": int(np.isfinite(grok).sum()),
            "diverged": int((g["status"] == "diverged").sum()),
            "grok_step_median": q50,
            "grok_step_q25": q25,
            "grok_step_q75": q75,
            "grok_step_min": finite.min() if len(finite) else np.nan,
            "grok_step_max": finite.max() if len(finite) else np.nan,
            "memorized_step_median": float(np.median(mem)) if len(mem) else np.nan,
            "grok_samples_median": _censored_median(g["grokked_samples"]),
            "grok_seconds_median": _censored_median(g["grokked_seconds"]),
            "budget_steps": int(g["train.steps"].max()),
            **_stability(g),
        })
    return pd.DataFrame(rows)


def _stability(g: pd.DataFrame) -> dict[str, Any]:
    """Per cell, where runs recorded stability: how many grokked runs fell back below the threshold, and the
    median number of loss spikes."""
    out: dict[str, Any] = {}
    if "fell_back" in g:
        out["fell_back"] = int((g["fell_back"] == True).sum())  # noqa: E712 - None (never grokked) is not True
    if "loss_spikes" in g:
        out["loss_spikes_median"] = float(g["loss_spikes"].astype("float").median())
    return out


def _censored_median(values: pd.Series) -> float:
    v = values.astype("float").fillna(np.inf).to_numpy()
    return float(np.quantile(v, 0.5, method="inverted_cdf")) if len(v) else np.nan


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-style table without extra dependencies."""
    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
            return "–"
        if isinstance(v, float):
            return "never" if np.isinf(v) else f"{v:.4g}"
        return str(v)

    header = "| " + " | ".join(df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, sep, *body]) + "\n"
