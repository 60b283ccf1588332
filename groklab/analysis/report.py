"""`groklab report`: one self-contained page about a sweep (or every stored run), with its figures and tables.

`report()` writes into its folder: `index.html` (every figure embedded, opens on its own), each figure as PNG
and SVG, `cells.csv` / `events.csv` (numbers as computed: a median never reached is inf there) and `cells.md` /
`events.md` (formatted as on the page). Statistics are survival-aware throughout: a run that did not grok is
censored at its own budget, times are summarised by Kaplan–Meier medians with 95% intervals (groklab.analysis
.stats), and a cell where fewer than half the runs grokked has no median.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

from groklab.analysis import figures, outcomes, page, stats, tables  # noqa: E402
from groklab.analysis.phases import PhaseRule, majority, phases  # noqa: E402
from groklab.store import Store, StoreError  # noqa: E402

MAX_CELLS = 48  # curve panels per figure
MAX_PANELS = 12  # phase-diagram panels (one per combination of the axes not in the diagram)
MAX_COUNT_ROWS = 6  # lines on one time-to-grok panel that each get their own "k/n" row
MAX_LEGEND = 24  # cells named in the survival figure's legend
MAX_GRID = 12  # an axis with more distinct values (a random axis) gets no phase diagram
UNIT_MEASURE = {"step": "grokked_step", "samples": "grokked_samples", "seconds": "grokked_seconds"}
NEUTRAL = "#333333"  # a line that stands for every condition at once
LOSS_LABELS = {"cross_entropy": "cross-entropy loss", "stablemax": "stablemax cross-entropy loss", "mse": "MSE loss"}
WALL_NOTE = ("Wall seconds depend on the machine's load (the same run took 498 s on a loaded machine and 30 s on "
             "an idle one) and on how many runs shared a pack: compare them only within one sweep on one machine.")


def short(key: str) -> str:
    return key.split(".")[-1]


def cell_title(axes: list[str], values: tuple) -> str:
    return ", ".join(f"{short(a)}={page.fmt(v)}" for a, v in zip(axes, values)) or "all runs"


def sorted_values(values: Sequence) -> list:
    """Distinct values in order (numbers ascending; mixed types by their text)."""
    distinct = list(dict.fromkeys(values))
    try:
        return sorted(distinct)
    except TypeError:
        return sorted(distinct, key=str)


@dataclass
class Data:
    """What every figure and table of one report shares, computed once."""

    sweep: str | None
    runs: pd.DataFrame  # one row per run, with `cell` (its cell's title) and `phase` added
    curves: pd.DataFrame
    axes: list[str]
    rule: PhaseRule
    cells: list[tuple[tuple, pd.DataFrame]] = field(default_factory=list)
    colors: dict[str, str] = field(default_factory=dict)

    def color(self, label: str | None) -> str:
        """The colour of a condition: fixed once given (build() gives the cells and per-axis lines theirs),
        the next palette colour for a label first seen later (e.g. a scaling fit's line)."""
        if label is None:
            return NEUTRAL
        if label not in self.colors:
            self.colors[label] = figures.PALETTE[len(self.colors) % len(figures.PALETTE)]
        return self.colors[label]

    @property
    def labels(self) -> list[str]:
        return [cell_title(self.axes, key) for key, _ in self.cells]

    def run_curves(self, run_id: str) -> pd.DataFrame:
        c = self.curves
        return c[(c["run_id"] == run_id) & (c["step"] > 0)] if len(c) else c

    def times(self, runs: pd.DataFrame, unit: str) -> tuple[np.ndarray, np.ndarray]:
        """(time, observed) per run in `unit`, censored at each run's own budget; runs without one dropped."""
        t, o = outcomes.time_to_event(runs, UNIT_MEASURE[unit], self.curves)
        keep = np.isfinite(t)
        return t[keep], o[keep]

    def loss_label(self) -> str:
        losses = set(self.runs["train.loss"].dropna()) if "train.loss" in self.runs else {"cross_entropy"}
        return LOSS_LABELS.get(next(iter(losses)), "loss") if len(losses) == 1 else "loss (each run's train.loss)"


def prepare(store: Store, sweep: str | None, rule: PhaseRule | None) -> Data:
    """The runs, curves and axes of `sweep` (or the whole store); the phase rule from the sweep's `analysis`
    section when none is given (Liu et al.'s thresholds when it has none)."""
    runs = store.runs(sweep=sweep)
    if runs.empty:
        raise StoreError(f"--sweep: no finished runs in {sweep or 'the store'} yet; run a sweep first")
    spec = store.sweep_spec(sweep) if sweep is not None else {}
    if rule is None:
        rule = PhaseRule(**((spec.get("analysis") or {}).get("phases") or {}))
    return build(runs, store.curves(runs["run_id"]), load_axes(store, sweep, runs), rule, sweep)


def build(runs: pd.DataFrame, curves: pd.DataFrame, axes: list[str], rule: PhaseRule | None = None,
          sweep: str | None = None) -> Data:
    """Data from frames in the store's formats: each run's phase and cell, the cells, one colour per condition
    (cells first, then the combinations of all axes but one that the per-axis figures draw as lines)."""
    rule = rule or PhaseRule()
    runs = runs.assign(phase=phases(runs, curves, rule)["phase"].to_numpy(), cell="")
    for key, g in tables.groups(runs, axes):
        runs.loc[g.index, "cell"] = cell_title(axes, key)
    d = Data(sweep, runs, curves, axes, rule, tables.groups(runs, axes))
    others = [cell_title([a for a in axes if a != axis], key) for axis in axes
              for key, _ in tables.groups(runs, [a for a in axes if a != axis]) if len(axes) > 1]
    d.colors = figures.condition_colors(d.labels + others)
    return d


def load_axes(store: Store, sweep: str | None, runs: pd.DataFrame) -> list[str]:
    """A sweep's grid and random axes; for the whole store, the config keys that vary (not seeds, budgets
    or what is recorded: tables.varying_axes)."""
    if sweep is not None:
        spec = store.sweep_spec(sweep)
        return [a for a in list(spec.get("grid", {})) + list(spec.get("random", {})) if a in runs.columns]
    return tables.varying_axes(runs)


# ---- the report ----------------------------------------------------------------------------------------------
def report(store: Store, sweep: str | None = None, out: str | Path = "report", rule: PhaseRule | None = None,
           sections: Sequence[page.Section] = ()) -> Path:
    """Write index.html, figures (PNG + SVG) and tables (CSV + Markdown) for `sweep` (or every stored run) into
    `out`. `rule`: the phase thresholds (default: the sweep's `analysis.phases`, else Liu et al.'s). `sections`
    (e.g. hypothesis verdicts) go right after the overview."""
    d = prepare(store, sweep, rule)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with figures.style():
        body = [cells_section(d, out), *folds_section(d, out), comparisons_section(d, out), curves_section(d, out),
                phase_section(d, out),
                survival_section(d, out),
                axes_section(d, out), scaling_section(d, out), measures_section(d, out), runs_section(d, out)]
    parts = [overview(d), *sections, *body]
    title = f"groklab report: {d.sweep or 'all runs in the store'}"
    (out / "index.html").write_text(page.page(title, parts), encoding="utf-8")
    return out


def overview(d: Data) -> page.Section:
    """What was run and how to read the numbers."""
    r = d.runs
    values = "; ".join(f"<code>{html.escape(a)}</code>: " + ", ".join(html.escape(page.fmt(v)) for v in
                       sorted_values(r[a].map(tables.hashable))) for a in d.axes) or "none (every run is in one cell)"
    seeds = sorted_values(r["train.seed"])
    per_cell = sorted({len(g) for _, g in d.cells})
    steps = sorted_values(r["train.steps"].astype(int))
    samples = outcomes.budget(r, "samples", d.curves)
    k = int(r["grokked_step"].notna().sum())
    status = ", ".join(f"{n} {s}" for s, n in r["status"].value_counts().items())
    facts = {
        "Sweep": html.escape(d.sweep) if d.sweep else "all runs in the store (no sweep named)",
        "Swept axes": values,
        "Seeds": f"{html.escape(', '.join(page.fmt(s) for s in seeds))} ({'–'.join(map(str, per_cell))} per cell)",
        "Budget": f"{' / '.join(page.fmt(s, 'step') for s in steps)} steps; "
                  f"{_range(samples, 'samples')} samples (steps × each run's batch)",
        "Runs": f"{len(r):,} in {len(d.cells):,} cells ({html.escape(status)})",
        "Grokked": f"{k:,} of {len(r):,} runs ({page.interval(_pct(stats.fraction(k, len(r))), 'pct')})",
    }
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts.items())
    return page.Section("Overview", f'<dl class="facts">{dl}</dl>\n<p>{definitions(d)}</p>\n'
                        '<p class="note">This page is self-contained. The folder it was written to also holds each '
                        "figure as PNG and SVG, and the tables as CSV (numbers as computed) and Markdown.</p>")


