"""The report: survival-aware cell statistics, numbers formatted for people, figures that censor each run at its
own budget, and a self-contained index.html."""

from __future__ import annotations

import base64
import math
import re
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import groklab
from groklab.analysis import figures, page, report, stats, tables
from groklab.store import Store

BASE = {"task": {"modulus": 23, "train_frac": 0.7}, "model": {"layers": 1, "width": 32, "heads": 4},
        "optim": {"lr": 1e-2}, "train": {"steps": 300, "eval_every": 50, "batch_size": 64}}
UNFORMATTED = re.compile(r"(?<!\w)(?:inf|nan|<NA>)(?!\w)", re.IGNORECASE)

def runs_frame(rows: list[dict]) -> pd.DataFrame:
    """Runs in the store's format (the columns cells/events and outcomes read)."""
    out = []
    for i, r in enumerate(rows):
        steps, batch = r.get("steps", 1000), r.get("batch", 64)
        grok = r.get("grok")
        out.append({"run_id": f"r{i:03d}", "sweeps": "t", "status": "grokked" if grok else "memorized",
                    "memorized_step": r.get("mem", 100), "grokked_step": grok,
                    "grok_delay": None if grok is None else grok - r.get("mem", 100),
                    "grokked_samples": None if grok is None else grok * batch,
                    "grokked_seconds": None if grok is None else grok / 100, "steps_run": steps,
                    "final_train_acc": 1.0, "final_val_acc": 1.0 if grok else 0.4, "wall_seconds": steps / 100,
                    "train.steps": steps, "train.batch_size": batch, "train.seed": r.get("seed", i),
                    "optim.weight_decay": r.get("wd", 1.0)})
    df = pd.DataFrame(out)
    for col in ("memorized_step", "grokked_step", "grok_delay", "grokked_samples"):
        df[col] = df[col].astype("Int64")
    return df


# ---- cells ----------------------------------------------------------------------------------------------------
def test_cells_use_kaplan_meier_medians_wilson_fractions_and_bootstrap_means():
    runs = runs_frame([{"wd": 0.1, "grok": 400}, {"wd": 0.1}, {"wd": 1.0, "grok": 400}, {"wd": 1.0, "grok": 600}])
    cl = tables.cells(runs, ["optim.weight_decay"]).set_index("optim.weight_decay")
    for wd, t, o in ((0.1, [400, 1000], [True, False]), (1.0, [400, 600], [True, True])):
        km = stats.median_time(t, o)
        assert (cl.loc[wd, "grok_step_median"], cl.loc[wd, "grok_step_low"], cl.loc[wd, "grok_step_high"]) == (
            km.value, km.low, km.high)
    assert cl.loc[0.1, "grokked"] == 1 and cl.loc[0.1, "grokked_fraction_low"] == stats.fraction(1, 2).low
    assert cl.loc[1.0, "grok_delay_mean"] == 400 and cl.loc[1.0, "final_val_acc_mean"] == 1.0
    # the old lower-quartile columns are gone
    assert not [c for c in cl.columns if c.endswith(("_q25", "_q75", "_min", "_max"))]


def test_one_of_two_grokked_has_no_median_and_two_of_two_is_not_the_minimum():
    runs = runs_frame([{"wd": 0.1, "grok": 400}, {"wd": 0.1}, {"wd": 1.0, "grok": 400}, {"wd": 1.0, "grok": 600}])
    cl = tables.cells(runs, ["optim.weight_decay"]).set_index("optim.weight_decay")
    assert cl.loc[0.1, "grok_step_median"] == math.inf
    assert cl.loc[1.0, "grok_step_median"] == stats.median_time([400, 600], [True, True]).value > 400


