"""`groklab repro NAME`: a published grokking setup run end to end, its numbers beside the published ones.

A preset (groklab/presets/NAME.yaml) holds the source, its settings as sweeps (one per panel of the paper,
each with a `small` and a `paper` scale), what groklab does differently and why (`deviations`), and the
published numbers as data: each names the measure that reads the same number off groklab's runs. Nothing in
the agreement table is typed in: `ours` is computed from the stored runs every time (docs/reproductions.md).

A number agrees when the interval of groklab's seeds (their min..max, widened by the number's stated relative
`tolerance`) overlaps the published value or range.
"""

from __future__ import annotations

import math
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from groklab import api
from groklab.analysis import outcomes, page, phases, report
from groklab.analysis.hypotheses import _matches, deep_merge
from groklab.config import ConfigError, parse_override, set_dotted
from groklab.store import DEFAULT_PATH, Store
from groklab.sweep import expand, load_spec

PRESETS = Path(__file__).parent / "presets"
SCALES = ("small", "paper")
VERDICTS = ("reproduced", "partly reproduced", "not reproduced")
_FIRST = re.compile(r"^(first|after_peak)\.(?P<curve>[\w.]+?)(?P<op><=|>=|<|>)(?P<value>[-+0-9.eE]+)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PresetSweep(_Strict):
    """One sweep of a preset: a sweep file's fields, and per-scale changes deep-merged over them."""

    name: str
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0])
    analysis: dict[str, Any] = Field(default_factory=dict)
    small: dict[str, Any] = Field(default_factory=dict, description="changes at --scale small")
    paper: dict[str, Any] = Field(default_factory=dict, description="changes at --scale paper")


class Number(_Strict):
    """A published number and how groklab reads the same number off its runs."""

    id: str
    what: str
    measure: str | None = Field(None, description="per run: a measure of groklab.analysis.outcomes, "
                                "`argmax.<curve>` / `argmin.<curve>` (the step of a curve's extreme), "
                                "`first.<curve><op><value>` (the first step where it holds; `after_peak.` searches "
                                "after the curve's maximum), `smallest.<axis>` (per seed, the smallest value of a "
                                "swept key at which the run grokked), `phase_count` (distinct majority phases "
                                "over the grid's cells)")
    ratio: list[str] | None = Field(None, min_length=2, max_length=2, description="[a, b]: the median of number "
                                    "a over that of number b")
    sweep: str | None = Field(None, description="the preset sweep it is read from (default: the first)")
    where: dict[str, Any] = Field(default_factory=dict, description="config values the runs must have")
    published: float | list[float | None] | None = Field(None, description="a value or a [low, high] range "
                                                          "(null: open); none: shown, not compared")
    tolerance: float = Field(0.0, ge=0.0, description="relative widening of groklab's seed interval")
    source: str = ""
    scales: list[Literal["small", "paper"]] = Field(default_factory=lambda: ["paper"],
                                                    description="the scales at which it is compared")

    @model_validator(mode="after")
    def _one(self) -> Number:
        if (self.measure is None) == (self.ratio is None):
            raise ValueError(f"numbers[{self.id}]: give exactly one of `measure` and `ratio`")
        if isinstance(self.published, list) and len(self.published) != 2:
            raise ValueError(f"numbers[{self.id}].published: a range is [low, high]")
        return self


class Preset(_Strict):
    name: str
    title: str
    source: str
    summary: str
    scales: dict[Literal["small", "paper"], str] = Field(description="what each scale runs")
    deviations: list[str] = Field(default_factory=list, description="where groklab differs, and why")
    sweeps: list[PresetSweep] = Field(default_factory=list)
    numbers: list[Number] = Field(default_factory=list)
    hypotheses: str | None = Field(None, description="a hypotheses file beside the preset, decided by "
                                   "`groklab verify` (scale small | full for small | paper)")

    @model_validator(mode="after")
    def _refs(self) -> Preset:
        names = [s.name for s in self.sweeps]
        ids = [n.id for n in self.numbers]
        for n in self.numbers:
            if n.sweep is not None and n.sweep not in names:
                raise ValueError(f"numbers[{n.id}].sweep: {n.sweep!r} is not a sweep of the preset; allowed: "
                                 f"{', '.join(names)}")
            for ref in n.ratio or []:
                if ref not in ids:
                    raise ValueError(f"numbers[{n.id}].ratio: {ref!r} is not a number of the preset")
        if not self.sweeps and self.hypotheses is None:
            raise ValueError("a preset needs `sweeps` or `hypotheses`")
        return self