def _pct(est: stats.Estimate) -> tuple[float, float, float]:
    return est.value, est.low, est.high


def _range(values: np.ndarray, kind: str) -> str:
    v = values[np.isfinite(values)]
    if not len(v):
        return "–"
    lo, hi = page.fmt(v.min(), kind), page.fmt(v.max(), kind)
    return lo if lo == hi else f"{lo} to {hi}"


def definitions(d: Data) -> str:
    r, rule = d.runs, d.rule
    threshold = " / ".join(page.fmt(v) for v in sorted_values(r.get("metrics.threshold", pd.Series([0.99]))))
    hold = sorted_values(r.get("metrics.hold", pd.Series([1])).dropna().astype(int))
    held = f", held for {' / '.join(map(str, hold))} consecutive evaluations" if hold != [1] else ""
    delay = f"{rule.delay:,} steps" if rule.delay is not None else f"{page.fmt(rule.delay_fraction, 'pct')} of the budget"
    return (f"<b>Grok step</b> = the first evaluation at which validation accuracy ≥ {threshold}{held}. A run "
            "that did not grok within its budget is <b>censored at its own budget</b> (in steps; in samples, its "
            "steps × its batch; in wall seconds, its own run time): it is neither dropped nor counted as infinite. "
            "Times to grok are summarised per cell by the <b>Kaplan–Meier</b> median with its 95% interval; a cell "
            "where fewer than half the runs grokked has no median (“not reached”), and an interval with no upper "
            "end shows ∞. Fractions carry Wilson 95% intervals; the mean grok delay (steps from memorizing to "
            "grokking, runs that grokked) and final validation accuracy carry bootstrap 95% intervals over seeds. "
            f"<b>Phases</b> (Liu et al. 2022): fitted = train accuracy ≥ {page.fmt(rule.train_threshold)}, "
            f"generalized = validation accuracy ≥ {page.fmt(rule.val_threshold)}; comprehension generalizes within "
            f"{delay} of fitting, grokking later, memorization never, confusion never fits. {WALL_NOTE}")