def test_a_median_not_reached_is_shown_as_not_reached():
    runs = runs_frame([{"wd": 0.1, "grok": 400}, {"wd": 0.1}, {"wd": 0.1}, {"wd": 1.0, "grok": 300},
                       {"wd": 1.0, "grok": 500}, {"wd": 1.0, "grok": 700}])
    cl = tables.cells(runs, ["optim.weight_decay"])
    assert cl["grok_step_median"].iloc[0] == math.inf  # 1 of 3: fewer than half grokked
    show = report.cells_display(SimpleNamespace(axes=["optim.weight_decay"]), cl)
    text = page.table(show) + tables.to_markdown(show)
    assert "not reached" in text and not UNFORMATTED.search(text)
    assert "1/3" in text and "3/3" in text


# ---- each run's own budget -------------------------------------------------------------------------------------
def test_samples_censor_each_run_at_its_own_budget_with_no_shared_line():
    runs = runs_frame([{"batch": 32}, {"batch": 32, "grok": 500}, {"batch": 128}, {"batch": 128, "grok": 300}])
    d = report.build(runs, pd.DataFrame(columns=["run_id", "step", "train_acc", "val_acc"]), ["train.batch_size"])
    t, o = d.times(runs, "samples")
    assert t[~o].tolist() == [32 * 1000, 128 * 1000] and t[o].tolist() == [500 * 32, 300 * 128]
    with figures.style():
        fig, (a1, a2) = plt.subplots(1, 2)
        figures.outcome_vs_axis(a1, runs["train.batch_size"].to_numpy(), t, o, "samples to grok", "batch")
        figures.survival_panel(a2, {"32": (t[:2], o[:2]), "128": (t[2:], o[2:])}, figures.UNITS["samples"])
    ys = {float(y) for c in a1.collections for _, y in c.get_offsets()}
    assert {32000.0, 128000.0} <= ys
    drawn = [ln for ln in a1.lines if ln.get_linestyle() not in ("None", "")]  # not the interval bars' caps
    flat = [ln for ln in drawn if len(ln.get_ydata()) > 1 and len(set(np.asarray(ln.get_ydata(), dtype=float))) == 1]
    assert not flat, "no horizontal budget line shared by every batch size"
    plus = sorted(float(x) for ln in a2.lines if ln.get_marker() == "+" for x in ln.get_xdata())
    assert plus == [32000.0, 128000.0]
    plt.close(fig)


def test_outcome_vs_axis_ticks_at_the_values_symlog_with_zero_and_counts_per_value():
    x = np.repeat([0.0, 0.01, 0.1, 1.0], 3)
    y = np.array([100, 200, 900] * 4, dtype=float)
    o = np.array([True, True, False] * 4)
    with figures.style():
        fig, (a1, a2) = plt.subplots(1, 2)
        figures.outcome_vs_axis(a1, x, y, o, "steps to grok", "weight decay")
        figures.outcome_vs_axis(a2, np.repeat(["adam", "sgd"], 2), np.array([1.0, 2, 3, 4]), None, "v", "opt",
                                time=False)
    assert a1.get_xscale() == "symlog" and list(a1.get_xticks()) == [0.0, 0.01, 0.1, 1.0]
    assert [t.get_text() for t in a1.get_xticklabels()] == ["0", "0.01", "0.1", "1"]
    assert [t.get_text() for t in a1.texts] == ["2/3"] * 4
    assert [t.get_text() for t in a2.get_xticklabels()] == ["adam", "sgd"]
    plt.close(fig)


# ---- numbers for people ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, kind, text", [
    (11600, "auto", "11,600"), (1.16e4, "auto", "11,600"), (11634.0, "step", "11,634"), (790.213657, "seconds", "790"),
    (0.0123, "seconds", "0.0123"), (math.inf, "step", "not reached"), (math.nan, "auto", "–"), (None, "auto", "–"),
    (pd.NA, "step", "–"), (0.0004, "p", "<0.001"), (0.0031, "p", "0.003"), (0.2, "p", "0.20"),
    (0.98765, "acc", "0.988"), (1e-5, "auto", "1e-5"), (0.001, "auto", "0.001"), (256, "samples", "256"),
    (np.int64(3), "auto", "3"), ("adamw", "auto", "adamw"), (0.25, "pct", "25%"),
])
def test_fmt(value, kind, text):
    assert page.fmt(value, kind) == text


