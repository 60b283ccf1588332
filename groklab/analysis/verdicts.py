"""Verdicts on the page: one figure per claim and the verdicts section of a report."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from groklab.analysis import figures, outcomes, page

BADGE = {"supported": "#2ca02c", "contradicted": "#d62728", "inconclusive": "#b8860b", "untestable": "#7f7f7f"}


def _condition(cond: dict[str, Any] | None) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in (cond or {}).items()) or "all"


def claim_figure(verdict: dict, data: dict, base: Path, formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    """The figure behind one claim's verdict: the data its statistic used, with the estimate in the title."""
    kind, measure, stat = verdict["kind"], verdict["measure"], verdict["statistic"]
    ylabel = outcomes.label(measure)
    with figures.style():
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        if stat == "difference":
            la, lb = f"a: {_condition(verdict['a'])}", f"b: {_condition(verdict['b'])}"
            colors = figures.condition_colors([la, lb])
            (ya, oa), (yb, ob) = data["a"], data["b"]
            if kind == "time":
                figures.survival_panel(ax, {la: (ya, oa), lb: (yb, ob)}, _unit(measure), colors)
            elif kind == "binary":
                ka, kb = int(np.nansum(ya)), int(np.nansum(yb))
                figures.fraction_panel(ax, {la: (ka, int(np.isfinite(ya).sum())), lb: (kb, int(np.isfinite(yb).sum()))},
                                       ylabel, colors)
            else:
                figures.values_panel(ax, {la: ya, lb: yb}, ylabel, colors)
        elif stat == "scaling":
            axis = " × ".join(verdict["axis"]) if isinstance(verdict["axis"], list) else verdict["axis"]
            from groklab.analysis import stats

            est = stats.Estimate(*(np.nan if verdict[k] is None else verdict[k] for k in ("estimate", "low", "high")))
            figures.scaling_panel(ax, data["table"], est, axis, ylabel)
        elif stat == "interaction":
            labels = [f"a: {_condition(verdict['a'])}", f"b: {_condition(verdict['b'])}"]
            colors = figures.condition_colors(labels)
            for i, (name, lab) in enumerate(zip("ab", labels)):
                d = data[name]
                figures.outcome_vs_axis(ax, d["x"], d["y"], d["observed"], ylabel, str(verdict["axis"]),
                                        color=colors[lab], label=lab, time=kind == "time", series=(i, 2))
            ax.legend(fontsize=7)
        else:
            figures.outcome_vs_axis(ax, data["x"], data["y"], data["observed"], ylabel, str(verdict["axis"]),
                                    time=kind == "time")
        ax.set_title(f"{verdict['id']}: {verdict['verdict']}\n{verdict['effect']}", fontsize=9)
        fig.tight_layout()
        return figures.save(fig, base, formats)


def _unit(measure: str) -> str:
    return figures.UNITS[{"grokked_samples": "samples", "grokked_seconds": "seconds"}.get(measure, "step")]