def names() -> list[str]:
    """The shipped presets, by name."""
    return sorted(p.stem for p in PRESETS.glob("*.yaml") if "." not in p.stem)


def load(name: str | Path) -> Preset:
    """A shipped preset by name, or a preset file by path; ConfigError naming the allowed names otherwise."""
    path = Path(name)
    if not path.suffix:
        path = PRESETS / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError(f"repro: unknown preset {str(name)!r}; allowed: {', '.join(names())}")
    if not path.is_file():
        raise ConfigError(f"repro: preset file {str(path)!r} does not exist")
    try:
        return Preset.model_validate(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as e:
        raise ConfigError(f"preset {path.name}: not valid YAML: {e}") from None
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        where = f"{loc}: " if loc else ""
        raise ConfigError(f"preset {path.name}: {where}{err['msg'].removeprefix('Value error, ')}") from None


def _scale(scale: str) -> str:
    if scale not in SCALES:
        raise ConfigError(f"--scale: got {scale!r}; allowed: {', '.join(SCALES)}")
    return scale


def sweep_spec(preset: Preset, sweep: PresetSweep, scale: str,
               overrides: list[str] | dict[str, Any] | None = None) -> dict[str, Any]:
    """The sweep file (a dict) of one preset sweep at `scale`, named `<sweep>.<scale>`; `overrides` (dotted
    keys, e.g. `task.name=images`) apply to its base config, as `groklab sweep FILE key=value` does."""
    spec = sweep.model_dump(exclude={"small", "paper"})
    spec = deep_merge(spec, getattr(sweep, _scale(scale)))
    spec["name"] = f"{sweep.name}.{scale}"
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    for key, value in items:
        set_dotted(spec["base"], key, value)
    return spec


def specs(preset: Preset, scale: str, overrides: list[str] | dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every sweep of the preset at `scale`, validated (each expands into runs)."""
    out = [sweep_spec(preset, s, scale, overrides) for s in preset.sweeps]
    for spec in out:
        try:
            expand(load_spec(spec))
        except ConfigError as e:
            raise ConfigError(f"preset {preset.name}, sweep {spec['name']}: {e}") from None
    return out


# ---- reading a number off the runs ----------------------------------------------------------------------


def per_run(runs: pd.DataFrame, curves: pd.DataFrame, measure: str, spec: dict[str, Any]) -> np.ndarray:
    """One value per run (or per seed, for `smallest.`; one in all for `phase_count`) of the sweep `spec`; +inf
    where the event did not happen within the run's budget, NaN where the run has no such number. Phases follow
    the sweep's `analysis.phases` thresholds."""
    if measure.startswith(("argmax.", "argmin.")):
        how, curve = measure.split(".", 1)
        return np.array([_extreme(curves, rid, curve, how) for rid in runs["run_id"]])
    m = _FIRST.match(measure)
    if m:
        return np.array([_first(curves, rid, m) for rid in runs["run_id"]])
    if measure.startswith("smallest."):
        axis = measure.removeprefix("smallest.")
        grokked = np.isfinite(runs["grokked_step"].astype(float).to_numpy())
        seeds = runs["train.seed"].to_numpy()
        return np.array([float(runs.loc[grokked & (seeds == s), axis].min()) if (grokked & (seeds == s)).any()
                         else math.inf for s in sorted(set(seeds))])
    rule = phases.rule_from(spec.get("analysis"), f"sweep {spec['name']}: analysis")
    if measure == "phase_count":
        ph = phases.phases(runs, curves, rule)
        axes = list(spec.get("grid", {}))
        cells = runs[axes].astype(str).agg("|".join, axis=1) if axes else pd.Series("all", index=runs.index)
        majority = ph.groupby(cells.to_numpy())["phase"].agg(lambda s: phases.majority(s)[0])
        return np.array([float(majority.nunique())])
    kind = outcomes.kind(measure)
    if kind == "time":
        t, observed = outcomes.time_to_event(runs, measure, curves)
        return np.where(observed, t, math.inf)
    return outcomes.values(runs, measure, curves, phases.phases(runs, curves, rule)["phase"] if kind == "binary" else None)


def _curve(curves: pd.DataFrame, rid: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    if name not in curves:
        return np.array([]), np.array([])
    c = curves.loc[curves["run_id"] == rid, ["step", name]].dropna().sort_values("step")
    return c["step"].to_numpy(dtype=float), c[name].to_numpy(dtype=float)


def _extreme(curves: pd.DataFrame, rid: str, name: str, how: str) -> float:
    steps, v = _curve(curves, rid, name)
    if not len(v):
        return math.nan
    return float(steps[np.argmax(v) if how == "argmax" else np.argmin(v)])


def _first(curves: pd.DataFrame, rid: str, m: re.Match) -> float:
    steps, v = _curve(curves, rid, m["curve"])
    if not len(v):
        return math.nan
    start = int(np.argmax(v)) if m.group(1) == "after_peak" else 0
    value = float(m["value"])
    hold = {"<=": v <= value, ">=": v >= value, "<": v < value, ">": v > value}[m["op"]][start:]
    hit = np.flatnonzero(hold)
    return float(steps[start + hit[0]]) if len(hit) else math.inf


def summarize(values: np.ndarray, bound: float = math.nan) -> dict[str, float]:
    """Median, min and max over the finite-or-infinite values (NaN dropped); n counted. `bound`: what an infinite
    value is known to exceed (the budget of a run that never reached the event)."""
    v = values[~np.isnan(values)]
    if not len(v):
        return {"ours": math.nan, "low": math.nan, "high": math.nan, "n": 0, "bound": math.nan}
    return {"ours": float(np.median(v)), "low": float(v.min()), "high": float(v.max()), "n": int(len(v)),
            "bound": bound if np.isinf(v).any() else math.nan}


def _binary(measure: str) -> bool:
    try:
        return outcomes.kind(measure) == "binary"
    except ValueError:  # a measure of this module (argmax., first., smallest., phase_count)
        return False


def exceeded(runs: pd.DataFrame, values: np.ndarray, measure: str) -> float:
    """What the infinite values are known to exceed: the smallest step budget among the runs that never reached
    their event, or for `smallest.<axis>` the largest value of the axis tried."""
    if measure.startswith("smallest."):
        return float(runs[measure.removeprefix("smallest.")].max()) if len(runs) else math.nan
    if len(values) != len(runs) or not np.isinf(values).any():
        return math.nan
    return float(runs["train.steps"].to_numpy(dtype=float)[np.isinf(values)].min())


def ratio(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """The ratio of two numbers' medians, with the interval of their seed ranges. A side that was never reached
    makes the ratio a bound: ∞ over x is more than budget / x, x over ∞ less than x / budget."""
    n = min(a["n"], b["n"])
    fa, fb = math.isfinite(a["ours"]), math.isfinite(b["ours"])
    with np.errstate(divide="ignore", invalid="ignore"):
        if fa and fb:
            return {"ours": a["ours"] / b["ours"], "low": a["low"] / b["high"], "high": a["high"] / b["low"], "n": n}
        if not fa and fb and math.isfinite(a["bound"]):
            return {"ours": math.inf, "low": a["bound"] / b["high"], "high": math.inf, "n": n}
        if fa and not fb and math.isfinite(b["bound"]):
            return {"ours": 0.0, "low": 0.0, "high": a["high"] / b["bound"], "n": n}
    return {"ours": math.nan, "low": math.nan, "high": math.nan, "n": n}


def published_range(published: float | list[float | None] | None) -> tuple[float, float] | None:
    if published is None:
        return None
    if isinstance(published, list):
        lo, hi = published
        return (-math.inf if lo is None else float(lo), math.inf if hi is None else float(hi))
    return float(published), float(published)


def agrees(low: float, high: float, tolerance: float, published: tuple[float, float] | None) -> bool | None:
    """Whether groklab's interval [low, high], widened by `tolerance` (relative), meets the published range."""
    if published is None or math.isnan(low):
        return None
    # +inf is "not reached within the budget": later than any finite value, so it meets only an open-ended range
    lo = low - tolerance * abs(low) if math.isfinite(low) else low
    hi = high + tolerance * abs(high) if math.isfinite(high) else high
    return lo <= published[1] and published[0] <= hi


def table(preset: Preset, scale: str, runs_of: Any, curves_of: Any) -> pd.DataFrame:
    """The agreement table at `scale`: one row per number. `runs_of(sweep_name)` gives a sweep's runs,
    `curves_of(run_ids)` their curves."""
    by_sweep = {s.name: sweep_spec(preset, s, scale) for s in preset.sweeps}  # names and grids only
    rows: dict[str, dict[str, Any]] = {}
    for n in preset.numbers:
        kind = "ratio" if n.ratio else "smallest" if n.measure.startswith("smallest.") else "measure"
        row: dict[str, Any] = {"id": n.id, "kind": kind, "what": n.what,
                               "source": n.source}
        if n.ratio is not None:
            row.update(ratio(rows[n.ratio[0]], rows[n.ratio[1]]), bound=math.nan)
        else:
            spec = by_sweep[n.sweep or preset.sweeps[0].name]
            runs = runs_of(spec["name"])
            runs = runs[_matches(runs, n.where, f"numbers[{n.id}].where")].reset_index(drop=True)
            curves = curves_of(runs["run_id"].tolist()) if len(runs) else pd.DataFrame()
            values = per_run(runs, curves, n.measure, spec)
            row.update(summarize(values, exceeded(runs, values, n.measure)))
            if _binary(n.measure) and row["n"]:  # a fraction of runs: its value, not the 0..1 range of its runs
                row.update(ours=float(np.nanmean(values)), low=float(np.nanmean(values)),
                           high=float(np.nanmean(values)))
        pub = published_range(n.published)
        compared = scale in n.scales and pub is not None
        row["published"] = _published_text(n.published)
        row["pub_low"], row["pub_high"] = pub if pub is not None else (math.nan, math.nan)
        row["agrees"] = agrees(row["low"], row["high"], n.tolerance, pub) if compared else None
        row["compared"] = compared
        row["tolerance"] = n.tolerance
        rows[n.id] = row
    cols = ["id", "kind", "what", "ours", "low", "high", "bound", "n", "published", "pub_low", "pub_high", "tolerance",
            "compared", "agrees", "source"]
    return pd.DataFrame(list(rows.values()), columns=cols)


def _published_text(p: float | list[float | None] | None) -> str:
    if p is None:
        return page.MISSING
    if not isinstance(p, list):
        return page.fmt(p)
    lo, hi = p
    if lo is None:
        return f"≤ {page.fmt(hi)}"
    if hi is None:
        return f"≥ {page.fmt(lo)}"
    return f"{page.fmt(lo)} – {page.fmt(hi)}"


def verdict(rows: pd.DataFrame) -> str:
    """reproduced (every compared number agrees), partly reproduced, not reproduced, or not compared; with how many
    of the numbers to compare have no runs in the store yet (--no-train on an unfinished preset)."""
    compared = rows["agrees"].dropna().astype(bool)
    unrun = int((rows["compared"] & (rows["n"] == 0)).sum()) if "compared" in rows else 0
    if not len(compared):
        return "not compared" + (f" ({unrun} numbers without runs)" if unrun else "")
    word = VERDICTS[0] if compared.all() else VERDICTS[2] if not compared.any() else VERDICTS[1]
    return word + (f" ({unrun} of {unrun + len(compared)} numbers without runs)" if unrun else "")


# ---- running a preset ------------------------------------------------------------------------------------


def repro(
    name: str | Path,
    scale: str = "small",
    store: Store | str | Path = DEFAULT_PATH,
    out: str | Path | None = None,
    train: bool = True,
    progress: bool = False,
    n_threads: int | None = None,
    markdown: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Run preset `name` at `scale` ('small' or 'paper'; stored runs are reused) and return its result: the
    agreement table (`numbers`, one dict per published number), the `verdict`, the machine and the wall time.
    `train=False` reads stored runs only. `out`: a folder for the report; `markdown`: the table as Markdown.
    `overrides` apply to every sweep's base (e.g. `["task.name=images", "task.path=mnist/"]` for Omnigrok on
    local MNIST files). `workers` > 1 trains each sweep's packs in that many local processes (as `sweep`): on a
    CPU, two single-threaded processes train more run-steps a second than one process on two threads."""
    preset, scale = load(name), _scale(scale)
    st = store if isinstance(store, Store) else Store(store)
    started = time.perf_counter()
    if preset.hypotheses is not None:
        return _hypotheses(preset, scale, st, out, train, progress, n_threads, markdown, started, workers)
    all_specs, missing = specs(preset, scale, overrides), {}
    for spec in all_specs:
        if train:
            if progress:
                print(f"repro {preset.name} ({scale}): sweep {spec['name']}", file=sys.stderr)
            api.sweep(spec, store=st, progress=progress, n_threads=n_threads, workers=workers)
        else:
            missing[spec["name"]] = _stored(st, spec)
    rows = table(preset, scale, lambda s: st.runs(sweep=s), st.curves)
    # A verdict read off part of a preset's runs can change when the rest arrive, so it says so.
    lacking, provisional = sum(missing.values()), ""
    if lacking:
        total = sum(len(expand(load_spec(spec))) for spec in all_specs)
        provisional = f"; provisional, {lacking} of {total} runs not in the store"
    result = {"preset": preset.name, "title": preset.title, "source": preset.source, "scale": scale,
              "scale_means": preset.scales[scale], "verdict": verdict(rows) + provisional, "machine": machine(),
              "wall_seconds": time.perf_counter() - started, "sweeps": [s["name"] for s in all_specs],
              "deviations": preset.deviations, "missing_runs": {k: v for k, v in missing.items() if v},
              "numbers": rows.to_dict("records")}
    if out is not None:
        write_report(result, rows, st, Path(out))
    if markdown is not None:
        Path(markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(markdown).write_text(to_markdown(result, rows))
    return result


def _hypotheses(preset: Preset, scale: str, st: Store, out: Any, train: bool, progress: bool,
                n_threads: int | None, markdown: Any, started: float, workers: int | None) -> dict[str, Any]:
    from groklab.verify import verify

    rows = verify(PRESETS / preset.hypotheses, scale="full" if scale == "paper" else "small", store=st, out=out,
                  train=train, progress=progress, n_threads=n_threads, markdown=markdown, workers=workers)
    counts = {v: sum(r["verdict"] == v for r in rows) for v in dict.fromkeys(r["verdict"] for r in rows)}
    return {"preset": preset.name, "title": preset.title, "source": preset.source, "scale": scale,
            "scale_means": preset.scales[scale], "verdict": ", ".join(f"{n} {v}" for v, n in counts.items()),
            "machine": machine(), "wall_seconds": time.perf_counter() - started, "deviations": preset.deviations,
            "claims": rows}


def _stored(st: Store, spec: dict[str, Any]) -> int:
    """Record the sweep with the runs the store has (--no-train); return how many it lacks. A number whose runs
    are all missing reads `no runs`; one with some runs is computed from those (the report says how many)."""
    ids = {c.run_id for c in expand(load_spec(spec))}
    have = st.existing(sorted(ids))
    st.add_sweep(spec["name"], load_spec(spec).model_dump(mode="json"), sorted(have))
    return len(ids - have)


def machine() -> str:
    """The machine in words: what every wall time and throughput figure holds for."""
    import torch

    where = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    if torch.cuda.is_available():
        where += f", {torch.cuda.get_device_name(0)}"
    return where


# ---- writing it ------------------------------------------------------------------------------------------


def display(rows: pd.DataFrame) -> pd.DataFrame:
    """The agreement table as people read it: groklab's median and seed range, the published value, agreement."""
    def ours(r: pd.Series) -> str:
        if r["n"] == 0:
            return "no runs"
        if math.isnan(r["ours"]):
            return "no ratio (neither side reached)" if r["kind"] == "ratio" else page.MISSING
        if r["kind"] == "ratio" and r["ours"] == math.inf:
            return f"> {page.fmt(r['low'])} (numerator not reached)"
        if r["kind"] == "ratio" and r["ours"] == 0 and r["low"] == 0:
            return f"< {page.fmt(r['high'])} (denominator not reached)"
        if r["ours"] == math.inf and r["kind"] == "smallest":
            return f"none up to {page.fmt(r['bound'])}"
        if r["ours"] == math.inf:
            return f"not reached in {page.fmt(r['bound'])}" if math.isfinite(r["bound"]) else "not reached"
        text = page.fmt(r["ours"])
        if r["low"] != r["high"]:
            hi = page.fmt(r["high"]) if math.isfinite(r["high"]) else page.INFINITE
            text += f" ({page.fmt(r['low'])} – {hi})"
        return text

    return pd.DataFrame({
        "number": rows["what"], "groklab (median, seed range)": rows.apply(ours, axis=1),
        "runs": rows["n"], "published": rows["published"],
        "tolerance": [f"±{t:.0%}" if t else page.MISSING for t in rows["tolerance"]],
        "agrees": [("yes (a bound)" if _bound(r) else "yes") if r["agrees"] is True else "no" if r["agrees"] is False
                   else "not compared" for _, r in rows.iterrows()],
        "source": rows["source"]})


def _bound(r: pd.Series) -> bool:
    """Whether groklab's value is only a bound (an event never reached, or a ratio with such a side): it can be
    consistent with the published number without pinning it down."""
    return r["ours"] == math.inf or (r["kind"] == "ratio" and r["ours"] == 0 and r["low"] == 0)


def to_markdown(result: dict[str, Any], rows: pd.DataFrame) -> str:
    d = display(rows)
    lines = ["| " + " | ".join(d.columns) + " |", "|" + "---|" * len(d.columns)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in r) + " |" for r in d.itertuples(index=False)]
    head = (f"**{result['verdict']}** at scale `{result['scale']}` ({result['scale_means']}). "
            f"Machine: {result['machine']}; this call took {page.fmt(result['wall_seconds'], 'seconds')} s.")
    for k, n in result.get("missing_runs", {}).items():
        head += f" {n} of sweep {k}'s runs were not in the store; its numbers come from the runs that are."
    return head + "\n\n" + "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], rows: pd.DataFrame, st: Store, out: Path) -> Path:
    """out/index.html: the agreement table, the deviations and links to each sweep's own report."""
    import html

    out.mkdir(parents=True, exist_ok=True)
    reported = [n for n in result["sweeps"] if n not in result.get("missing_runs", {}) or len(st.runs(sweep=n))]
    for name in reported:  # a sweep with no run stored yet (--no-train) has no report
        report.report(st, sweep=name, out=out / name)
    rows.to_csv(out / "agreement.csv", index=False)
    (out / "agreement.md").write_text(to_markdown(result, rows))
    links = "".join(f'<li><a href="{n}/index.html">{n}</a></li>' for n in reported)
    dev = "".join(f"<li>{html.escape(d)}</li>" for d in result["deviations"]) or "<li>none</li>"
    intro = page.Section("Overview", (
        f"<p><b>{html.escape(result['title'])}</b> — {html.escape(result['source'])}.</p>"
        f"<p>Scale <b>{result['scale']}</b>: {html.escape(result['scale_means'])}.</p>"
        f"<p>Verdict: <b>{result['verdict']}</b>. A number agrees when groklab's seed range, widened by the stated "
        "tolerance, meets the published value or range; every entry of the table is computed from the stored runs."
        f"</p><p>Machine: {html.escape(result['machine'])}; this call took "
        f"{page.fmt(result['wall_seconds'], 'seconds')} s (runs already stored are reused, not retrained).</p>"
        + "".join(f"<p><b>{n} of sweep {html.escape(k)}'s runs are not in the store</b>: its numbers come from the "
                  "runs that are.</p>" for k, n in result.get("missing_runs", {}).items())
        + f"<p>Each sweep's own report: <ul>{links}</ul></p>"))
    table_html = page.table(display(rows))
    png = agreement_figure(rows, out / "agreement")
    if png is not None:
        table_html += page.figure(png, "groklab's median (dot) and seed range (line) over the published value or "
                                  "range (grey band, widened by the stated tolerance), each divided by the published "
                                  "value: 1 is equal. Green: agrees; red: does not; ▷: not reached (a lower bound).")
    sections = [intro, page.Section("Agreement with the published numbers", table_html),
                page.Section("Where groklab differs from the source", f"<ul>{dev}</ul>")]
    (out / "index.html").write_text(page.page(f"groklab repro: {result['preset']} ({result['scale']})", sections))
    return out


def agreement_figure(rows: pd.DataFrame, base: Path) -> Path | None:
    """One line per compared number with a finite published reference: groklab's median and seed range and the
    published value or range, all divided by the published reference (log axis). None when nothing qualifies."""
    import matplotlib.pyplot as plt

    from groklab.analysis import figures

    shown = []
    for _, r in rows.iterrows():
        lo, hi = r["pub_low"], r["pub_high"]
        if r["agrees"] is None or not (0 < lo <= hi < math.inf) or math.isnan(r["low"]):
            continue  # open ranges have no reference to divide by
        shown.append((r, (lo, hi, math.sqrt(lo * hi))))
    if not shown:
        return None
    with figures.style():
        fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(shown) + 1.0))
        for y, (r, (lo, hi, ref)) in enumerate(reversed(shown)):
            tol = r["tolerance"]
            ax.fill_betweenx([y - 0.3, y + 0.3], lo * (1 - tol) / ref, hi * (1 + tol) / ref, color="#dddddd", lw=0)
            color = "#009E73" if r["agrees"] else "#D55E00"
            low, high, mid = (max(v, 1e-12) / ref for v in (r["low"], r["high"], r["ours"]))
            right = high if math.isfinite(high) else max(low, 1.0) * 10
            ax.plot([low, right], [y, y], color=color, lw=2)
            if math.isfinite(mid) and mid > 1e-11:
                ax.plot([mid], [y], "o", color=color)
            else:
                ax.plot([right], [y], ">", color=color)
        ax.set_xscale("log")
        ax.axvline(1.0, color="#888888", lw=0.8, ls=":")
        ax.set_yticks(range(len(shown)), [figures.wrap(r["id"], 24) for r, _ in reversed(shown)])
        ax.set_xlabel("groklab ÷ published")
        fig.tight_layout()
        return figures.save(fig, base)[0]


def listing() -> list[tuple[str, str]]:
    """(name, one line) for every shipped preset."""
    return [(n, f"{(p := load(n)).title} ({p.source.split(';')[0]})") for n in names()]