def test_interval():
    assert page.interval((1150, 1000, 1200), "step") == "1,150 [1,000, 1,200]"
    assert page.interval(stats.Estimate(math.inf, 400, math.inf), "step") == "not reached"
    assert page.interval((400, 300, math.inf), "step") == "400 [300, ∞]"
    assert page.interval((math.nan, math.nan, math.nan)) == "–"
    assert page.interval((0.5, math.nan, math.nan), "acc") == "0.500"


def test_table_is_escaped_scrollable_and_shortens_dotted_names(tmp_path):
    df = pd.DataFrame({"optim.weight_decay": [0.1, 1.0], "note": ["<b>x</b>", None], "grokked_step": [pd.NA, 11600]})
    out = page.table(df)
    assert '<div class="scroll">' in out and 'title="optim.weight_decay">weight_decay</th>' in out
    assert "&lt;b&gt;" in out and "<b>" not in out and "11,600" in out and not UNFORMATTED.search(out)


def test_figure_embeds_the_png(tmp_path):
    with figures.style():
        fig, ax = plt.subplots()
        ax.plot([1, 2])
        png, svg = figures.save(fig, tmp_path / "f")
    html = page.figure(png, "A line.")
    src = re.search(r'src="data:image/png;base64,([^"]+)"', html).group(1)
    assert base64.b64decode(src) == png.read_bytes() and svg.read_text().lstrip().startswith("<?xml")
    assert "<figcaption>A line.</figcaption>" in html


# ---- scaling ---------------------------------------------------------------------------------------------------
def test_scaling_fit_drawn_with_three_medians_and_explained_without(tmp_path):
    rows = [{"wd": wd, "grok": int(400 / wd) + 10 * s, "seed": s, "steps": 3000} for wd in (0.25, 0.5, 1, 2)
            for s in range(2)]
    curves = pd.DataFrame(columns=["run_id", "step", "train_acc", "val_acc"])
    d = report.build(runs_frame(rows), curves, ["optim.weight_decay"])
    with figures.style():
        sec = report.scaling_section(d, tmp_path)
    assert (tmp_path / "scaling_wd.png").exists() and (tmp_path / "scaling_wd.svg").exists()
    assert "power-law fit" in sec.html
    few = report.build(runs_frame([r for r in rows if r["wd"] < 1] + [{"wd": 2, "seed": s} for s in range(2)]),
                       curves, ["optim.weight_decay"])
    with figures.style():
        sec = report.scaling_section(few, tmp_path / "few")
    assert "No fit" in sec.html and "<img" not in sec.html