# ---- tables ------------------------------------------------------------------------------------------------------
CELL_HEADERS = {
    "grok_step": "steps to grok: KM median [95%]",
    "grok_samples": "samples to grok: KM median [95%]",
    "grok_seconds": "wall seconds to grok (load-dependent): KM median [95%]",
    "memorized_step": "steps to memorize: KM median [95%]",
}


def cells_display(d: Data, cl: pd.DataFrame) -> pd.DataFrame:
    """The cells table as people read it: one column per statistic, value and interval together."""
    show = cl[d.axes].copy()
    show["seeds"] = cl["seeds"]
    show["grokked [95%]"] = [f"{k}/{n} ({page.interval((f, lo, hi), 'pct')})" for k, n, f, lo, hi in
                             cl[["grokked", "seeds", "grokked_fraction", "grokked_fraction_low",
                                 "grokked_fraction_high"]].itertuples(index=False)]
    if "phase" in cl:
        show["majority phase (seeds)"] = [f"{p} ({a}/{n})" for p, a, n in zip(cl["phase"], cl["phase_agree"], cl["seeds"])]
    for name, header in CELL_HEADERS.items():
        kind = "seconds" if name == "grok_seconds" else "samples" if name == "grok_samples" else "step"
        show[header] = [page.interval(t, kind) for t in cl[[f"{name}_median", f"{name}_low", f"{name}_high"]]
                        .itertuples(index=False)]
    show["grok delay, steps: mean [95%]"] = [page.interval(t, "step") for t in cl[
        ["grok_delay_mean", "grok_delay_low", "grok_delay_high"]].itertuples(index=False)]
    show["final val accuracy: mean [95%]"] = [page.interval(t, "acc") for t in cl[
        ["final_val_acc_mean", "final_val_acc_low", "final_val_acc_high"]].itertuples(index=False)]
    show["budget (steps)"] = cl["budget_steps"]
    show["diverged"] = cl["diverged"]
    for col, header in (("fell_back", "fell back after grokking"), ("loss_spikes_median", "loss spikes (median)")):
        if col in cl:
            show[header] = cl[col]
    return show


def cells_section(d: Data, out: Path) -> page.Section:
    cl = tables.cells(d.runs, d.axes, d.curves, d.runs["phase"])
    cl.to_csv(out / "cells.csv", index=False)
    show = cells_display(d, cl)
    (out / "cells.md").write_text(tables.to_markdown(show))
    note = ('<p class="note">One row per cell (a combination of swept values), statistics over its seeds. '
            "“not reached”: fewer than half the cell's runs grokked within their budgets. Wall seconds depend on "
            "the machine's load and on the pack size.</p>")
    return page.Section("Cells", note + page.table(show))


def folds_section(d: Data, out: Path) -> list[page.Section]:
    """A sweep over task.fold: each setting's val accuracy as mean ± spread over the folds (none otherwise)."""
    cv = tables.folds(d.runs, d.axes)
    if cv.empty:
        return []
    cv.to_csv(out / "folds.csv", index=False)
    others = [a for a in d.axes if a != "task.fold"]
    show = pd.DataFrame({**{short(a): cv[a].map(page.fmt) for a in others},
                         "folds": cv["folds"], "runs": cv["runs"],
                         "val acc mean ± sd": [f"{page.fmt(m, 'acc')} ± {page.fmt(sd, 'acc')}"
                                               for m, sd in zip(cv["val_acc_mean"], cv["val_acc_std"])],
                         "range": [f"{page.fmt(lo, 'acc')}–{page.fmt(hi, 'acc')}"
                                   for lo, hi in zip(cv["val_acc_min"], cv["val_acc_max"])],
                         "grokked": [f"{k}/{n}" for k, n in zip(cv["grokked"], cv["runs"])],
                         "selected": ["← K-fold choice" if sel else "" for sel in cv["selected"]]})
    (out / "folds.md").write_text(tables.to_markdown(show))
    note = ('<p class="note">K-fold cross-validation: each setting of the other axes, its final val accuracy over '
            "the folds (each fold held out once) as mean ± standard deviation and range. The setting with the "
            "highest mean is the one K-fold validation selects.</p>")
    return [page.Section("Cross-validation", note + page.table(show))]


