"""Tables from the store: swept axes, per-run events, per-cell statistics over seeds (survival-aware)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from groklab.analysis import outcomes, page, stats
from groklab.analysis.phases import majority

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


def events(runs: pd.DataFrame, axes: list[str], phases: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per run: the swept values, the seed, events and final accuracies (and the run's phase if given,
    aligned with `runs` by position)."""
    cols = axes + ["train.seed"] + [c for c in EVENT_COLUMNS if c in runs]
    out = runs[cols].copy()
    for a in axes:
        out[a] = out[a].map(hashable)
    if phases is not None:
        out.insert(len(axes) + 3, "phase", list(phases))
    return out.sort_values(axes + ["train.seed"]).reset_index(drop=True)


# Time measures summarised per cell by their Kaplan–Meier median: (measure in outcomes, column prefix).
KM_COLUMNS = (("grokked_step", "grok_step"), ("grokked_samples", "grok_samples"), ("grokked_seconds", "grok_seconds"),
              ("memorized_step", "memorized_step"))


def cells(runs: pd.DataFrame, axes: list[str], curves: pd.DataFrame | None = None,
          phases: Sequence[str] | None = None) -> pd.DataFrame:
    """Per cell (a combination of swept values): seeds, how many grokked (with a Wilson 95% interval), the
    Kaplan–Meier median time to grok in steps, samples and wall seconds with its 95% interval, the mean grok
    delay and final val accuracy with bootstrap 95% intervals, and the majority phase when `phases` is given.

    A run that never grokked is censored at its own budget (outcomes.time_to_event), never dropped and never
    +inf; a cell where fewer than half grokked has no median: inf here, "not reached" on a page. `curves`
    gives the samples a run had seen under a batch schedule; without them samples are steps × batch.
    """
    keyed = runs if phases is None else runs.assign(_phase=list(phases))
    rows = []
    for key, g in groups(keyed, axes):
        rows.append({**dict(zip(axes, key)), **_cell(g, curves)})
    return pd.DataFrame(rows)


def _median(g: pd.DataFrame, measure: str, curves: pd.DataFrame | None) -> stats.Estimate:
    t, o = outcomes.time_to_event(g, measure, curves)
    keep = np.isfinite(t)  # a run without a wall time (older stores) cannot be placed
    return stats.median_time(t[keep], o[keep])


def _cell(g: pd.DataFrame, curves: pd.DataFrame | None) -> dict[str, Any]:
    grokked = int(g["grokked_step"].notna().sum())
    frac = stats.fraction(grokked, len(g))
    out: dict[str, Any] = {"seeds": len(g), "grokked": grokked, "diverged": int((g["status"] == "diverged").sum()),
                           "grokked_fraction": frac.value, "grokked_fraction_low": frac.low,
                           "grokked_fraction_high": frac.high}
    for measure, name in KM_COLUMNS:
        est = _median(g, measure, curves)
        out.update({f"{name}_median": est.value, f"{name}_low": est.low, f"{name}_high": est.high})
    for column, name in (("grok_delay", "grok_delay_mean"), ("final_val_acc", "final_val_acc_mean")):
        est = stats.bootstrap(g[column].astype("float")) if column in g else stats.Estimate(np.nan, np.nan, np.nan)
        out.update({name: est.value, f"{name.removesuffix('_mean')}_low": est.low,
                    f"{name.removesuffix('_mean')}_high": est.high})
    out["budget_steps"] = int(g["train.steps"].max())
    if "_phase" in g:
        phase, agree = majority(g["_phase"])
        out.update({"phase": phase, "phase_agree": agree})
    return {**out, **_stability(g)}


def _stability(g: pd.DataFrame) -> dict[str, Any]:
    """Per cell, where runs recorded stability: how many grokked runs fell back below the threshold, and the
    median number of loss spikes."""
    out: dict[str, Any] = {}
    if "fell_back" in g:
        out["fell_back"] = int((g["fell_back"] == True).sum())  # noqa: E712 - None (never grokked) is not True
    if "loss_spikes" in g:
        out["loss_spikes_median"] = float(g["loss_spikes"].astype("float").median())
    return out