# ---- the whole report ------------------------------------------------------------------------------------------
def visible_text(html: str) -> str:
    return re.sub(r"<[^>]*>", " ", re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", html, flags=re.S))


def test_report_on_a_2x2_sweep_is_self_contained(tmp_path):
    spec = {"name": "two", "base": BASE, "grid": {"optim.weight_decay": [0.0, 1.0], "train.batch_size": [32, 64]},
            "seeds": [0, 1]}
    groklab.sweep(spec, store=tmp_path / "s.db")
    verdicts = page.Section("Verdicts", "<p>claim A: supported</p>")
    out = report.report(Store(tmp_path / "s.db"), sweep="two", out=tmp_path / "rep", sections=[verdicts])
    html = (out / "index.html").read_text()
    srcs = re.findall(r'<img[^>]*src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(?:href|src)="(?!data:|#)', html), "nothing linked or fetched"
    pngs = sorted(p.stem for p in out.glob("*.png"))
    assert pngs == sorted(p.stem for p in out.glob("*.svg")) and len(srcs) == len(pngs)
    for name in ("curves_acc", "curves_loss", "survival", "phase_optim_weight_decay__train_batch_size",
                 "grok_vs_optim_weight_decay", "grok_vs_train_batch_size"):
        assert name in pngs, name
    for name in ("cells.csv", "events.csv", "cells.md", "events.md"):
        assert (out / name).stat().st_size > 0, name
    assert len(pd.read_csv(out / "cells.csv")) == 4 and len(pd.read_csv(out / "events.csv")) == 8
    text = visible_text(html)
    assert not UNFORMATTED.search(text), UNFORMATTED.findall(text)
    assert not re.search(r"\d\.\d+e[+-]\d|\d\.\d{5,}", text), "no raw floats"
    titles = re.findall(r"<h2>([^<]*)</h2>", html)
    assert titles[:3] == ["Overview", "Verdicts", "Cells"] and "Survival curves" in titles and titles[-1] == "Runs"
    assert "Kaplan–Meier" in text and "load" in text


def test_whole_store_report_does_not_sweep_eval_every(tmp_path):
    db = tmp_path / "s.db"
    for every in (25, 50):
        groklab.run(BASE, overrides={"train.eval_every": every, "train.steps": 100}, store=db)
    out = report.report(Store(db), out=tmp_path / "rep")
    html = (out / "index.html").read_text()
    assert "none (every run is in one cell)" in html and "eval_every" not in visible_text(html)
    assert not list(out.glob("grok_vs_*")) and (out / "survival.png").exists()


def test_comparisons_give_effect_sizes_along_each_axis_with_censored_runs():
    """More decay, sooner: the neighbour ratios are below 1 with a small log-rank p; runs that never grokked (wd 0)
    are censored at their budget, so 0 → 0.3 is a real comparison, not a dropped cell."""
    rows = [{"wd": 0.0, "grok": None, "seed": s} for s in range(4)]
    rows += [{"wd": 0.3, "grok": 800 + 10 * s, "seed": s} for s in range(4)]
    rows += [{"wd": 1.0, "grok": 300 + 10 * s, "seed": s} for s in range(4)]
    cmp = tables.comparisons(runs_frame(rows), ["optim.weight_decay"])
    trend = cmp[cmp["comparison"].str.startswith("trend")].iloc[0]
    assert trend["estimate"] < -0.8 and trend["p"] < 0.01
    pairs = cmp[cmp["comparison"].str.contains("→")]
    assert list(pairs["comparison"]) == ["0.0 → 0.3", "0.3 → 1.0"]
    assert (pairs["estimate"] < 1).all() and (pairs["high"] < 1).all() and (pairs["p"] < 0.05).all()


def test_folds_table_gives_mean_and_spread_over_folds_and_the_selected_setting():
    rows = []
    for wd, accs in ((0.1, [0.5, 0.7, 0.6, 0.6]), (1.0, [0.95, 0.99, 0.97, 0.97])):
        for fold, acc in enumerate(accs):
            rows.append({"run_id": f"{wd}-{fold}", "optim.weight_decay": wd, "task.fold": fold, "final_val_acc": acc,
                         "grokked_step": 500 if acc > 0.96 else None})
    cv = tables.folds(pd.DataFrame(rows), ["optim.weight_decay", "task.fold"])
    assert list(cv["folds"]) == [4, 4] and list(cv["grokked"]) == [0, 3]
    assert cv["val_acc_mean"].tolist() == pytest.approx([0.6, 0.97])
    spread = [np.std([0.5, 0.7, 0.6, 0.6], ddof=1), np.std([0.95, 0.99, 0.97, 0.97], ddof=1)]
    assert cv["val_acc_std"].tolist() == pytest.approx(spread)
    assert cv["selected"].tolist() == [False, True]
    assert tables.folds(pd.DataFrame(rows), ["optim.weight_decay"]).empty
