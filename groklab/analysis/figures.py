"""The one figure style of groklab's pages, and axis-level plots that the report and the verdicts share.

Conventions every figure follows: steps on a log axis; a unit in every axis label (`UNITS`); one colour per
condition from a fixed palette (`condition_colors`); a run that grokked is a filled ●, a run that did not is a
hollow ▽ at its own budget (where it was censored), never at a shared line; times are summarised by the
Kaplan–Meier median with its 95% interval (`stats.median_time`), fractions by Wilson intervals, values by the
mean with a bootstrap interval.
"""

from __future__ import annotations

import contextlib
import math
import textwrap
import weakref
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from cycler import cycler  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator  # noqa: E402

from groklab.analysis import page, stats  # noqa: E402
from groklab.analysis.phases import PHASE_COLORS, PHASES  # noqa: E402

# Okabe–Ito (colour-blind safe; yellow left out: unreadable on white; black left out: it reads as "all runs"),
# then darker tab20-like extras.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#882255", "#8C564B",
           "#9467BD", "#BCBD22", "#17BECF", "#7F7F7F", "#A50F15", "#253494", "#01665E", "#F781BF",
           "#637939", "#8C6D31", "#7B4173", "#3182BD", "#E6550D", "#31A354", "#393B79", "#D6616B")
UNITS = {"step": "step", "samples": "samples (examples seen)", "seconds": "wall seconds (load-dependent)"}
TIME_TO_GROK = {"step": "steps to grok", "samples": "samples to grok (examples seen)",
                "seconds": "wall seconds to grok (load-dependent)"}
DPI = 110

RC = {
    "figure.dpi": DPI, "savefig.dpi": DPI, "savefig.bbox": "tight", "svg.fonttype": "none",
    "font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
    "legend.fontsize": 7.5, "legend.frameon": False, "figure.titlesize": 11,
    "axes.grid": True, "axes.grid.which": "major", "grid.alpha": 0.35, "grid.linewidth": 0.5,
    "axes.spines.top": False, "axes.spines.right": False, "axes.prop_cycle": cycler(color=PALETTE),
    "lines.linewidth": 1.4, "lines.markersize": 5, "errorbar.capsize": 2.5, "image.cmap": "viridis",
}

PEOPLE = FuncFormatter(lambda v, _pos: page.fmt(float(v)))
GROKKED = {"marker": "o", "s": 16, "alpha": 0.75, "linewidths": 0}
CENSORED = {"marker": "v", "s": 30, "facecolors": "none", "linewidths": 1.0}


def style() -> contextlib.AbstractContextManager:
    """`with style():` around building and saving a figure: the one rcParams set of every page."""
    return matplotlib.rc_context(RC)


def condition_colors(labels: Sequence[str]) -> dict[str, str]:
    """One fixed colour per condition, in the order given (repeats ignored); the palette cycles past 24."""
    out: dict[str, str] = {}
    for label in labels:
        if label not in out:
            out[label] = PALETTE[len(out) % len(PALETTE)]
    return out