def to_markdown(df: pd.DataFrame, formats: dict[str, str] | None = None) -> str:
    """A GitHub-style table without extra dependencies, numbers formatted for people as on the page
    (page.fmt: 11,600; "not reached" for a median never reached; "–" for missing)."""
    formats = formats or {}
    kinds = {c: formats.get(c, page.kind_of(str(c))) for c in df.columns}

    def cell(v: Any, kind: str) -> str:
        return page.fmt(v, kind).replace("|", "\\|")

    header = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v, kinds[c]) for c, v in zip(df.columns, row)) + " |"
            for row in df.itertuples(index=False)]
    return "\n".join([header, sep, *body]) + "\n"


MAX_COMPARISONS = 60


def comparisons(runs: pd.DataFrame, axes: list[str], curves: pd.DataFrame | None = None) -> pd.DataFrame:
    """How steps to grok move along each swept axis, with the other axes held fixed: the censoring-aware rank
    trend over all its values (ρ, 95% interval, permutation p) and, between neighbouring values, the ratio of
    restricted mean steps to grok (b / a, 95% bootstrap interval) with the log-rank p. Runs that never grokked
    count as censored at their budgets (groklab.analysis.stats). At most MAX_COMPARISONS rows."""
    from groklab.analysis import outcomes, stats

    time, observed = outcomes.time_to_event(runs, "grokked_step", curves)
    runs = runs.assign(_t=time, _o=observed)
    rows: list[dict[str, Any]] = []
    for axis in axes:
        others = [a for a in axes if a != axis]
        for key, g in groups(runs, others):
            fixed = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(others, key)) or "–"
            levels = sorted(g[axis].map(hashable).unique(), key=lambda v: (v is None, str(type(v)), v))
            if len(levels) < 2:
                continue
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in levels)
            if numeric and len(levels) >= 3:
                est = stats.trend(g[axis].astype(float).to_numpy(), g["_t"].to_numpy(), g["_o"].to_numpy())
                rows.append({"axis": axis, "others fixed": fixed, "comparison": f"trend over {len(levels)} values",
                             "statistic": "rank correlation ρ", "estimate": est.value, "low": est.low,
                             "high": est.high, "p": est.p})
            col = g[axis].map(hashable)
            for a, b in zip(levels, levels[1:]):
                ga, gb = g[col == a], g[col == b]
                est = stats.compare_times((ga["_t"].to_numpy(), ga["_o"].to_numpy()), (gb["_t"].to_numpy(),
                                                                                        gb["_o"].to_numpy()))
                rows.append({"axis": axis, "others fixed": fixed, "comparison": f"{a} → {b}",
                             "statistic": "ratio of restricted mean steps (b / a)", "estimate": float(np.exp(est.value)),
                             "low": float(np.exp(est.low)), "high": float(np.exp(est.high)), "p": est.p})
            if len(rows) >= MAX_COMPARISONS:
                return pd.DataFrame(rows[:MAX_COMPARISONS])
    return pd.DataFrame(rows, columns=["axis", "others fixed", "comparison", "statistic", "estimate", "low", "high", "p"])


def folds(runs: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """K-fold cross-validation (a sweep over `task.fold`): per combination of the other axes, final val
    accuracy as mean ± standard deviation over folds (and seeds), its range, and how many runs grokked. The
    combination with the highest mean is the one K-fold validation selects (column `selected`). Empty when
    `task.fold` is not swept."""
    if "task.fold" not in axes:
        return pd.DataFrame()
    others = [a for a in axes if a != "task.fold"]
    rows = []
    for key, g in groups(runs, others):
        acc = g["final_val_acc"].astype(float)
        rows.append({**dict(zip(others, key)), "folds": int(g["task.fold"].nunique()), "runs": len(g),
                     "val_acc_mean": float(acc.mean()), "val_acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                     "val_acc_min": float(acc.min()), "val_acc_max": float(acc.max()),
                     "grokked": int(g["grokked_step"].notna().sum())})
    out = pd.DataFrame(rows)
    out["selected"] = out["val_acc_mean"] == out["val_acc_mean"].max()
    return out