def comparisons_section(d: Data, out: Path) -> page.Section:
    """Effect sizes along each axis with the others fixed: trend and neighbour-to-neighbour ratios."""
    cmp = tables.comparisons(d.runs, d.axes, d.curves)
    cmp.to_csv(out / "comparisons.csv", index=False)
    if cmp.empty:
        return page.Section("Comparisons", "<p>No axis has two values to compare.</p>")
    show = pd.DataFrame({
        "axis": cmp["axis"], "others fixed": cmp["others fixed"], "comparison": cmp["comparison"],
        "statistic": cmp["statistic"],
        "estimate [95%]": [f"{page.fmt(v, 'ratio')} [{page.fmt(lo, 'ratio')}, {page.fmt(hi, 'ratio')}]"
                           for v, lo, hi in zip(cmp["estimate"], cmp["low"], cmp["high"])],
        "p": [page.fmt(p, "p") for p in cmp["p"]],
    })
    (out / "comparisons.md").write_text(tables.to_markdown(show))
    note = ('<p class="note">Steps to grok along each swept axis, the other axes held fixed. Trend: a rank '
            "correlation that counts runs that never grokked as later than their budgets (positive: larger values "
            "grok later), with a permutation p. Neighbouring values: the ratio of restricted mean steps to grok "
            "(below 1: the second value groks sooner) with a bootstrap interval and the log-rank p. p-values are "
            "not corrected for the number of rows; a claim decided in advance belongs in a hypotheses file "
            "(<code>groklab verify</code>).</p>")
    return page.Section("Comparisons", note + page.table(show))


RUN_COLUMNS = {  # events column -> (header on the page, format)
    "memorized_step": ("memorized (step)", "step"), "grokked_step": ("grokked (step)", "step"),
    "grok_delay": ("delay (steps)", "step"), "grokked_samples": ("grokked (samples)", "samples"),
    "grokked_seconds": ("grokked (wall s, load-dependent)", "seconds"), "steps_run": ("steps run", "step"),
    "final_train_acc": ("final train acc", "acc"), "final_val_acc": ("final val acc", "acc"),
    "wall_seconds": ("run time (wall s, load- and pack-dependent)", "seconds"),
}


def runs_section(d: Data, out: Path) -> page.Section:
    ev = tables.events(d.runs, d.axes, d.runs["phase"])
    ev.to_csv(out / "events.csv", index=False)
    show = ev.drop(columns=["sweeps"], errors="ignore").rename(columns={c: h for c, (h, _) in RUN_COLUMNS.items()})
    show["run_id"] = show["run_id"].str[:10]
    show = show.rename(columns={"train.seed": "seed", "run_id": "run id"})
    formats = {h: k for h, k in RUN_COLUMNS.values()} | {"seed": "int", "run id": "text"}
    (out / "events.md").write_text(tables.to_markdown(show, formats))
    note = ('<p class="note">One row per run. Missing values (“–”): the event did not happen within the run\'s '
            "budget. Run ids are shortened to 10 characters.</p>")
    return page.Section("Runs", note + page.table(show, formats))