def save(fig: plt.Figure, base: Path, formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    """Write base.png and base.svg (or the given formats), close the figure, return the paths."""
    base = Path(base)
    if base.suffix in (".png", ".svg"):
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = [base.parent / f"{base.name}.{fmt}" for fmt in formats]
    with style():
        for path in paths:
            fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return paths


def log_steps(ax: plt.Axes, label: str | None = UNITS["step"]) -> None:
    """The step axis of every curve: logarithmic, ticks at 1, 2, 5 × 10^k written out (50, 100, 2,000)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(PEOPLE)
    ax.xaxis.set_minor_locator(NullLocator())  # the 1-2-5 majors suffice; minor ticks cost seconds in big grids
    if label:
        ax.set_xlabel(label)


def people_ticks(ax: plt.Axes, which: str = "y") -> None:
    """Tick labels as page.fmt writes numbers: 300,000 rather than 300000 on a linear axis, 200 / 500 / 1,000
    rather than 2×10² on a log axis."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    if axis.get_scale() == "log":
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_minor_formatter(NullFormatter())
    if axis.get_scale() in ("linear", "log"):
        axis.set_major_formatter(PEOPLE)


def wrap(text: str, width: int = 28) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def marker_handles(color: str = "#444444") -> list:
    """Legend entries explaining the markers of `outcome_vs_axis`."""
    return [Line2D([], [], ls="", marker="o", color=color, alpha=0.75, label="a run that grokked"),
            Line2D([], [], ls="", marker="v", mfc="none", color=color, label="did not grok: at its own budget"),
            Line2D([], [], marker="s", ms=5, color=color, label="KM median, 95% interval")]


def phase_handles() -> list:
    return [Patch(color=PHASE_COLORS[p], label=p) for p in PHASES]


# ---- survival ----------------------------------------------------------------------------------------------
def survival_panel(ax: plt.Axes, groups: dict[str, tuple[np.ndarray, np.ndarray]], xlabel: str,
                   colors: dict[str, str] | None = None, legend: bool = True) -> None:
    """Kaplan–Meier "not yet grokked" against time, one curve per group with its 95% band; runs that did not
    grok are marked "+" on the curve at their own budget. groups: label -> (time, observed)."""
    colors = colors or condition_colors(list(groups))
    data = {}
    for label, (t, o) in groups.items():
        t, o = np.asarray(t, dtype=float), np.asarray(o, dtype=bool)
        keep = np.isfinite(t)
        data[label] = (t[keep], o[keep])
    every = np.concatenate([t for t, _ in data.values()] + [np.zeros(0)])
    positive = every[every > 0]
    log = len(positive) > 0 and positive.max() / positive.min() >= 10
    start = positive.min() / 1.5 if log else 0.0  # a log axis has no 0: the curve starts just left of the first time
    for label, (t, o) in data.items():
        if not len(t):
            continue
        sv = stats.survival(t, o)
        x = sv["time"].to_numpy().copy()
        x[0] = start
        color = colors.get(label, PALETTE[0])
        ax.step(x, sv["not_grokked"], where="post", color=color, label=f"{label} ({int(o.sum())}/{len(t)} grokked)")
        ax.fill_between(x, sv["low"], sv["high"], step="post", color=color, alpha=0.13, lw=0)
        cens = t[~o]
        if len(cens):
            at = np.searchsorted(sv["time"].to_numpy(), cens, side="right") - 1
            ax.plot(cens, sv["not_grokked"].to_numpy()[at], ls="", marker="+", ms=8, mew=1.3, color=color)
    if log:
        log_steps(ax, None)
    else:
        people_ticks(ax, "x")
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction not yet grokked")
    if legend and 0 < len(data) <= 10:
        ax.legend(loc="lower left", fontsize=7)


# ---- an outcome against an ordered axis ---------------------------------------------------------------------
MAX_TICKS = 12  # more distinct x (a random axis) get ordinary ticks and no "k/n" per value
_TICKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # ax -> {position: label}: ticks of every series
_NOT_REACHED: weakref.WeakSet = weakref.WeakSet()  # scaling axes that show a cell whose median was not reached


def _as_numbers(x: np.ndarray) -> np.ndarray | None:
    try:
        v = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v).all() else None


def _x_transform(values: np.ndarray) -> tuple[str, float]:
    """(scale, linthresh): log when the positive values span ≥ 10×, symlog when 0 is among them too, else linear."""
    positive = values[values > 0]
    if (values < 0).any() or len(positive) < 2 or positive.max() / positive.min() < 10:
        return "linear", 0.0
    return ("symlog", float(positive.min())) if (values == 0).any() else ("log", 0.0)


def _forward(v: np.ndarray, scale: str, lt: float) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    if scale == "log":
        return np.log10(v)
    if scale == "symlog":
        return np.arcsinh(v / (2 * lt))  # close to matplotlib's symlog: linear near 0, logarithmic beyond
    return v


def _inverse(u: np.ndarray, scale: str, lt: float) -> np.ndarray:
    if scale == "log":
        return 10.0 ** u
    if scale == "symlog":
        return 2 * lt * np.sinh(u)
    return u


def _spread(m: int, width: float) -> np.ndarray:
    """Offsets of m markers side by side within ±width (0 for one)."""
    return np.zeros(m) if m < 2 else np.linspace(-width, width, m)


def _positions(x: np.ndarray) -> tuple[np.ndarray, dict, str, float]:
    """Where each x sits: numbers at their value (scale from their span), categories evenly in sorted order;
    with the tick labels and the x scale (and symlog's linear threshold)."""
    nums = _as_numbers(np.asarray(x, dtype=object))
    if nums is None:
        cats = sorted({str(v) for v in x})
        return np.array([cats.index(str(v)) for v in x], dtype=float), dict(enumerate(cats)), "linear", 0.0
    return nums, {v: page.fmt(v) for v in np.unique(nums)}, *_x_transform(np.unique(nums))