def section(verdicts: list[dict], figures_dir: Path | None, title: str) -> page.Section:
    """The verdicts as a summary table and, per claim, its statement, numbers and figure."""
    table = pd.DataFrame([{
        "claim": v["id"], "verdict": v["verdict"], "estimate [95% interval]": _interval(v),
        "p (Holm)": page.fmt(v.get("p_holm"), "p"), "runs": v.get("n_runs"),
        "seeds needed": v.get("seeds_needed"),
    } for v in verdicts])
    parts = [page.table(table)]
    for v in verdicts:
        color = BADGE[v["verdict"]]
        head = (f'<h3 id="claim-{html.escape(v["id"])}">{html.escape(v["id"])} '
                f'<span style="background:{color};color:white;padding:1px 8px;border-radius:4px">'
                f'{v["verdict"]}</span></h3><blockquote>{html.escape(v["claim"])}</blockquote>')
        if v["verdict"] == "untestable":
            parts.append(head + f"<p>Not tested: {html.escape(v['reason'])}</p>")
            continue
        rule = (f"{v['statistic']} of {html.escape(outcomes.label(v['measure']))}"
                + (f" against {html.escape(str(v['axis']))}" if v.get("axis") else "")
                + (f", a = {html.escape(_condition(v['a']))}, b = {html.escape(_condition(v['b']))}" if v.get("a") else "")
                + f"; claimed direction: {v['direction']}; α = {v['alpha']}, smallest effect that matters: "
                f"{v['min_effect']}")
        facts = (f"<p>{html.escape(v['effect'])}; p = {page.fmt(v.get('p'), 'p')}, after Holm "
                 f"{page.fmt(v.get('p_holm'), 'p')}; {v['n_runs']} runs ({v['seeds']} seeds per condition) of sweep "
                 f"<code>{html.escape(v['sweep'])}</code>."
                 + (f" A decisive answer at this effect would need about {v['seeds_needed']} seeds per condition."
                    if v.get("seeds_needed") else "") + f"</p><p>Test: {rule}.</p>")
        fig = ""
        if figures_dir is not None and (figures_dir / f"claim_{v['id']}.png").exists():
            fig = page.figure(figures_dir / f"claim_{v['id']}.png", f"The data behind claim {v['id']}: {v['effect']}.")
        parts.append(head + facts + fig)
    return page.Section(title, "\n".join(parts))


def _interval(v: dict) -> str:
    if v["verdict"] == "untestable":
        return "–"
    if v.get("estimate") is None:
        return "no estimate"
    return f"{v['estimate']:+.3g} [{_g(v.get('low'))}, {_g(v.get('high'))}]"


def _g(x: float | None) -> str:
    return "–" if x is None else f"{x:+.3g}"


def markdown(verdicts: list[dict], figures_dir: str | None, command: str) -> str:
    """The verdicts as Markdown: a summary table, then one section per claim with its numbers, its figure
    (`figures_dir/claim_<id>.png`, relative to the Markdown file) and the command that reproduces it."""
    lines = ["| claim | verdict | estimate [95% interval] | p (Holm) | runs | seeds needed |", "|---|---|---|---|---|---|"]
    for v in verdicts:
        lines.append(f"| [{v['id']}](#{v['id']}) | **{v['verdict']}** | {_interval(v)} | {page.fmt(v.get('p_holm'), 'p')} "
                     f"| {v.get('n_runs') or '–'} | {v.get('seeds_needed') or '–'} |")
    for v in verdicts:
        lines += ["", f"### {v['id']}", "", f"> {v['claim']}" + (f" ({v['source']})" if v.get("source") else ""), "",
                  f"**{v['verdict']}**."]
        if v["verdict"] == "untestable":
            lines[-1] += f" {v['reason']}"
            continue
        lines[-1] += (f" {v['effect']}; p = {page.fmt(v.get('p'), 'p')}, after Holm {page.fmt(v.get('p_holm'), 'p')}; "
                      f"{v['n_runs']} runs, {v['seeds']} seeds per condition, sweep `{v['sweep']}`.")
        if v.get("seeds_needed"):
            lines[-1] += f" A decisive answer at this effect would need about {v['seeds_needed']} seeds per condition."
        test = (f"{v['statistic']} of {outcomes.label(v['measure'])}" + (f" against `{v['axis']}`" if v.get("axis") else "")
                + (f", a = {_condition(v['a'])}, b = {_condition(v['b'])}" if v.get("a") else "")
                + (f", only {_condition(v['where'])}" if v.get("where") else "")
                + f"; claimed: {v['direction']}; α = {v['alpha']}; smallest effect that matters {v['min_effect']}.")
        lines += ["", f"Test: {test}", "", f"Reproduce: `{command}` (the runs: `groklab report --sweep {v['sweep']}`)"]
        if figures_dir is not None:
            lines += ["", f"![{v['id']}]({figures_dir}/claim_{v['id']}.png)"]
    lines += ["", f"Reproduce: `{command}`"]
    return "\n".join(lines) + "\n"