# ---- curves ------------------------------------------------------------------------------------------------------
def _grid(n: int, width: float = 3.3, height: float = 2.5, sharey: bool = False) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axs = plt.subplots(rows, cols, figsize=(width * cols, height * rows + 0.6), squeeze=False, sharex=True,
                            sharey=sharey)
    flat = list(axs.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    for ax in flat[max(0, n - cols):n]:  # the last panel of each column shows the step labels shared axes hide
        ax.xaxis.set_tick_params(labelbottom=True)
    return fig, flat[:n]


def plot_curves(d: Data, kind: str, base: Path) -> list[Path]:
    """One panel per cell (at most MAX_CELLS): train (dashed) and val (solid) accuracy or loss of every seed, in
    the cell's colour, with a thin line at each run's grok step. All panels share their y scale."""
    cells = d.cells[:MAX_CELLS]
    fig, panels = _grid(len(cells), sharey=True)
    for ax, (key, g) in zip(panels, cells):
        label = cell_title(d.axes, key)
        color = d.color(label)
        for _, run in g.sort_values("train.seed").iterrows():
            c = d.run_curves(run["run_id"])
            if not len(c):
                continue
            ax.plot(c["step"], c[f"train_{kind}"], "--", color=color, lw=1.0, alpha=0.8)
            ax.plot(c["step"], c[f"val_{kind}"], "-", color=color, lw=1.3, alpha=0.9)
            if kind == "acc" and pd.notna(run["grokked_step"]):
                ax.axvline(run["grokked_step"], color=color, lw=0.6, alpha=0.5)
        figures.log_steps(ax, None)
        ax.set_title(figures.wrap(label, 40), fontsize=8)
    if kind == "loss":
        panels[0].set_yscale("log")  # shared by every panel
        panels[0].yaxis.set_minor_locator(NullLocator())
    else:
        panels[0].set_ylim(-0.02, 1.02)
    fig.supxlabel("step (log scale)", fontsize=9)
    fig.supylabel("accuracy" if kind == "acc" else d.loss_label(), fontsize=9)
    handles = [plt.Line2D([], [], color=NEUTRAL, ls="-", label="validation"),
               plt.Line2D([], [], color=NEUTRAL, ls="--", label="train")]
    if kind == "acc":
        handles.append(plt.Line2D([], [], color=NEUTRAL, lw=0.6, label="grok step"))
    fig.legend(handles=handles, loc="upper center", ncol=3, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return figures.save(fig, base)


def curves_section(d: Data, out: Path) -> page.Section:
    n = len(d.cells)
    seeds = "–".join(map(str, sorted({len(g) for _, g in d.cells})))
    cut = f" Only the first {MAX_CELLS} of {n} cells are shown." if n > MAX_CELLS else ""
    acc = plot_curves(d, "acc", out / "curves_acc")[0]
    loss = plot_curves(d, "loss", out / "curves_loss")[0]
    return page.Section("Curves", page.figure(acc, (
        f"Train (dashed) and validation (solid) accuracy against step (log scale): one panel per cell, its {seeds} "
        "seeds overlaid in the cell's colour; a thin vertical line marks each run's grok step. Every panel shows "
        f"accuracy on the same 0–1 scale.{cut}")) + page.figure(loss, (
        f"Train (dashed) and validation (solid) {d.loss_label()} against step (log scale), one panel per cell with "
        f"its seeds overlaid; every panel shares one logarithmic loss scale, so panels compare directly.{cut}")))


# ---- phase diagrams ----------------------------------------------------------------------------------------------
def phase_grid(d: Data, runs: pd.DataFrame, a: str, b: str | None) -> pd.DataFrame:
    """Per grid point of axes a (× b): majority phase, seeds agreeing, seeds, KM median grok step."""
    keys = [a] + ([b] if b else [])
    rows = []
    for key, g in tables.groups(runs, keys):
        phase, agree = majority(g["phase"])
        t, o = d.times(g, "step")
        rows.append({"x": key[0], "y": key[1] if b else "", "phase": phase, "agree": agree, "n": len(g),
                     "median": stats.median_time(t, o).value})
    return pd.DataFrame(rows)


def plot_phases(d: Data, a: str, b: str | None, grid: list[str], base: Path) -> tuple[list[Path], int]:
    """One phase diagram of a × b (a 1-D strip when b is None) per combination of the other `grid` axes (at most
    MAX_PANELS; axes not in `grid`, random ones, are pooled); returns the files and how many panels exist."""
    others = [x for x in grid if x not in (a, b)]
    groups = tables.groups(d.runs, others)
    xs = sorted_values(d.runs[a].map(tables.hashable))
    ys = sorted_values(d.runs[b].map(tables.hashable)) if b else [""]
    cols = min(3, len(groups[:MAX_PANELS]))
    rows = math.ceil(len(groups[:MAX_PANELS]) / cols)
    w, h = 0.85 * len(xs) + 1.6, (0.65 * len(ys) + 1.3) if b else 1.6
    fig, axs = plt.subplots(rows, cols, figsize=(w * cols, h * rows + 0.7), squeeze=False)
    for ax in list(axs.flat)[len(groups):]:
        ax.set_visible(False)
    for ax, (key, g) in zip(axs.flat, groups[:MAX_PANELS]):
        figures.phase_panel(ax, phase_grid(d, g, a, b), xs, ys, short(a), short(b) if b else None)
        if others:
            ax.set_title(figures.wrap(cell_title(others, key), 40), fontsize=8)
    fig.legend(handles=figures.phase_handles(), loc="upper center", ncol=4, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.9 if b else 0.8))
    return figures.save(fig, base), len(groups)


def phase_section(d: Data, out: Path) -> page.Section:
    grid = [a for a in d.axes if d.runs[a].map(tables.hashable).nunique() <= MAX_GRID]
    pooled = [short(a) for a in d.axes if a not in grid]
    pairs = list(itertools.combinations(grid, 2)) if len(grid) >= 2 else [(a, None) for a in grid]
    parts = []
    for a, b in pairs:
        name = "phase_" + "__".join(x.replace(".", "_") for x in (a, b) if x)
        files, panels = plot_phases(d, a, b, grid, out / name)
        others = [x for x in grid if x not in (a, b)]
        what = f"{short(a)} × {short(b)}" if b else short(a)
        extra = f" One panel per combination of {', '.join(map(short, others))}." if others else ""
        extra += f" Runs at every value of {', '.join(pooled)} are pooled." if pooled else ""
        cut = f" Only the first {MAX_PANELS} of {panels} panels are shown." if panels > MAX_PANELS else ""
        parts.append(page.figure(files[0], (
            f"Phase diagram over {what}: each square is one grid point, coloured by the phase most of its seeds are "
            "in; the upper number is the KM median grok step (“–” where fewer than half grokked), the lower how "
            f"many seeds share that phase.{extra}{cut}")))
    if not parts:
        why = ("no axis is swept" if not d.axes else
               f"every swept axis has more than {MAX_GRID} distinct values (random axes)")
        parts.append(f"<p>No phase diagram: {why}.</p>")
    counts = d.runs["phase"].value_counts()
    summary = ", ".join(f"{counts.get(p, 0)} {p}" for p in ("comprehension", "grokking", "memorization", "confusion"))
    return page.Section("Phase diagrams", f"<p>Runs per phase: {summary}.</p>" + "".join(parts))


# ---- survival, time to grok against each axis -------------------------------------------------------------------
def survival_section(d: Data, out: Path) -> page.Section:
    fig, panels = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, unit in zip(panels, ("step", "samples", "seconds")):
        groups = {cell_title(d.axes, key): d.times(g, unit) for key, g in d.cells}
        figures.survival_panel(ax, groups, figures.UNITS[unit], d.colors, legend=False)
    panels[2].set_title("wall seconds depend on load and pack size", fontsize=8)
    handles, labels = panels[0].get_legend_handles_labels()
    if 0 < len(handles) <= MAX_LEGEND:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(handles)),
                   fontsize=7)
    fig.tight_layout()
    files = figures.save(fig, out / "survival")
    colours = (f" With {len(handles)} cells there is no legend: each cell has the colour of its panel in the "
               "curves figures." if len(handles) > MAX_LEGEND else "")
    return page.Section("Survival curves", page.figure(files[0], (
        "Kaplan–Meier estimate of the fraction of runs not yet grokked against steps, samples (examples seen) and "
        "wall seconds, one curve per cell with its 95% band; + marks a run that did not grok, at its own budget. "
        f"A curve that stays above one half has no median.{colours} " + WALL_NOTE)))