def outcome_vs_axis(ax: plt.Axes, x: np.ndarray, y: np.ndarray, observed: np.ndarray | None, ylabel: str,
                    xlabel: str, color: str = PALETTE[0], label: str | None = None, time: bool = True,
                    series: tuple[int, int] = (0, 1), counts: bool = True) -> None:
    """Every run as a dot (● grokked; hollow ▽ at its own budget when censored), and per distinct x the KM
    median with its 95% interval and "k/n grokked" (time=True), or the mean with a bootstrap interval. Ticks
    sit exactly at the distinct x, labelled with the values. `series=(i, n)`: this is the i-th of n series on
    the same axes; they are drawn side by side around each x and their "k/n" rows stacked at the top.
    counts=False leaves the "k/n" out (too many series: draw one pooled row with `count_row` instead)."""
    y = np.asarray(y, dtype=float)
    obs = np.ones(len(y), dtype=bool) if observed is None else np.asarray(observed, dtype=bool)
    pos_all, ticks, scale, lt = _positions(x)
    distinct = np.unique(pos_all)
    u = _forward(distinct, scale, lt)
    gap = float(np.min(np.diff(u))) if len(u) > 1 else 1.0
    i, n = series
    slot = 0.36 * gap / max(n, 1)  # each series gets its slot around x; its runs spread within the slot
    centre = (i - (n - 1) / 2) * slot
    meds, lows, highs, xs = [], [], [], []
    top = float(np.nanmax(y)) * 1.5 if np.isfinite(y).any() else 1.0  # where an open interval ends: above every run
    counts = counts and time and len(distinct) <= MAX_TICKS
    for k, v in enumerate(distinct):
        at = pos_all == v
        yv, ov = y[at], obs[at]
        jitter = _inverse(u[k] + centre + _spread(len(yv), 0.35 * slot), scale, lt)
        ax.scatter(jitter[ov], yv[ov], color=color, zorder=3, **GROKKED)
        ax.scatter(jitter[~ov], yv[~ov], edgecolors=color, zorder=3, **CENSORED)
        est = stats.median_time(yv, ov) if time else stats.bootstrap(yv)
        xs.append(float(_inverse(u[k] + centre, scale, lt)))
        meds.append(est.value if math.isfinite(est.value) else np.nan)
        lows.append(est.low)
        highs.append(est.high)
        if counts:
            ax.text(xs[-1], 0.985 - _row_height(n) * i, f"{int(ov.sum())}/{len(ov)}",
                    transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=7, color=color)
    _medians(ax, np.array(xs), np.array(meds), np.array(lows), np.array(highs), top, color, label)
    _finish_axis(ax, ticks, scale, lt, xlabel=xlabel, ylabel=ylabel)
    _headroom(ax, rows=n if counts else 0, log_y=time)


def count_row(ax: plt.Axes, x: np.ndarray, observed: np.ndarray, color: str = "#333333") -> None:
    """One row of "k/n grokked" per distinct x at the top of the axes, pooled over every series drawn there."""
    pos_all, _, _, _ = _positions(x)
    obs = np.asarray(observed, dtype=bool)
    for v in np.unique(pos_all):
        at = pos_all == v
        ax.text(v, 0.985, f"{int(obs[at].sum())}/{int(at.sum())}", transform=ax.get_xaxis_transform(), ha="center",
                va="top", fontsize=7, color=color)
    _headroom(ax, rows=1, log_y=ax.get_yscale() == "log")


def _medians(ax: plt.Axes, xs: np.ndarray, med: np.ndarray, low: np.ndarray, high: np.ndarray, top: float,
             color: str, label: str | None) -> None:
    """Medians joined by a line (broken where a median is not reached), with their interval bars."""
    ax.plot(xs, med, color=color, lw=1.3, zorder=4, label=label)
    interval_bars(ax, xs, med, low, high, top, color, marker="s")


def interval_bars(ax: plt.Axes, xs: np.ndarray, med: np.ndarray, low: np.ndarray, high: np.ndarray, top: float,
                  color: str, marker: str = "o") -> None:
    """A point per finite estimate with its 95% bar; a bar whose upper end is open (the median may never be
    reached) runs to `top` and ends in a hollow ▲."""
    xs, med, low, high = (np.asarray(v, dtype=float) for v in (xs, med, low, high))
    ok = np.isfinite(med)
    if not ok.any():
        return
    open_end = ok & ~np.isfinite(high)
    hi = np.where(np.isfinite(high), high, top)
    lo = np.where(np.isfinite(low), low, med)
    ax.errorbar(xs[ok], med[ok], yerr=[med[ok] - lo[ok], hi[ok] - med[ok]], fmt=marker, ms=5, color=color,
                mec="white", mew=0.6, elinewidth=1.4, zorder=5)
    if open_end.any():
        ax.scatter(xs[open_end], hi[open_end], marker="^", s=22, facecolors="none", edgecolors=color, zorder=5)


