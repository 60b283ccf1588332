"""Hypotheses files: claims, the sweeps that test them, decision rules fixed before the data; verdicts.

A hypotheses file (YAML; docs/hypotheses.md has the full reference):

    name: brief
    decision: {alpha: 0.05, power: 0.8}          # defaults for every claim
    analysis: {phases: {delay_fraction: 0.1}}    # phase thresholds (groklab.analysis.phases)
    sweeps:
      wd:                                        # a sweep one or more claims use
        spec: {base: {...}, grid: {...}, seeds: [0, 1, 2]}     # or `file: sweeps/wd.yaml`
        small: {seeds: [0, 1, 2, 3], base: {train: {steps: 3000}}}   # deep-merged into spec at --scale small
        full: {seeds: [0, 1, 2, 3, 4, 5, 6, 7]}
    claims:
      - id: wd-faster
        claim: "higher weight decay values correlated with quicker convergence rates"
        sweep: wd
        where: {optim.decay: decoupled}           # optional: only these runs
        measure: grokked_step                     # groklab.analysis.outcomes
        statistic: trend                          # trend | difference | scaling
        axis: optim.weight_decay
        direction: decreasing
        min_effect: 0.3
      - id: gans
        claim: "smaller batches enhanced the diversity of generated samples (GANs)"
        untestable: "groklab trains supervised classifiers; there is no generator"

Statistics (groklab.analysis.stats), and the scale of `min_effect`, the smallest effect that matters:
- `trend`: rank correlation of the measure with an ordered `axis` (censoring-aware for times); ρ ∈ [−1, 1].
- `difference`: condition `b` against condition `a` (each a mapping of axis values). Times: log of the
  ratio of restricted mean times to the event (log-rank test); binary measures: difference of fractions
  (Fisher's exact test); values: difference of means (permutation test).
- `interaction`: whether an ordered `axis` acts differently in condition `b` than in `a` (e.g. weight decay
  in a residual vs a plain network): the difference of the two trends' ρ, b − a, with a normal interval
  from the two bootstrap intervals.
- `scaling`: the exponent of a power law time ∝ x^a fitted to the per-cell Kaplan–Meier medians, where x
  is the `axis` value (or the product of several axes, e.g. [optim.lr, optim.weight_decay]).

Direction: `increasing`/`greater` claim a positive estimate, `decreasing`/`less` a negative one, `different`
either sign, `equal` an effect inside ±min_effect (an equivalence claim). The verdict, with p adjusted by
Holm across the file:
- directional: **supported** when p_holm < α, the interval excludes 0 on the claimed side and the estimate
  is at least min_effect in the claimed direction; **contradicted** when p_holm < α and the estimate is
  on the other side, or when the whole interval lies below min_effect in the claimed direction (no effect
  that matters); else **inconclusive**.
- different: as directional, with the claimed side the estimate's own.
- equal: **supported** when the interval lies inside ±min_effect; **contradicted** when it lies wholly
  outside it; else **inconclusive**.
For an inconclusive claim, `seeds_needed` is the seeds per condition that would decide it at the
observed effect (80 % power by default, at α / the number of tested claims: Holm's strictest step). A
scaling fit gets none: its uncertainty comes from how many cells have a median, not from the seeds.
"""

from __future__ import annotations

import copy
import functools
import math
import typing
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from scipy import stats as scipy_stats

from groklab.analysis import outcomes, phases, stats, tables
from groklab.config import Config, ConfigError, flatten, load_yaml

SCALES = ("small", "full")
VERDICTS = ("supported", "contradicted", "inconclusive", "untestable")
# min_effect when a claim gives none, per statistic and kind of measure (the scale of the estimate).
DEFAULT_MIN_EFFECT = {
    ("trend", "time"): 0.3, ("trend", "value"): 0.3, ("trend", "binary"): 0.3,
    ("difference", "time"): round(math.log(1.25), 4),  # 25 % sooner or later
    ("difference", "binary"): 0.2,
    ("difference", "value"): 0.0,  # a value's scale is the measure's own: give min_effect for those
    ("scaling", "time"): 0.25,
    ("interaction", "time"): 0.3, ("interaction", "value"): 0.3, ("interaction", "binary"): 0.3,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Decision(_Strict):
    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="significance level, after Holm's correction")
    power: float = Field(0.8, gt=0.0, lt=1.0, description="power behind `seeds_needed` of inconclusive claims")