def plot_axis(d: Data, axis: str, base: Path) -> list[Path]:
    """Time to grok against one swept axis in steps, samples and wall seconds, one series per combination of the
    other axes; with more than MAX_COUNT_ROWS series, one pooled "k/n" row instead of one row per series."""
    others = [a for a in d.axes if a != axis]
    groups = tables.groups(d.runs, others)
    per_series = len(groups) <= MAX_COUNT_ROWS
    fig, panels = plt.subplots(1, 3, figsize=(15, 4.4))
    for ax, unit in zip(panels, ("step", "samples", "seconds")):
        for i, (key, g) in enumerate(groups):
            label = cell_title(others, key) if others else None
            t, o = outcomes.time_to_event(g, UNIT_MEASURE[unit], d.curves)
            keep = np.isfinite(t)
            x = g[axis].map(tables.hashable).to_numpy()[keep]
            figures.outcome_vs_axis(ax, x, t[keep], o[keep], figures.TIME_TO_GROK[unit], axis, color=d.color(label),
                                    label=label if unit == "step" else None, series=(i, len(groups)),
                                    counts=per_series)
        if not per_series:
            figures.count_row(ax, d.runs[axis].map(tables.hashable).to_numpy(), d.runs["grokked_step"].notna())
    handles, labels = panels[0].get_legend_handles_labels()
    handles += figures.marker_handles()
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(handles)))
    fig.tight_layout()
    return figures.save(fig, base)


def axes_section(d: Data, out: Path) -> page.Section:
    parts = []
    for axis in d.axes:
        files = plot_axis(d, axis, out / f"grok_vs_{axis.replace('.', '_')}")
        others = [short(a) for a in d.axes if a != axis]
        lines = f" One line per combination of {', '.join(others)}, in its colour." if others else ""
        series = len(tables.groups(d.runs, [a for a in d.axes if a != axis]))
        counted = "in each line" if series <= MAX_COUNT_ROWS else "over all lines"
        parts.append(page.figure(files[0], (
            f"Time to grok against {axis} in steps, samples (examples seen) and wall seconds: ● a run that grokked, "
            "▽ a run that did not, drawn at its own budget; squares are KM medians with 95% intervals (none where "
            "fewer than half grokked; an open ▲ ends an interval with no upper end); the k/n above each value "
            f"counts the seeds that grokked {counted}.{lines} Wall seconds depend on the machine's load and the "
            "pack size.")))
    if not parts:
        parts.append("<p>No axis is swept: every run is in one cell (see the survival curves).</p>")
    return page.Section("Time to grok against each axis", "".join(parts))