def _row_height(rows: int) -> float:
    """Axes fraction per "k/n" row: 5%, less with many series, so the rows never take more than 40%."""
    return min(0.05, 0.4 / max(rows, 1))


def _finish_axis(ax: plt.Axes, ticks: dict, scale: str, lt: float, xlabel: str, ylabel: str) -> None:
    """Scale, and ticks at the distinct x of every series drawn so far (the usual ticks for a random axis)."""
    if scale == "symlog":
        ax.set_xscale("symlog", linthresh=lt, linscale=0.5)
    elif scale == "log":
        ax.set_xscale("log")
    known = _TICKS.setdefault(ax, {})
    known.update(ticks)
    if len(known) <= MAX_TICKS:
        pos = sorted(known)
        labels = [known[p] for p in pos]
        ax.set_xticks(pos, labels, rotation=30 if sum(len(s) for s in labels) > 40 else 0)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        people_ticks(ax, "x")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def _headroom(ax: plt.Axes, rows: int, log_y: bool) -> None:
    """y limits around everything drawn so far, with room above it for `rows` rows of "k/n" text; a log scale
    when the times span 10× or more."""
    lo, hi, minpos = ax.dataLim.y0, ax.dataLim.y1, ax.dataLim.minposy
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return
    headroom = 0.06 + _row_height(rows) * rows
    if log_y and np.isfinite(minpos) and minpos > 0 and hi / max(lo, minpos) >= 10:
        ax.set_yscale("log")
        a, b = math.log10(max(lo, minpos)), math.log10(hi)
        a -= 0.05 * max(b - a, 0.3)
        ax.set_ylim(10**a, 10 ** (a + (b - a) / (1 - headroom)))
    else:
        span = max(hi - lo, abs(hi) * 0.1, 1e-12)
        a = lo - 0.05 * span
        ax.set_ylim(a, a + (hi + 0.02 * span - a) / (1 - headroom))
    people_ticks(ax, "y")


# ---- fractions, values, scaling --------------------------------------------------------------------------------
def fraction_panel(ax: plt.Axes, groups: dict[str, tuple[int, int]], ylabel: str,
                   colors: dict[str, str] | None = None) -> None:
    """k of n per group as a bar with its Wilson 95% interval and the "k/n" count."""
    colors = colors or condition_colors(list(groups))
    for j, (label, (k, n)) in enumerate(groups.items()):
        est = stats.fraction(int(k), int(n))
        color = colors.get(label, PALETTE[0])
        if n > 0:
            ax.bar(j, est.value, width=0.6, color=color, alpha=0.35)
            ax.errorbar(j, est.value, yerr=[[est.value - est.low], [est.high - est.value]], color=color, lw=1.5)
        ax.text(j, 1.04, f"{int(k)}/{int(n)}", ha="center", va="bottom", fontsize=8, color=color)
    ax.set_xticks(range(len(groups)), [wrap(g) for g in groups])
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylim(0, 1.14)
    ax.set_ylabel(ylabel)


def values_panel(ax: plt.Axes, groups: dict[str, np.ndarray], ylabel: str, colors: dict[str, str] | None = None) -> None:
    """Every run's value as a dot, and per group the mean with its bootstrap 95% interval (NaNs left out)."""
    colors = colors or condition_colors(list(groups))
    for j, (label, values) in enumerate(groups.items()):
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        color = colors.get(label, PALETTE[0])
        ax.scatter(j + _spread(len(v), 0.18) - 0.08, v, color=color, zorder=3, **GROKKED)
        est = stats.bootstrap(v)
        if math.isfinite(est.value):
            lo = est.low if math.isfinite(est.low) else est.value
            hi = est.high if math.isfinite(est.high) else est.value
            ax.errorbar(j + 0.16, est.value, yerr=[[est.value - lo], [hi - est.value]], fmt="s", ms=6, color=color,
                        mec="white", elinewidth=1.6, zorder=4)
    ax.set_xticks(range(len(groups)), [wrap(g) for g in groups])
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylabel(ylabel)