class SweepEntry(_Strict):
    spec: dict[str, Any] | None = Field(None, description="the sweep inline: {base, grid, seeds, ...}")
    file: str | None = Field(None, description="or a sweep file, relative to the hypotheses file")
    small: dict[str, Any] = Field(default_factory=dict, description="deep-merged into the spec at --scale small")
    full: dict[str, Any] = Field(default_factory=dict, description="deep-merged into the spec at --scale full")

    @model_validator(mode="after")
    def _one_source(self) -> SweepEntry:
        if (self.spec is None) == (self.file is None):
            raise ValueError("give exactly one of `spec` (inline) or `file`")
        return self


class Claim(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$", description="short name, unique in the file")
    claim: str = Field(description="the claim in words (quote the source where there is one)")
    source: str | None = Field(None, description="where the claim comes from")
    untestable: str | None = Field(None, description="why a supervised grokking run cannot test it")
    sweep: str | None = Field(None, description="the entry of `sweeps` that tests it")
    where: dict[str, Any] = Field(default_factory=dict, description="only runs with these axis values (a value "
                                  "or a list of values per key)")
    measure: str | None = Field(None, description="what is compared (groklab.analysis.outcomes)")
    statistic: Literal["trend", "difference", "interaction", "scaling"] | None = None
    axis: str | list[str] | None = Field(None, description="trend / scaling: the ordered axis (scaling: a list "
                                         "multiplies axes)")
    a: dict[str, Any] | None = Field(None, description="difference: the reference condition")
    b: dict[str, Any] | None = Field(None, description="difference: the condition compared with it")
    direction: Literal["increasing", "decreasing", "greater", "less", "different", "equal"] | None = None
    alpha: float | None = Field(None, gt=0.0, lt=1.0, description="overrides decision.alpha")
    min_effect: float | None = Field(None, ge=0.0, description="the smallest effect that matters, on the "
                                     "estimate's scale (module docstring); default by statistic")

    @model_validator(mode="after")
    def _complete(self) -> Claim:
        if self.untestable is not None:
            return self
        for key in ("sweep", "measure", "statistic", "direction"):
            if getattr(self, key) is None:
                raise ValueError(f"`{key}` is required (or say why the claim is `untestable`)")
        outcomes.kind(self.measure)  # raises naming the allowed measures
        if self.statistic in ("trend", "scaling", "interaction") and self.axis is None:
            raise ValueError(f"statistic {self.statistic!r} needs `axis`")
        if self.statistic in ("difference", "interaction") and (self.a is None or self.b is None):
            raise ValueError(f"statistic {self.statistic!r} needs conditions `a` and `b`")
        if self.statistic == "scaling" and outcomes.kind(self.measure) != "time":
            raise ValueError("statistic 'scaling' fits times to an event: use a time measure such as grokked_step")
        ordered = self.statistic in ("trend", "scaling")
        if ordered != (self.direction in ("increasing", "decreasing")) and self.direction not in ("equal", "different"):
            allowed = "increasing, decreasing, different, equal" if ordered else "greater, less, different, equal"
            raise ValueError(f"direction {self.direction!r} does not fit statistic {self.statistic!r}; allowed: {allowed}")
        if self.direction == "equal" and self.min_effect is None:
            raise ValueError("direction 'equal' needs `min_effect`: the band within which the effect counts as none")
        return self


class HypothesesFile(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    decision: Decision = Field(default_factory=Decision)
    analysis: dict[str, Any] = Field(default_factory=dict)
    sweeps: dict[str, SweepEntry] = Field(default_factory=dict)
    claims: list[Claim]
    path: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _references(self) -> HypothesesFile:
        ids = [c.id for c in self.claims]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"claim ids must be unique; repeated: {', '.join(sorted(dup))}")
        for c in self.claims:
            if c.sweep is not None and c.sweep not in self.sweeps:
                raise ValueError(f"claim {c.id}: sweep {c.sweep!r} is not in `sweeps` ({', '.join(self.sweeps)})")
        return self


def load(source: str | Path | dict[str, Any]) -> HypothesesFile:
    """A validated hypotheses file; a ConfigError naming the key otherwise."""
    raw = load_yaml(source) if isinstance(source, (str, Path)) else dict(source)
    try:
        hf = HypothesesFile.model_validate(raw)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = ".".join(_where(raw, err["loc"]))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            msgs.append(f"hypotheses {loc}: {msg}" if loc else f"hypotheses: {msg}")
        raise ConfigError("; ".join(msgs)) from None
    hf.path = Path(source) if isinstance(source, (str, Path)) else None
    phases.rule_from(hf.analysis, "hypotheses analysis")
    return hf


def _where(raw: dict[str, Any], loc: tuple) -> list[str]:
    """A pydantic error location with claims named by their id: ('claims', 2, 'axis') -> claims[wd-faster].axis."""
    parts = [str(p) for p in loc]
    if len(loc) > 1 and loc[0] == "claims" and isinstance(loc[1], int):
        claims = raw.get("claims") or []
        cid = claims[loc[1]].get("id", loc[1]) if loc[1] < len(claims) and isinstance(claims[loc[1]], dict) else loc[1]
        parts = [f"claims[{cid}]", *parts[2:]]
    return parts


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra` merged in: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def sweep_name(hf: HypothesesFile, key: str, scale: str) -> str:
    """The store's name of a claim sweep at a scale: <file>.<sweep>.<scale>."""
    return f"{hf.name}.{key}.{scale}"


def sweep_spec(hf: HypothesesFile, key: str, scale: str) -> dict[str, Any]:
    """The sweep spec of `sweeps[key]` at `scale`, named for the store, with the file's analysis section."""
    if scale not in SCALES:
        raise ConfigError(f"--scale: {scale!r}; allowed: {', '.join(SCALES)}")
    entry = hf.sweeps[key]
    if entry.file is not None:
        base_dir = hf.path.parent if hf.path is not None else Path(".")
        spec = load_yaml(base_dir / entry.file)
    else:
        spec = copy.deepcopy(entry.spec or {})
    spec = deep_merge(spec, getattr(entry, scale))
    spec["name"] = sweep_name(hf, key, scale)
    spec.setdefault("analysis", hf.analysis)
    return spec


@functools.cache
def _defaults() -> dict[str, Any]:
    """Every config key's default, flattened: a stored config leaves out keys that do not apply (a default
    exposure, no augmentation), so a run without the key has its default. An optional section that is off by
    default (`train.exposure`, `task.augment`) contributes its own fields' defaults."""
    out = flatten(Config().model_dump(mode="json"))

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            for sub in typing.get_args(field.annotation) or (field.annotation,):
                if isinstance(sub, type) and issubclass(sub, BaseModel):
                    try:
                        for k, v in flatten(sub().model_dump(mode="json")).items():
                            out.setdefault(f"{prefix}{name}.{k}", v)
                    except ValidationError:  # a section with required fields has no default to offer
                        pass
                    walk(sub, f"{prefix}{name}.")

    walk(Config, "")
    return out


def _matches(runs: pd.DataFrame, cond: dict[str, Any], what: str) -> np.ndarray:
    mask = np.ones(len(runs), dtype=bool)
    defaults = _defaults()  # cached: the same for every condition of every claim
    for key, want in cond.items():
        if key not in runs and key not in defaults:
            raise ConfigError(f"{what}.{key}: not a config key of the sweep's runs")
        wanted = [tables.hashable(w) for w in (want if isinstance(want, list) else [want])]
        raw = runs[key] if key in runs else pd.Series([None] * len(runs), index=runs.index, dtype=object)
        col = raw.map(lambda v, k=key: defaults.get(k) if v is None or (isinstance(v, float) and math.isnan(v))
                      else v).map(tables.hashable)
        # A set section (a batch schedule) is flattened into its sub-keys: its own column is empty, not null.
        sub = [c for c in runs.columns if c.startswith(f"{key}.")]
        if sub:
            col = col.where(~runs[sub].notna().any(axis=1).to_numpy(), "<section>")
        hit = np.zeros(len(runs), dtype=bool)
        for w in wanted:
            hit |= np.array([_same(v, w) for v in col], dtype=bool)
        mask &= hit
    return mask


def _same(v: Any, w: Any) -> bool:
    if w is None:  # a null config value (e.g. no batch schedule) reads back as None or NaN in a mixed column
        return v is None or (isinstance(v, float) and math.isnan(v))
    if isinstance(v, (int, float)) and isinstance(w, (int, float)) and not isinstance(v, bool):
        return math.isclose(float(v), float(w), rel_tol=1e-9, abs_tol=1e-12)
    return v == w


def estimate(claim: Claim, runs: pd.DataFrame, curves: pd.DataFrame, rule: phases.PhaseRule) -> tuple[stats.Estimate, dict]:
    """The claim's estimate on `runs` (already restricted to its `where`), and the data behind it (for the
    figure and the effect sentence)."""
    kind = outcomes.kind(claim.measure)
    ph = phases.phases(runs, curves, rule)["phase"] if claim.measure.startswith("phase=") else None

    def measure(sub: pd.DataFrame, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        if kind == "time":
            return outcomes.time_to_event(sub, claim.measure, curves)
        v = outcomes.values(sub, claim.measure, curves, None if ph is None else ph[mask] if mask is not None else ph)
        return v, None

    if claim.statistic == "difference":
        ma, mb = _matches(runs, claim.a, f"claims[{claim.id}].a"), _matches(runs, claim.b, f"claims[{claim.id}].b")
        if not ma.any() or not mb.any():
            empty = "a" if not ma.any() else "b"
            raise ConfigError(f"claims[{claim.id}].{empty}: no runs match {getattr(claim, empty)}")
        (ya, oa), (yb, ob) = measure(runs[ma], ma), measure(runs[mb], mb)
        if kind == "time":
            est = stats.compare_times((ya, oa), (yb, ob))
        elif kind == "binary":
            est = stats.compare_fractions(int(np.nansum(ya)), int(np.isfinite(ya).sum()),
                                          int(np.nansum(yb)), int(np.isfinite(yb).sum()))
        else:
            est = stats.compare_values(ya, yb)
        return est, {"a": (ya, oa), "b": (yb, ob)}
    if claim.statistic == "interaction":
        return _interaction(claim, runs, measure)
    axes = claim.axis if isinstance(claim.axis, list) else [claim.axis]
    for a in axes:
        if a not in runs:
            raise ConfigError(f"claims[{claim.id}].axis: {a!r} is not a config key of the sweep's runs")
    x = np.prod([runs[a].astype(float).to_numpy() for a in axes], axis=0)
    y, obs = measure(runs)
    if claim.statistic == "trend":
        keep = np.isfinite(y)
        est = stats.trend(x[keep], y[keep], None if obs is None else obs[keep])
        return est, {"x": x, "y": y, "observed": obs}
    positive = x > 0  # a power law has no x = 0 (e.g. no weight decay): those cells are left out of the fit
    cell = runs[axes].map(tables.hashable).astype(str).agg("|".join, axis=1).to_numpy()
    est, table = stats.scaling(x[positive], y[positive], obs[positive], cell[positive])
    return est, {"x": x, "y": y, "observed": obs, "table": table}


def _interaction(claim: Claim, runs: pd.DataFrame, measure: Any) -> tuple[stats.Estimate, dict]:
    """ρ_b − ρ_a of the measure's trend with `axis` in conditions b and a."""
    if claim.axis not in runs:
        raise ConfigError(f"claims[{claim.id}].axis: {claim.axis!r} is not a config key of the sweep's runs")
    parts, data = [], {}
    for name in ("a", "b"):
        mask = _matches(runs, getattr(claim, name), f"claims[{claim.id}].{name}")
        if not mask.any():
            raise ConfigError(f"claims[{claim.id}].{name}: no runs match {getattr(claim, name)}")
        x = runs.loc[mask, claim.axis].astype(float).to_numpy()
        y, obs = measure(runs[mask], mask)
        keep = np.isfinite(y)
        parts.append(stats.trend(x[keep], y[keep], None if obs is None else obs[keep]))
        data[name] = {"x": x, "y": y, "observed": obs}
    ea, eb = parts
    z = scipy_stats.norm.ppf(0.5 + stats.CONFIDENCE / 2)
    se = math.hypot((ea.high - ea.low) / (2 * z), (eb.high - eb.low) / (2 * z))
    diff = eb.value - ea.value
    p = float(2 * scipy_stats.norm.sf(abs(diff) / se)) if se > 0 else (1.0 if diff == 0 else 0.0)
    return stats.Estimate(diff, diff - z * se, diff + z * se, p=p, n=len(runs)), {**data, "trends": (ea, eb)}


def sign(direction: str) -> int:
    return {"increasing": 1, "greater": 1, "decreasing": -1, "less": -1}.get(direction, 0)


def decide(est: stats.Estimate, p_holm: float | None, direction: str, alpha: float, min_effect: float) -> str:
    """The verdict of one claim (module docstring)."""
    if not np.isfinite(est.value) or not np.isfinite(est.low) or not np.isfinite(est.high):
        return "inconclusive"
    if direction == "equal":
        if -min_effect <= est.low and est.high <= min_effect:
            return "supported"
        if est.low > min_effect or est.high < -min_effect:
            return "contradicted"
        return "inconclusive"
    s = sign(direction) or (1 if est.value >= 0 else -1)  # `different`: the side the estimate is on
    significant = p_holm is not None and p_holm < alpha
    lo, hi, v = sorted((s * est.low, s * est.high)) + [s * est.value]
    if significant and lo > 0 and v >= min_effect:
        return "supported"
    if (significant and hi < 0 and direction != "different") or hi < min_effect:
        return "contradicted"
    return "inconclusive"


def evaluate(hf: HypothesesFile, scale: str, runs_of: Any, curves_of: Any) -> tuple[list[dict], dict[str, dict]]:
    """Verdicts of every claim, from stored runs: `runs_of(sweep_name)` returns the sweep's runs and
    `curves_of(run_ids)` their curves. Returns (verdicts as JSON-ready dicts, data per claim id)."""
    rule = phases.rule_from(hf.analysis, "hypotheses analysis")
    rows, data = [], {}
    for claim in hf.claims:
        row: dict[str, Any] = {"id": claim.id, "claim": claim.claim, "source": claim.source, "scale": scale}
        if claim.untestable is not None:
            rows.append({**row, "verdict": "untestable", "reason": claim.untestable})
            continue
        name = sweep_name(hf, claim.sweep, scale)
        runs = runs_of(name)
        runs = runs[_matches(runs, claim.where, f"claims[{claim.id}].where")].reset_index(drop=True)
        if runs.empty:
            raise ConfigError(f"claims[{claim.id}].where: no runs of sweep {name} match {claim.where}")
        curves = curves_of(runs["run_id"])
        est, d = estimate(claim, runs, curves, rule)
        kind = outcomes.kind(claim.measure)
        min_effect = claim.min_effect if claim.min_effect is not None else DEFAULT_MIN_EFFECT[(claim.statistic, kind)]
        seeds = int(runs["train.seed"].nunique())
        data[claim.id] = {**d, "runs": runs, "claim": claim}
        rows.append({**row, "sweep": name, "measure": claim.measure, "kind": kind, "statistic": claim.statistic,
                     "axis": claim.axis, "a": claim.a, "b": claim.b, "where": claim.where,
                     "direction": claim.direction, "alpha": claim.alpha or hf.decision.alpha, "min_effect": min_effect,
                     **_estimate_fields(est),
                     "n_runs": len(runs), "seeds": seeds, "run_ids": sorted(runs["run_id"])})
    tested = [r for r in rows if r.get("verdict") != "untestable"]
    adjusted = stats.holm([r.get("p") if r.get("p") is not None else np.nan for r in tested])
    for r, ph in zip(tested, adjusted):
        r["p_holm"] = None if not np.isfinite(ph) else float(ph)
        est = stats.Estimate(*(np.nan if r[k] is None else r[k] for k in ("estimate", "low", "high")), p=r["p"])
        r["verdict"] = decide(est, r["p_holm"], r["direction"], r["alpha"], r["min_effect"])
        r["seeds_needed"] = None
        if r["verdict"] == "inconclusive" and r["statistic"] != "scaling":  # a fit's uncertainty is in its cells
            # α / m: Holm's first step, so the answer holds however the file's other claims come out
            r["seeds_needed"] = stats.seeds_needed(_as_wide_as_p(est), r["seeds"], r["alpha"] / len(tested),
                                                   hf.decision.power,
                                                   r["min_effect"] if r["direction"] == "equal" else 0.0)
        r["effect"] = effect_sentence(r)
    return rows, data


def _as_wide_as_p(est: stats.Estimate) -> stats.Estimate:
    """The estimate with its interval widened, where needed, to the standard error its test's p implies.

    With three seeds a bootstrap interval can be narrower than the log-rank or permutation test allows; the
    seeds a decision needs must follow the weaker of the two, or an undecided claim would be told it needs
    the seeds it already has."""
    if est.p is None or not 0 < est.p < 1 or est.value == 0:
        return est
    z = float(scipy_stats.norm.ppf(0.5 + stats.CONFIDENCE / 2))
    se = max((est.high - est.low) / (2 * z), abs(est.value) / float(scipy_stats.norm.isf(est.p / 2)))
    return stats.Estimate(est.value, est.value - z * se, est.value + z * se, p=est.p, n=est.n)


def _estimate_fields(est: stats.Estimate) -> dict[str, float | None]:
    d = est.to_dict()
    return {"estimate": d["value"], "low": d["low"], "high": d["high"], "p": d["p"]}


def effect_sentence(r: dict) -> str:
    """The estimate in words, with its interval."""
    v, lo, hi = r["estimate"], r["low"], r["high"]
    if v is None:
        return "no estimate (too few runs reached the event)"
    what = outcomes.label(r["measure"])
    if r["statistic"] == "trend":
        return f"rank correlation of {what} with {r['axis']}: ρ = {v:+.2f} [{_f(lo)}, {_f(hi)}]"
    if r["statistic"] == "interaction":
        return f"trend of {what} with {r['axis']}: ρ_b − ρ_a = {v:+.2f} [{_f(lo)}, {_f(hi)}]"
    if r["statistic"] == "scaling":
        axis = " × ".join(r["axis"]) if isinstance(r["axis"], list) else r["axis"]
        return f"{what} ∝ ({axis})^a with a = {v:+.2f} [{_f(lo)}, {_f(hi)}]"
    if r["kind"] == "time":
        return (f"b's restricted mean {what} is {math.exp(v):.2f}× a's [{_f(lo, math.exp)}, {_f(hi, math.exp)}] "
                "(below 1: b sooner)")
    if r["kind"] == "binary":
        return f"{what}: b − a = {v:+.2f} [{_f(lo)}, {_f(hi)}]"
    return f"mean {what}: b − a = {v:+.3g} [{_f(lo)}, {_f(hi)}]"


def _f(x: float | None, f: Any = None) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    return f"{f(x):.2f}" if f else f"{x:+.3g}"