# ---- scaling fits ------------------------------------------------------------------------------------------------
def scaling_specs(d: Data) -> list[tuple[str, str, str, np.ndarray, tuple[str, ...], list[str]]]:
    """(file name, title, x label, x per run, axes x stands for, units) of each fit the sweep allows."""
    r, specs = d.runs, []
    if "optim.weight_decay" in d.axes and "optim.weight_decay" in r:
        wd = r["optim.weight_decay"].astype(float).to_numpy()
        if "optim.lr" in d.axes:
            x = r["optim.lr"].astype(float).to_numpy() * wd
            specs.append(("scaling_lr_wd", "learning rate × weight decay", "optim.lr × optim.weight_decay", x,
                          ("optim.lr", "optim.weight_decay"), ["step"]))
        else:
            lr = sorted_values(r["optim.lr"]) if "optim.lr" in r else []
            fixed = f" (lr {page.fmt(lr[0])})" if len(lr) == 1 else ""
            specs.append(("scaling_wd", "weight decay", f"optim.weight_decay{fixed}", wd, ("optim.weight_decay",),
                          ["step"]))
    if "train.batch_size" in d.axes:
        specs.append(("scaling_batch_size", "batch size", "train.batch_size",
                      r["train.batch_size"].astype(float).to_numpy(), ("train.batch_size",), ["step", "samples"]))
    return specs


def plot_scaling(d: Data, x: np.ndarray, axes: tuple[str, ...], units: list[str], xlabel: str,
                 base: Path) -> tuple[list[Path] | None, int]:
    """Per unit a log-log panel: every run, per cell its KM median, and per combination of the other axes the
    power-law fit (stats.scaling). None when no line has 3 cells with a median; returns the most such cells."""
    others = [a for a in d.axes if a not in axes]
    fig, panels = plt.subplots(1, len(units), figsize=(6.2 * len(units), 4.4), squeeze=False)
    most = 0
    for ax, unit in zip(panels[0], units):
        groups = tables.groups(d.runs, others)
        for key, g in groups:
            label = cell_title(others, key) if others else None
            t, o = outcomes.time_to_event(g, UNIT_MEASURE[unit], d.curves)
            xv = x[d.runs.index.get_indexer(g.index)]
            keep = np.isfinite(t) & (xv > 0)
            est, table = stats.scaling(xv[keep], t[keep], o[keep], g["cell"].to_numpy()[keep])
            most = max(most, int(np.isfinite(table["median"]).sum()))
            color = d.color(label)
            ax.scatter(xv[keep][o[keep]], t[keep][o[keep]], color=color, zorder=2, **{**figures.GROKKED, "alpha": 0.35})
            ax.scatter(xv[keep][~o[keep]], t[keep][~o[keep]], edgecolors=color, zorder=2,
                       **{**figures.CENSORED, "alpha": 0.5})
            figures.scaling_panel(ax, table, est, xlabel, figures.TIME_TO_GROK[unit], color=color, label=label)
    fig.tight_layout()
    if most < 3:
        plt.close(fig)
        return None, most
    return figures.save(fig, base), most


def scaling_section(d: Data, out: Path) -> page.Section:
    parts = []
    for name, title, xlabel, x, axes, units in scaling_specs(d):
        files, most = plot_scaling(d, x, axes, units, xlabel, out / name)
        if files is None:
            parts.append(f"<p>No fit of time to grok against {title}: a fit needs at least 3 cells (with "
                         f"{title} > 0) where at least half the runs grokked; the best line has {most}.</p>")
            continue
        per = " in steps and in samples" if len(units) > 1 else " in steps"
        parts.append(page.figure(files[0], (
            f"Time to grok against {title}{per} on log-log axes: faint dots are runs (▽ did not grok, at its own "
            "budget), circles the KM median of each cell with its 95% interval (an open ▲ ends an interval with "
            "no upper end; a hollow square along the top: median not reached, left out of the fit), the dashed "
            "line the power-law fit time ∝ x^a of the medians, with "
            "the exponent a and its 95% interval in the legend; one fit per combination of the other axes."
            + (f" Runs at {title} 0 have no place on a log axis and are left out." if (x <= 0).any() else ""))))
    if not parts:
        parts.append("<p>No scaling fit: the sweep varies neither weight decay (with or without the learning "
                     "rate) nor the batch size.</p>")
    return page.Section("Scaling fits", "".join(parts))


# ---- measures ----------------------------------------------------------------------------------------------------
# Families of measure curves (docs/measures.md) and how each panel shows them.
MEASURE_PANELS = (
    ("sharpness", "top Hessian eigenvalue (sharpness)", "log"),
    ("hessian_trace", "Hessian trace (Hutchinson)", "symlog"),
    ("b_simple", "gradient noise scale B_simple (examples)", "log"),
    ("softmax_collapse", "softmax collapse (fraction of train examples)", "linear"),
    ("fourier.restricted_loss", "restricted loss (Nanda et al.)", "log"),
    ("fourier.excluded_loss", "excluded loss (Nanda et al.)", "log"),
    ("fourier.gini_embed", "Gini of embedding Fourier norms", "linear"),
)
NORM_STYLES = ("-", "--", ":", "-.", (0, (1, 1)), (0, (3, 1, 1, 1)))


