"""`groklab report`: curves per cell with seeds overlaid, grok step vs every swept axis, tables.

Writes PNG figures, events/cells tables as CSV and Markdown, and an index.html that shows them all.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from groklab.analysis import tables  # noqa: E402
from groklab.store import Store, StoreError  # noqa: E402

MAX_CELLS = 48


def _label(key: str) -> str:
    return key.split(".")[-1]


def _cell_title(axes: list[str], values: tuple) -> str:
    return ", ".join(f"{_label(a)}={v}" for a, v in zip(axes, values)) or "all runs"


def _grid(n: int) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axs = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharex=True)
    flat = list(axs.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def plot_curves(runs: pd.DataFrame, curves: pd.DataFrame, axes: list[str], kind: str, path: Path) -> None:
    """One panel per cell: train (dashed) and val (solid) accuracy or loss, one colour per seed."""
    cells = tables.groups(runs, axes)[:MAX_CELLS]
    fig, panels = _grid(len(cells))
    colors = plt.get_cmap("tab10")
    for ax, (key, g) in zip(panels, cells):
        for i, (_, run) in enumerate(g.sort_values("train.seed").iterrows()):
            c = curves[(curves["run_id"] == run["run_id"]) & (curves["step"] > 0)]
            col = colors(i % 10)
            ax.plot(c["step"], c[f"train_{kind}"], "--", color=col, lw=1.2)
            ax.plot(c["step"], c[f"val_{kind}"], "-", color=col, lw=1.5, label=f"seed {run['train.seed']}")
            if kind == "acc" and pd.notna(run["grokked_step"]):
                ax.axvline(run["grokked_step"], color=col, lw=0.6, alpha=0.5)
        ax.set_xscale("log")
        if kind == "loss":
            ax.set_yscale("log")
        else:
            ax.set_ylim(-0.03, 1.03)
        ax.set_title(_cell_title(axes, key), fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy" if kind == "acc" else "cross-entropy loss")
        ax.grid(alpha=0.3, which="both", lw=0.4)
    panels[0].legend(fontsize=7, loc="best", title="solid: val, dashed: train", title_fontsize=7)
    what = "Accuracy" if kind == "acc" else "Loss"
    fig.suptitle(f"{what} curves per cell (seeds overlaid)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


GROK_MEASURES = (
    ("grokked_step", "steps to grok"),
    ("grokked_samples", "samples to grok (steps × batch)"),
    ("grokked_seconds", "wall seconds to grok"),
)


def _budget(df: pd.DataFrame, measure: str) -> float:
    """Where 'did not grok' sits for a measure: its largest possible or observed value."""
    if measure == "grokked_step":
        return float(df["train.steps"].max())
    if measure == "grokked_samples":
        accumulate = df["train.accumulate"] if "train.accumulate" in df else 1  # stores older than the key
        return float((df["train.steps"] * df["train.batch_size"] * accumulate).max())
    return float(df["wall_seconds"].max())


def _grok_panel(ax: plt.Axes, df: pd.DataFrame, axis: str, others: list[str], measure: str, ylabel: str,
                pos: dict, numeric: bool) -> None:
    budget = _budget(df, measure)
    never_y = budget * 1.6
    colors = plt.get_cmap("tab10")
    any_never = False
    for i, (key, g) in enumerate(tables.groups(df, others)):
        col = colors(i % 10)
        label = _cell_title(others, key) if others else None
        med_x, med_y, lo, hi = [], [], [], []
        for v, gv in g.groupby(axis, sort=True):
            x = pos[v]
            ys = gv[measure].astype("float").to_numpy()
            spread = (np.arange(len(ys)) - (len(ys) - 1) / 2) * 0.03
            xj = x * (1 + spread) if numeric and x > 0 else x + spread
            ok = np.isfinite(ys)
            ax.scatter(xj[ok], ys[ok], s=14, color=col, alpha=0.55, zorder=3)
            if (~ok).any():
                any_never = True
                ax.scatter(xj[~ok], np.full((~ok).sum(), never_y), marker="v", s=28, facecolors="none",
                           edgecolors=col, zorder=3)
            censored = np.where(ok, ys, np.inf)
            q25, q50, q75 = np.quantile(censored, [0.25, 0.5, 0.75], method="inverted_cdf")
            if np.isfinite(q50):
                med_x.append(x)
                med_y.append(q50)
                lo.append(q50 - q25)
                hi.append((q75 if np.isfinite(q75) else never_y) - q50)
        if med_x:
            ax.errorbar(med_x, med_y, yerr=[lo, hi], color=col, marker="o", ms=6, lw=1.6, capsize=3,
                        label=label, zorder=4)
        elif label:
            ax.plot([], [], color=col, marker="o", label=label)
    if any_never:
        ax.axhline(budget, color="grey", lw=0.8, ls=":")
        ax.text(0.01, never_y, " ▽ did not grok", transform=ax.get_yaxis_transform(), fontsize=8,
                va="bottom", color="dimgrey")
    ys = df[measure].astype("float").dropna()
    if any_never or (len(ys) and ys.max() / max(ys.min(), 1e-9) >= 10):
        ax.set_yscale("log")
    ax.set_xlabel(axis)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both", lw=0.4)


def plot_grok_vs_axis(runs: pd.DataFrame, axes: list[str], axis: str, path: Path) -> None:
    """Time to grok against one swept axis, in steps, samples and wall seconds: every seed as a dot,
    median and quartiles per value, one line per combination of the other axes; runs that never
    grokked drawn as ▽ above the budget line and counted as +inf in the statistics."""
    others = [a for a in axes if a != axis]
    df = runs.assign(**{a: runs[a].map(tables.hashable) for a in axes})
    numeric = _numeric(df[axis])
    xs_all = sorted(df[axis].unique(), key=lambda v: (v is None, v))
    pos = {v: (float(v) if numeric else i) for i, v in enumerate(xs_all)}
    fig, panels = plt.subplots(1, 3, figsize=(15, 4.4))
    for ax, (measure, ylabel) in zip(panels, GROK_MEASURES):
        _grok_panel(ax, df, axis, others, measure, ylabel, pos, numeric)
        if numeric:
            vals = np.array([float(v) for v in xs_all])
            positive = vals[vals > 0]
            if len(positive) and (vals <= 0).any():
                ax.set_xscale("symlog", linthresh=float(positive.min()))
            elif len(positive) == len(vals) and vals.max() / vals.min() >= 10:
                ax.set_xscale("log")
        else:
            ax.set_xticks(range(len(xs_all)), [str(v) for v in xs_all], rotation=20)
    if others:
        panels[0].legend(fontsize=8)
    fig.suptitle(f"Time to grok vs {axis}: median, quartiles and every seed", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


def plot_measures(runs: pd.DataFrame, curves: pd.DataFrame, axes: list[str], path: Path) -> bool:
    """One panel per recorded measure against step, one colour per cell; sharpness beside the weight norm
    (it scales with the weights), the noise scale beside the batch sizes in use (batches well above B_simple
    waste samples), per-group weight norms, and val loss against the weight norm (Omnigrok's picture).
    False if the runs recorded no measure."""
    panels = [(k, label, scale) for k, label, scale in MEASURE_PANELS if k in curves and curves[k].notna().any()]
    norm_cols = sorted(c for c in curves.columns if c.startswith("norm.") and curves[c].notna().any())
    extra = (["norms"] if norm_cols else []) + (["lu"] if "param_norm" in curves else [])
    if not panels and not norm_cols:
        return False
    n = len(panels) + len(extra)
    cols = min(3, n)
    fig, axs = plt.subplots(math.ceil(n / cols), cols, figsize=(5.2 * cols, 3.6 * math.ceil(n / cols)), squeeze=False)
    flat = list(axs.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    cells = tables.groups(runs, axes)
    colors = plt.get_cmap("tab10")

    def each_run(draw: object) -> None:
        for i, (key, g) in enumerate(cells):
            for j, rid in enumerate(g["run_id"]):
                c = curves[(curves["run_id"] == rid) & (curves["step"] > 0)]
                draw(c, colors(i % 10), _cell_title(axes, key) if j == 0 else None)  # type: ignore[operator]

    for ax, (k, label, scale) in zip(flat, panels):
        def line(c: pd.DataFrame, col: object, lab: str | None, ax: plt.Axes = ax, k: str = k) -> None:
            ok = c[k].notna()
            ax.plot(c["step"][ok], c[k][ok], color=col, lw=1.1, alpha=0.8, label=lab)

        each_run(line)
        if k == "sharpness" and "param_norm" in curves:
            twin = ax.twinx()
            each_run(lambda c, col, lab, twin=twin: twin.plot(c["step"], c["param_norm"], color=col, lw=0.8, ls=":"))
            twin.set_ylabel("weight norm ‖θ‖ (dotted)")
        if k == "b_simple":
            for b in sorted(runs["train.batch_size"].dropna().unique()):
                ax.axhline(b, color="grey", lw=0.6, ls="--")
                ax.text(0.99, b, f"batch {int(b)}", transform=ax.get_yaxis_transform(), ha="right", va="bottom",
                        fontsize=7, color="dimgrey")
        ax.set_yscale(scale)
        ax.set_xscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both", lw=0.4)
    rest = flat[len(panels) : n]
    if "norms" in extra:
        ax = rest.pop(0)
        styles = ["-", "--", ":", "-.", (0, (1, 1)), (0, (3, 1, 1, 1))]
        for i, (_key, g) in enumerate(cells):
            rid = g["run_id"].iloc[0]  # one seed per cell: the groups' norms of every seed overlap
            c = curves[(curves["run_id"] == rid) & (curves["step"] > 0)]
            for j, nc in enumerate(norm_cols):
                ax.plot(c["step"], c[nc], color=colors(i % 10), ls=styles[j % len(styles)], lw=1,
                        label=nc.removeprefix("norm.") if i == 0 else None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("L2 norm per parameter group")
        ax.legend(fontsize=6, title="line style: group", title_fontsize=6)
        ax.grid(alpha=0.3, which="both", lw=0.4)
    if "lu" in extra:
        ax = rest.pop(0)
        each_run(lambda c, col, lab, ax=ax: ax.plot(c["param_norm"], c["val_loss"], color=col, lw=1, alpha=0.8))
        ax.set_yscale("log")
        ax.set_xlabel("weight norm ‖θ‖")
        ax.set_ylabel("val loss")
        ax.set_title("val loss against weight norm (Omnigrok)", fontsize=9)
        ax.grid(alpha=0.3, which="both", lw=0.4)
    if len(cells) > 1 and panels:
        flat[0].legend(fontsize=7)
    fig.suptitle("Measures per run (one colour per cell)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def report(store: Store, sweep: str | None = None, out: str | Path = "report") -> Path:
    """Write figures, tables and index.html for `sweep` (or every stored run) into `out`."""
    runs = store.runs(sweep=sweep)
    if runs.empty:
        raise StoreError(f"--sweep: no finished runs in {sweep or 'the store'} yet; run a sweep first")
    axes = load_axes(store, sweep, runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    curves = store.curves(runs["run_id"])

    figures = []
    for kind in ("acc", "loss"):
        name = f"curves_{kind}.png"
        plot_curves(runs, curves, axes, kind, out / name)
        figures.append(name)
    for axis in axes:
        name = f"grok_vs_{axis.replace('.', '_')}.png"
        plot_grok_vs_axis(runs, axes, axis, out / name)
        figures.append(name)
    if plot_measures(runs, curves, axes, out / "measures.png"):
        figures.append("measures.png")

    ev = tables.events(runs, axes)
    cl = tables.cells(runs, axes)
    ev.to_csv(out / "events.csv", index=False)
    cl.to_csv(out / "cells.csv", index=False)
    (out / "events.md").write_text(tables.to_markdown(ev))
    (out / "cells.md").write_text(tables.to_markdown(cl))
    (out / "index.html").write_text(_html(sweep, axes, figures, cl, ev))
    return out


def load_axes(store: Store, sweep: str | None, runs: pd.DataFrame) -> list[str]:
    if sweep is not None:
        spec = store.sweep_spec(sweep)
        return [a for a in list(spec.get("grid", {})) + list(spec.get("random", {})) if a in runs.columns]
    return tables.varying_axes(runs)


def _html(sweep: str | None, axes: list[str], figures: list[str], cl: pd.DataFrame, ev: pd.DataFrame) -> str:
    title = f"groklab report: {sweep or 'all runs'}"
    imgs = "\n".join(f'<figure><img src="{f}" alt="{f}"><figcaption>{f}</figcaption></figure>' for f in figures)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}} img{{max-width:100%}}
table{{border-collapse:collapse;font-size:13px}} td,th{{border:1px solid #ccc;padding:3px 6px}}</style>
</head><body><h1>{html.escape(title)}</h1>
<p>Swept axes: {html.escape(', '.join(axes) or 'none')}. Grok step = first evaluated step with validation
accuracy ≥ threshold; runs that never grokked count as +∞ in medians and quartiles.</p>
<h2>Cells (statistics over seeds)</h2>{cl.to_html(index=False, na_rep="–")}
{imgs}
<h2>Runs</h2>{ev.to_html(index=False, na_rep="–")}
</body></html>"""