def _intercept(table: pd.DataFrame, slope: float) -> float:
    b = table.attrs.get("intercept", np.nan)
    if b is not None and math.isfinite(b):
        return float(b)
    fit = table[table["fitted"].astype(bool)] if "fitted" in table else table.iloc[0:0]
    if not len(fit):
        return np.nan
    return float(np.mean(np.log(fit["median"].astype(float)) - slope * np.log(fit["x"].astype(float))))


def scaling_panel(ax: plt.Axes, table: pd.DataFrame, est: stats.Estimate, xlabel: str, ylabel: str,
                  color: str = PALETTE[0], label: str | None = None) -> None:
    """`stats.scaling`'s table on log-log axes: per cell its KM median with the 95% interval (an open ▲ where the
    interval has no upper end; a hollow square along the top where the median was not reached, left out of the
    fit), and the fitted power law with its exponent and 95% interval in the legend."""
    med, x = table["median"].astype(float).to_numpy(), table["x"].astype(float).to_numpy()
    low, high = table["low"].astype(float).to_numpy(), table["high"].astype(float).to_numpy()
    ok = np.isfinite(med) & (med > 0) & (x > 0)
    finite = np.concatenate([med[ok], high[ok & np.isfinite(high)]])
    top = float(finite.max()) * 1.4 if len(finite) else 1.0
    interval_bars(ax, np.where(ok, x, np.nan), np.where(ok, med, np.nan), low, high, top, color)
    missing = ~np.isfinite(med) & (x > 0)
    if missing.any():
        _NOT_REACHED.add(ax)
        ax.scatter(x[missing], np.full(missing.sum(), 0.97), transform=ax.get_xaxis_transform(), marker="s", s=26,
                   facecolors="none", edgecolors=color, zorder=4)
    prefix = f"{label}: " if label else ""
    if math.isfinite(est.value) and ok.sum() >= 2:
        b = _intercept(table, est.value)
        grid = np.geomspace(x[ok].min(), x[ok].max(), 50)
        ax.plot(grid, np.exp(b) * grid**est.value, ls="--", lw=1.2, color=color,
                label=f"{prefix}exponent {page.interval(est, 'ratio')}")
    else:
        ax.plot([], [], ls="", color=color, label=f"{prefix}no fit (fewer than 3 cells with a median)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    people_ticks(ax, "y")
    xs = np.unique(x[x > 0])
    ax.set_xticks(xs, [page.fmt(v) for v in xs])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    handles, _ = ax.get_legend_handles_labels()
    extra = [Line2D([], [], ls="", marker="s", mfc="none", color="#444444", label="median not reached (not fitted)")]
    ax.legend(handles=handles + (extra if ax in _NOT_REACHED else []), loc="best", fontsize=7)


# ---- phase diagrams -----------------------------------------------------------------------------------------
def phase_panel(ax: plt.Axes, grid: pd.DataFrame, xvalues: Sequence, yvalues: Sequence, xlabel: str,
                ylabel: str | None) -> None:
    """A phase diagram: one square per grid point (columns x, y, phase, agree, n, median), coloured by its
    majority phase and annotated with the median grok step and how many seeds agree with the majority.
    `yvalues` of length 1 (or ylabel None) gives a 1-D strip."""
    xi = {page.fmt(v): k for k, v in enumerate(xvalues)}
    yi = {page.fmt(v): k for k, v in enumerate(yvalues)}
    for row in grid.itertuples(index=False):
        i, j = xi[page.fmt(row.x)], yi[page.fmt(row.y)]
        ax.add_patch(Rectangle((i - 0.5, j - 0.5), 1, 1, facecolor=PHASE_COLORS[row.phase], edgecolor="white",
                               lw=1.5, alpha=0.9))
        text = f"{page.fmt(row.median, 'step')}\n{row.agree}/{row.n}"
        ax.text(i, j, text.replace("not reached", "–"), ha="center", va="center", fontsize=7.5, color="white",
                fontweight="bold")
    ax.set_xlim(-0.5, len(xvalues) - 0.5)
    ax.set_ylim(-0.5, len(yvalues) - 0.5)
    ax.set_xticks(range(len(xvalues)), [page.fmt(v) for v in xvalues])
    ax.set_yticks(range(len(yvalues)), [page.fmt(v) for v in yvalues] if ylabel else [""] * len(yvalues))
    ax.grid(False)
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.set_aspect("equal" if len(yvalues) > 1 else "auto")