def plot_measures(d: Data, base: Path) -> list[Path] | None:
    """One panel per recorded measure against step, in each cell's colour: sharpness beside the weight norm (it
    scales with the weights), the noise scale beside the batch sizes in use (batches well above B_simple waste
    samples), per-group weight norms, and val loss against the weight norm (Omnigrok's picture). None if the
    runs recorded no measure."""
    c = d.curves
    panels = [(k, label, scale) for k, label, scale in MEASURE_PANELS if k in c and c[k].notna().any()]
    norm_cols = sorted(col for col in c.columns if col.startswith("norm.") and c[col].notna().any())
    extra = (["norms"] if norm_cols else []) + (["lu"] if "param_norm" in c and c["param_norm"].notna().any() else [])
    if not panels and not norm_cols:
        return None
    n = len(panels) + len(extra)
    cols = min(3, n)
    fig, axs = plt.subplots(math.ceil(n / cols), cols, figsize=(5.2 * cols, 3.6 * math.ceil(n / cols)), squeeze=False)
    flat = list(axs.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    for ax, (k, label, scale) in zip(flat, panels):
        _measure_panel(d, ax, k, label, scale)
    rest = flat[len(panels):n]
    if "norms" in extra:
        _norms_panel(d, rest.pop(0), norm_cols)
    if "lu" in extra:
        ax = rest.pop(0)
        _each_run(d, lambda rc, color, lab: ax.plot(rc["param_norm"], rc["val_loss"], color=color, lw=1, alpha=0.8))
        ax.set_yscale("log")
        ax.set_xlabel("weight norm ‖θ‖ (L2)")
        ax.set_ylabel(f"validation {d.loss_label()}")
        ax.set_title("validation loss against weight norm (Omnigrok)", fontsize=9)
    if len(d.cells) > 1 and panels:
        flat[0].legend(fontsize=7)
    fig.tight_layout()
    return figures.save(fig, base)


def _each_run(d: Data, draw) -> None:  # noqa: ANN001 - draw(curves of one run, colour, legend label or None)
    for key, g in d.cells:
        label = cell_title(d.axes, key)
        for j, rid in enumerate(g["run_id"]):
            draw(d.run_curves(rid), d.color(label), label if j == 0 else None)


def _measure_panel(d: Data, ax: plt.Axes, k: str, label: str, scale: str) -> None:
    def line(rc: pd.DataFrame, color: str, lab: str | None) -> None:
        ok = rc[k].notna()
        ax.plot(rc["step"][ok], rc[k][ok], color=color, lw=1.1, alpha=0.8, label=lab)

    _each_run(d, line)
    if k == "sharpness" and "param_norm" in d.curves:
        twin = ax.twinx()
        _each_run(d, lambda rc, color, lab: twin.plot(rc["step"], rc["param_norm"], color=color, lw=0.8, ls=":"))
        twin.set_ylabel("weight norm ‖θ‖ (dotted)")
        twin.grid(False)
    if k == "b_simple":
        for b in sorted(d.runs["train.batch_size"].dropna().unique()):
            ax.axhline(b, color="grey", lw=0.6, ls="--")
            ax.text(0.99, b, f"batch {int(b)}", transform=ax.get_yaxis_transform(), ha="right", va="bottom",
                    fontsize=7, color="dimgrey")
    ax.set_yscale(scale)
    figures.log_steps(ax)
    ax.set_ylabel(label)


def _norms_panel(d: Data, ax: plt.Axes, norm_cols: list[str]) -> None:
    for key, g in d.cells:
        rc = d.run_curves(g["run_id"].iloc[0])  # one seed per cell: the groups' norms of every seed overlap
        for j, col in enumerate(norm_cols):
            ax.plot(rc["step"], rc[col], color=d.color(cell_title(d.axes, key)), ls=NORM_STYLES[j % len(NORM_STYLES)],
                    lw=1)
    figures.log_steps(ax)
    ax.set_yscale("log")
    ax.set_ylabel("L2 norm per parameter group")
    handles = [plt.Line2D([], [], color=NEUTRAL, lw=1, ls=NORM_STYLES[j % len(NORM_STYLES)], label=col.removeprefix("norm."))
               for j, col in enumerate(norm_cols)]
    ax.legend(handles=handles, fontsize=6, title="line style: group", title_fontsize=6)


def measures_section(d: Data, out: Path) -> page.Section:
    files = plot_measures(d, out / "measures")
    if files is None:
        return page.Section("Measures", "<p>The runs recorded no measure beside loss and accuracy (the "
                            "<code>metrics.measures</code> list: norms, sharpness, noise_scale, fourier).</p>")
    return page.Section("Measures", page.figure(files[0], (
        "Every recorded measure against step (log scale), one line per run in its cell's colour: sharpness "
        "beside the weight norm (dotted), the gradient noise scale beside the batch sizes in use (dashed), the "
        "weight norm of each parameter group (one seed per cell) and validation loss against the weight norm.")))
