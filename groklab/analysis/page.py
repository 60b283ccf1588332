"""A self-contained HTML page, and numbers formatted for people.

The page must open on its own, e.g. from an e-mail attachment: figures are embedded as base64 PNG data URIs,
the style sheet is inline, and nothing is linked or fetched. Every number on it goes through `fmt`, so a
reader never sees Python's spellings (`inf`, `nan`, `<NA>`, `1.16e+04`) or six decimals of a wall time.
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

MISSING = "–"
NOT_REACHED = "not reached"  # a KM median when fewer than half the runs had the event
INFINITE = "∞"  # an open end of an interval (e.g. the upper bound of a median that may never be reached)

# Kinds that count (steps, examples): shown as integers with thousands separators.
COUNT_KINDS = ("int", "step", "samples")
# Kinds that are times to an event: an infinite value means "not reached", not a number.
TIME_KINDS = ("step", "samples", "seconds")


@dataclass
class Section:
    """One titled part of a page; `html` is trusted markup (escape what you put in it)."""

    title: str
    html: str


def _number(value: Any) -> float | None:
    """value as a float, or None when it is not a number (strings, None, pd.NA, NaT)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    return None


def _significant(x: float, digits: int) -> str:
    """x to `digits` significant digits without an exponent for people (0.00123, 1,230, 12,300)."""
    if x == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(x)))
    if magnitude >= digits - 1:
        return f"{round(x, digits - 1 - magnitude):,.0f}"
    if magnitude < -4:  # 1.2e-05 would be 0.000012: a short scientific form reads better
        mantissa, exp = f"{x:.{digits - 1}e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"
    text = f"{x:.{digits - 1 - magnitude}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def fmt(value: Any, kind: str = "auto") -> str:
    """A number as a person reads it.

    kinds: auto (integers with separators, other floats to 4 significant digits), int / step / samples
    (integers, 11,600), seconds (3 significant digits), acc (3 decimals), p (0.003, <0.001), ratio (3
    significant digits), pct (a fraction as a percentage), text (str(value)). Missing values (None, nan,
    pd.NA) are "–"; an infinite time (step, samples, seconds) is "not reached"; other infinities are "∞".
    """
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    x = _number(value)
    if x is None:
        if value is None or value is pd.NA or value is pd.NaT:
            return MISSING
        return str(value)
    if kind == "text":
        return str(value)
    if math.isnan(x):
        return MISSING
    if math.isinf(x):
        if kind in TIME_KINDS:
            return NOT_REACHED if x > 0 else "−" + INFINITE
        return INFINITE if x > 0 else "−" + INFINITE
    if kind in COUNT_KINDS:
        return f"{round(x):,}"
    if kind == "seconds":
        return _significant(x, 3)
    if kind == "acc":
        return f"{x:.3f}"
    if kind == "p":
        return "<0.001" if x < 0.001 else f"{x:.3f}" if x < 0.01 else f"{x:.2f}"
    if kind == "ratio":
        return _significant(x, 3)
    if kind == "pct":
        return f"{100 * x:.0f}%"
    if x == round(x) and abs(x) < 1e15:
        return f"{round(x):,}"
    return _significant(x, 4)


def interval(est: Any, kind: str = "auto") -> str:
    """An estimate with its 95% interval: "1,150 [1,000, 1,200]". `est` is an Estimate (value, low, high) or a
    triplet. A missing value is "–", an infinite median "not reached"; an open bound shows as ∞; a missing or
    degenerate interval (one run) shows the value alone."""
    value, low, high = (est.value, est.low, est.high) if hasattr(est, "value") else tuple(est)
    if _number(value) is None or math.isnan(float(value)):
        return MISSING
    if math.isinf(float(value)):
        return fmt(value, kind)
    bounds = [_number(b) for b in (low, high)]
    if any(b is None or math.isnan(b) for b in bounds) or bounds[0] == bounds[1] == float(value):
        return fmt(value, kind)
    ends = [fmt(b, kind if math.isfinite(b) else "ratio") for b in bounds]
    return f"{fmt(value, kind)} [{ends[0]}, {ends[1]}]"


def kind_of(column: str) -> str:
    """The fmt kind a column holds, guessed from its name (the store's and tables' naming). Config keys
    (`optim.weight_decay`, `train.accumulate`) are shown as given: auto."""
    name = column.lower()
    if "." in name and " " not in name:
        return "auto"
    if "seed" in name or name in ("seeds", "grokked", "diverged", "fell_back", "runs"):
        return "int"
    if "seconds" in name:
        return "seconds"
    if "samples" in name:
        return "samples"
    if "step" in name or "delay" in name or "budget" in name:
        return "step"
    if re.search(r"(^|[_ ])acc([_ ]|$)|accuracy", name):
        return "acc"
    if name == "p" or name.startswith("p ") or name.endswith("_p"):
        return "p"
    return "auto"


def _header(column: str) -> str:
    """A column header: long dotted config keys shortened to their last part, the full name as a tooltip."""
    short = column.split(".")[-1] if "." in column and " " not in column else column
    if short == column:
        return f"<th>{html.escape(column)}</th>"
    return f'<th title="{html.escape(column)}">{html.escape(short)}</th>'


def table(df: pd.DataFrame, formats: dict[str, str] | None = None) -> str:
    """df as an HTML table inside a horizontally scrollable box; every value formatted (by `formats`, a kind
    per column, else guessed from the column name) and escaped."""
    formats = formats or {}
    kinds = {c: formats.get(c, kind_of(str(c))) for c in df.columns}
    head = "".join(_header(str(c)) for c in df.columns)
    rows = []
    for row in df.itertuples(index=False):
        cells = []
        for c, v in zip(df.columns, row):
            text = fmt(v, kinds[c])
            numeric = _number(v) is not None
            cells.append(f'<td class="num">{html.escape(text)}</td>' if numeric else f"<td>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            "</div>")


def figure(png: Path, caption: str) -> str:
    """A <figure> with the PNG embedded as a base64 data URI (no file beside the page needed) and its caption."""
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    alt = html.escape(caption, quote=True)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:1.5em auto;max-width:1200px;
 padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
h3{margin-top:1.4em}
nav ol{columns:2;font-size:.9em} nav a{color:#2a5db0;text-decoration:none}
figure{margin:1em 0 1.6em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;max-width:900px}
.scroll{overflow-x:auto;max-width:100%;max-height:36em;overflow-y:auto;border:1px solid #ddd;margin:.6em 0 1.2em 0}
table{border-collapse:collapse;font-size:12px;white-space:nowrap}
th,td{border-bottom:1px solid #e4e4e4;padding:2px 7px;text-align:left}
th{position:sticky;top:0;background:#f5f5f5;font-weight:600;z-index:1}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:hover{background:#fafaf0}
.note{color:#555;font-size:.92em} code{background:#f3f3f3;padding:0 3px;border-radius:3px}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:.2em 1em} dl.facts dt{font-weight:600}
dl.facts dd{margin:0}
"""


def page(title: str, sections: list[Section]) -> str:
    """A whole HTML document: title, a table of contents, the sections; inline style, nothing external."""
    toc = "".join(f'<li><a href="#{anchor(s.title)}">{html.escape(s.title)}</a></li>' for s in sections)
    body = "\n".join(f'<section id="{anchor(s.title)}"><h2>{html.escape(s.title)}</h2>\n{s.html}\n</section>'
                     for s in sections)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>"
            f"<h1>{html.escape(title)}</h1>\n<nav><ol>{toc}</ol></nav>\n{body}\n</body></html>\n")
