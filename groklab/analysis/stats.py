"""Statistics for grokking times: survival curves, comparisons between conditions, trends and scaling fits.

Conventions
-----------
A run groks at some time (steps, samples or wall seconds: the caller picks one unit and sticks to it) or never
within its budget. A run that never grokked is *right-censored*: its time is its own budget and its `observed`
flag is False. It is never dropped and never +inf, because both bias every summary towards the runs that
happened to grok. Everything about times is therefore done with survival methods: the Kaplan–Meier curve of
"not yet grokked", its median, the area under it (the restricted mean time, RMST), the log-rank test.
A nan time means the run has no time at all (say the measure was never recorded): such runs are dropped, as
nan values are everywhere in this module. An infinite time is refused with a ValueError.

Every interval is a 95% interval (`CONFIDENCE`); every p-value is two-sided. A statistic comes back as an
`Estimate`: value, interval, p where a test applies, and n, the number of runs it used. Functions that
resample take a `seed` (default 0) and give the same answer every time. Degenerate inputs (no runs, one
run, nothing varies) never raise: they give nan where nothing can be said and the exact answer where it can.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 1999  # for the bootstraps whose statistic is a Python loop (KM curves, Gehan scores)

nan = float("nan")
inf = float("inf")


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95% interval; p is two-sided where a test applies; n = runs used."""

    value: float
    low: float
    high: float
    p: float | None = None
    n: int = 0

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-safe: inf and nan become None (JSON has neither)."""
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in asdict(self).items()}


def _z(q: float) -> float:
    return float(stats.norm.ppf(q))


def _runs(time: ArrayLike, observed: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Times as floats and observed as bools, runs without a time (nan) dropped. An infinite time is a caller's
    bug: a run that never grokked is censored at its budget, and inf would silently weigh as the longest run."""
    t = np.asarray(time, dtype=float).ravel()
    o = np.asarray(observed, dtype=bool).ravel()
    if t.shape != o.shape:
        raise ValueError(f"time and observed differ in length: {t.size} != {o.size}")
    if np.isinf(t).any():
        raise ValueError("times must be finite: a run that never grokked is censored at its budget, not inf")
    keep = ~np.isnan(t)
    return t[keep], o[keep]


def _finite(x: float) -> bool:
    return x is not None and math.isfinite(x)


# ---------------------------------------------------------------------------------------------------------------
# One group of runs: Kaplan–Meier curve, median, restricted mean, proportions, bootstrap


def _km(t: np.ndarray, o: np.ndarray) -> Any:  # scipy's ECDFResult
    return stats.ecdf(stats.CensoredData.right_censored(t, ~o))


def survival(time: ArrayLike, observed: ArrayLike) -> pd.DataFrame:
    """Kaplan–Meier curve of the fraction not yet grokked, with a 95% pointwise band (Greenwood, log-log).

    Columns time, not_grokked, low, high. The first row is (0, 1, 1, 1); then one row per distinct time at which
    some run grokked; then a last row at the largest time (a budget, usually) so a plot reaches the end.
    The curve is a right-continuous step function: the value on a row holds until the next row's time.
    """
    t, o = _runs(time, observed)
    rows = [(0.0, 1.0, 1.0, 1.0)]
    if t.size == 0:
        return pd.DataFrame(rows, columns=["time", "not_grokked", "low", "high"])
    if o.any():
        res = _km(t, o)
        with warnings.catch_warnings():
            # log-log is undefined where the curve reaches 0; we fill those points below
            warnings.simplefilter("ignore", RuntimeWarning)
            ci = res.sf.confidence_interval(CONFIDENCE, method="log-log")
        q, s = res.sf.quantiles, res.sf.probabilities
        low, high = ci.low.probabilities.copy(), ci.high.probabilities.copy()
        # Where the curve hits 0 (the last run at risk grokked) Greenwood's variance is undefined: the lower
        # bound is 0, and the upper bound keeps its last defined value rather than claiming certainty.
        low[np.isnan(low)] = 0.0
        high = pd.Series(high).ffill().fillna(1.0).to_numpy()
        keep = np.isin(q, t[o])  # ecdf also reports censoring-only times, where nothing changes
        rows += list(zip(q[keep], s[keep], np.clip(low[keep], 0, 1), np.clip(high[keep], 0, 1)))
    last = rows[-1]
    if t.max() > last[0]:
        rows.append((float(t.max()), *last[1:]))
    return pd.DataFrame(rows, columns=["time", "not_grokked", "low", "high"]).astype(float)


def median_time(time: ArrayLike, observed: ArrayLike) -> Estimate:
    """KM median time to grok with a 95% interval; inf when it is not reached.

    The median is the first time the curve is below 0.5. Where the curve sits exactly at 0.5 over a stretch,
    it is the middle of that stretch (R `survival`'s convention), and not reached when the stretch lasts to
    the end of follow-up: with two seeds, one grokked gives no median (the other may never grok), and both
    grokked give their mean, not the earlier one.
    The interval is read off the pointwise band where it crosses 0.5 (Brookmeyer–Crowley style): the lower
    band falls to 0.5 first and gives the low end, the upper band gives the high end (inf if it stays above).
    """
    t, _ = _runs(time, observed)
    if t.size == 0:
        return Estimate(nan, nan, nan, n=0)
    sv = survival(time, observed)
    times, s = sv["time"].to_numpy(), sv["not_grokked"].to_numpy()

    def first(col: str) -> float:
        hit = sv["time"][sv[col] <= 0.5]
        return float(hit.iloc[0]) if len(hit) else inf

    at = np.flatnonzero(s <= 0.5 + 1e-12)
    if not len(at):
        median = inf
    elif abs(s[at[0]] - 0.5) > 1e-12:
        median = float(times[at[0]])
    else:
        below = np.flatnonzero(s < 0.5 - 1e-12)
        median = (float(times[at[0]]) + float(times[below[0]])) / 2 if len(below) else inf
    return Estimate(median, min(first("low"), median), max(first("high"), median), n=int(t.size))


def rmst(time: ArrayLike, observed: ArrayLike, tau: float) -> float:
    """Restricted mean time to grok: the area under the KM curve on [0, tau] (without censoring, mean(min(T, tau)))."""
    t, o = _runs(time, observed)
    if t.size == 0:
        return nan
    if tau <= 0:
        return 0.0
    if not o.any():
        return float(tau)
    sf = _km(t, o).sf
    # step function: 1 on [0, q_0), s_i on [q_i, q_{i+1}), the last value held on to tau
    edges = np.concatenate([[0.0], np.clip(sf.quantiles, 0.0, tau), [tau]])
    heights = np.concatenate([[1.0], sf.probabilities])
    return float(np.sum(heights * np.diff(edges)))


def fraction(k: int, n: int) -> Estimate:
    """k of n runs (e.g. grokked) with the Wilson score interval, which behaves at 0/n and n/n."""
    if n <= 0:
        return Estimate(nan, nan, nan, n=0)
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return Estimate(k / n, float(ci.low), float(ci.high), n=int(n))


def _bootstrap_ci(data: tuple, statistic: Callable, seed: int, **kw) -> tuple[float, float]:
    """scipy's bootstrap interval, BCa first and percentile where BCa is undefined (e.g. a degenerate sample)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DegenerateDataWarning when BCa is undefined: we fall back below
        res = stats.bootstrap(data, statistic, confidence_level=CONFIDENCE, method="BCa", rng=seed, **kw)
        low, high = res.confidence_interval
        if not (np.isfinite(low) and np.isfinite(high)):
            res = stats.bootstrap(data, statistic, confidence_level=CONFIDENCE, method="percentile", rng=seed, **kw)
            low, high = res.confidence_interval
    return float(low), float(high)


def bootstrap(values: ArrayLike, statistic: Callable = np.mean, seed: int = 0) -> Estimate:
    """statistic(values) with a 95% BCa bootstrap interval (percentile where BCa is nan). NaNs are dropped."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return Estimate(nan, nan, nan, n=0)
    value = float(statistic(v))
    if v.size < 2 or np.all(v == v[0]):
        return Estimate(value, value, value, n=int(v.size))
    low, high = _bootstrap_ci((v,), statistic, seed)
    return Estimate(value, low, high, n=int(v.size))


# ---------------------------------------------------------------------------------------------------------------
# Two groups: times, values, fractions


def compare_times(a: tuple[ArrayLike, ArrayLike], b: tuple[ArrayLike, ArrayLike], tau: float | None = None,
                  seed: int = 0) -> Estimate:
    """How much sooner b groks than a: log(RMST_b / RMST_a), negative when b groks sooner.

    a and b are (time, observed). The horizon tau defaults to the longest span on which both KM curves are known:
    a curve is known up to its group's largest time, and everywhere once it has reached 0 (its last run grokked).
    So with budgets it is the smaller of the two largest budgets, and neither group is credited with time it was
    not watched; when both curves reach 0 it is the largest time, and RMST is the plain mean time to grok.
    The 95% interval resamples runs within each group (percentile bootstrap; tau stays fixed); p is the
    two-sided log-rank test, which uses the whole curves rather than the area up to tau.
    """
    ta, oa = _runs(*a)
    tb, ob = _runs(*b)
    n = int(ta.size + tb.size)
    if ta.size == 0 or tb.size == 0:
        return Estimate(nan, nan, nan, n=n)
    if not (oa.any() or ob.any()):
        return Estimate(0.0, 0.0, 0.0, p=1.0, n=n)  # both curves are flat at 1: no difference to see
    if tau is None:
        # a curve that ended at 0 is known (as 0) past its last time; one that ended above 0 is not
        known = [t.max() if _km(t, o).sf.probabilities[-1] > 0 else inf for t, o in ((ta, oa), (tb, ob))]
        tau = float(min(known)) if min(known) < inf else float(max(ta.max(), tb.max()))
    tau = float(tau)
    if tau <= 0:
        return Estimate(nan, nan, nan, n=n)

    def log_ratio(ia: np.ndarray, ib: np.ndarray) -> float:
        ia, ib = ia.astype(int), ib.astype(int)
        return math.log(rmst(tb[ib], ob[ib], tau) / rmst(ta[ia], oa[ia], tau))

    value = log_ratio(np.arange(ta.size), np.arange(tb.size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.logrank(stats.CensoredData.right_censored(ta, ~oa),
                                stats.CensoredData.right_censored(tb, ~ob)).pvalue)
    low = high = nan
    if ta.size >= 2 and tb.size >= 2:
        # resampling indices lets one statistic see each run's (time, observed) pair
        res = stats.bootstrap((np.arange(ta.size), np.arange(tb.size)), log_ratio, vectorized=False,
                              n_resamples=N_RESAMPLES, confidence_level=CONFIDENCE, method="percentile", rng=seed)
        low, high = map(float, res.confidence_interval)
    return Estimate(value, low, high, p=p if math.isfinite(p) else None, n=n)


def _mean_diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(y, axis=axis) - np.mean(x, axis=axis)


def compare_values(a: ArrayLike, b: ArrayLike, seed: int = 0) -> Estimate:
    """mean(b) - mean(a) with a bootstrap 95% interval and a two-sided permutation test. NaNs are dropped.

    With one run in a group there is nothing to resample or permute (scipy wants two per group): interval nan,
    p None. When every resample gives the same difference (both groups constant) the interval is that difference.
    """
    x = np.asarray(a, dtype=float).ravel()
    y = np.asarray(b, dtype=float).ravel()
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    n = int(x.size + y.size)
    if x.size == 0 or y.size == 0:
        return Estimate(nan, nan, nan, n=n)
    value = float(_mean_diff(x, y))
    if x.size < 2 or y.size < 2:
        return Estimate(value, nan, nan, n=n)
    p = float(stats.permutation_test((x, y), _mean_diff, permutation_type="independent", vectorized=True,
                                     alternative="two-sided", rng=seed).pvalue)
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        low = high = value
    else:
        low, high = _bootstrap_ci((x, y), _mean_diff, seed)
    return Estimate(value, low, high, p=min(p, 1.0), n=n)


def compare_fractions(k_a: int, n_a: int, k_b: int, n_b: int) -> Estimate:
    """k_b/n_b - k_a/n_a with Newcombe's hybrid score interval and Fisher's exact test (two-sided).

    Newcombe (1998, Stat. Med. 17:873, method 10) combines the two Wilson intervals (l_a, u_a), (l_b, u_b):
        low  = d - sqrt((p_b - l_b)^2 + (u_a - p_a)^2)
        high = d + sqrt((u_b - p_b)^2 + (p_a - l_a)^2)
    It stays inside [-1, 1] and keeps close to nominal coverage at 0/n and n/n, where the Wald interval fails.
    """
    n = int(n_a + n_b)
    fa, fb = fraction(k_a, n_a), fraction(k_b, n_b)
    if n_a <= 0 or n_b <= 0:
        return Estimate(nan, nan, nan, n=n)
    d = fb.value - fa.value
    low = d - math.sqrt((fb.value - fb.low) ** 2 + (fa.high - fa.value) ** 2)
    high = d + math.sqrt((fb.high - fb.value) ** 2 + (fa.value - fa.low) ** 2)
    p = float(stats.fisher_exact([[k_a, n_a - k_a], [k_b, n_b - k_b]], alternative="two-sided").pvalue)
    return Estimate(d, low, high, p=min(p, 1.0), n=n)


# ---------------------------------------------------------------------------------------------------------------
# Along an ordered axis: rank trend, power-law scaling


def gehan_scores(time: ArrayLike, observed: ArrayLike) -> np.ndarray:
    """For each run, #runs known to grok before it minus #runs known to grok after it (larger = later).

    Run j is known to grok after run i when i grokked at t_i and j either grokked later or was censored at
    or after t_i (a run still waiting at t_i grokked after it, if ever). Two censored runs are never ordered.
    Without censoring this is 2·rank - n - 1 (mid-ranks), so correlating it with rank(x) is Spearman's rho.
    """
    t, o = _runs(time, observed)
    after = o[:, None] & ((t[None, :] > t[:, None]) | ((t[None, :] == t[:, None]) & ~o[None, :]))  # [i, j]: j after i
    return (after.sum(axis=0) - after.sum(axis=1)).astype(float)


def _corr(u: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pearson correlation along axis; v is 1-d and broadcast against u."""
    u = u - u.mean(axis=axis, keepdims=True)
    v = v - v.mean()
    return np.sum(u * v, axis=axis) / np.sqrt(np.sum(u * u, axis=axis) * np.sum(v * v))


def trend(x: ArrayLike, time: ArrayLike, observed: ArrayLike | None = None, seed: int = 0) -> Estimate:
    """Rank correlation between an ordered axis x and time; positive means larger x -> later grokking.

    With observed=None, `time` is any value and this is Spearman's rho. With censoring, times are replaced by
    their Gehan scores (see `gehan_scores`), a censoring-aware Spearman: when every censored run shares one
    budget above every observed time it equals Spearman's rho with censored runs placed at that budget.
    p: permutation test over x (exact when n! <= 9999); interval: percentile bootstrap over runs (pairs).
    When x or the times do not vary there is no trend to see: value 0, p 1, interval nan.
    """
    xv = np.asarray(x, dtype=float).ravel()
    tv = np.asarray(time, dtype=float).ravel()
    ov = np.ones(tv.shape, dtype=bool) if observed is None else np.asarray(observed, dtype=bool).ravel()
    if not (xv.shape == tv.shape == ov.shape):
        raise ValueError("x, time and observed differ in length")
    keep = ~(np.isnan(xv) | np.isnan(tv))
    xv, tv, ov = xv[keep], tv[keep], ov[keep]
    n = int(xv.size)

    def score(idx: np.ndarray) -> np.ndarray:
        return stats.rankdata(tv[idx]) if observed is None else gehan_scores(tv[idx], ov[idx])

    every = np.arange(n)
    if n < 2 or np.ptp(xv) == 0 or np.ptp(score(every)) == 0:
        return Estimate(0.0, nan, nan, p=1.0, n=n)
    s = score(every)
    value = float(stats.spearmanr(xv, tv).statistic) if observed is None else float(_corr(stats.rankdata(xv), s))
    p = float(stats.permutation_test((stats.rankdata(xv),), lambda r, axis: _corr(r, s, axis),
                                     permutation_type="pairings", vectorized=True, alternative="two-sided",
                                     rng=seed).pvalue)

    def resampled(idx: np.ndarray) -> float:
        idx = idx.astype(int)
        rx, si = stats.rankdata(xv[idx]), score(idx)
        # a resample where x or the times do not vary carries no trend: count it as 0 rather than drop it
        return 0.0 if np.ptp(rx) == 0 or np.ptp(si) == 0 else float(_corr(rx, si))

    res = stats.bootstrap((every,), resampled, vectorized=False, n_resamples=N_RESAMPLES,
                          confidence_level=CONFIDENCE, method="percentile", rng=seed)
    low, high = map(float, res.confidence_interval)
    return Estimate(value, low, high, p=min(p, 1.0), n=n)


def scaling(x: ArrayLike, time: ArrayLike, observed: ArrayLike,
            cell: ArrayLike | Sequence[Hashable]) -> tuple[Estimate, pd.DataFrame]:
    """Power-law fit time ∝ x^a, censoring-aware: log(KM median per cell) against log x, by least squares.

    Each cell (runs sharing a `cell` label; x must be constant within a cell) contributes its KM median time,
    so censored runs count without being given a time. Cells with an infinite median (half or more never
    grokked) or x <= 0 cannot be placed on log axes and are left out. Returns the slope a with its 95%
    t-interval and linregress's p (n = runs in fitted cells), and a table with one row per cell: cell, x,
    median, low, high, fitted; table.attrs["intercept"] is the fit's intercept on natural-log axes.
    Fewer than 3 usable cells: slope nan, nothing fitted, the table still comes back.
    """
    xv = np.asarray(x, dtype=float).ravel()
    t = np.asarray(time, dtype=float).ravel()
    o = np.asarray(observed, dtype=bool).ravel()
    labels = list(cell.ravel()) if isinstance(cell, np.ndarray) else list(cell)  # labels may be tuples
    if not (xv.size == t.size == o.size == len(labels)):
        raise ValueError("x, time, observed and cell differ in length")
    members: dict = {}
    for i, c in enumerate(labels):
        if not np.isnan(t[i]):  # a run without a time says nothing about its cell
            members.setdefault(c, []).append(i)
    rows = []
    for c, idx in members.items():
        xs = xv[idx]
        if not np.allclose(xs, xs[0], equal_nan=True):
            raise ValueError(f"x varies within cell {c!r}: {sorted(set(xs.tolist()))}")
        m = median_time(t[idx], o[idx])
        rows.append({"cell": c, "x": float(xs[0]), "median": m.value, "low": m.low, "high": m.high,
                     "fitted": False, "runs": len(idx)})
    table = pd.DataFrame(rows, columns=["cell", "x", "median", "low", "high", "fitted", "runs"])
    table = table.astype({"x": float, "median": float, "low": float, "high": float, "fitted": bool, "runs": int})
    table = table.sort_values("x", kind="stable").reset_index(drop=True)
    xs, med = table["x"].to_numpy(), table["median"].to_numpy()
    usable = np.isfinite(med) & (med > 0) & np.isfinite(xs) & (xs > 0)
    est, intercept = Estimate(nan, nan, nan, n=0), nan
    if usable.sum() >= 3 and np.unique(xs[usable]).size >= 2:
        fit = stats.linregress(np.log(xs[usable]), np.log(med[usable]))
        half = float(fit.stderr) * float(stats.t.ppf(0.5 + CONFIDENCE / 2, int(usable.sum()) - 2))
        est = Estimate(float(fit.slope), float(fit.slope) - half, float(fit.slope) + half, p=float(fit.pvalue),
                       n=int(table["runs"].to_numpy()[usable].sum()))
        intercept = float(fit.intercept)
        table["fitted"] = usable
    table = table.drop(columns="runs")
    table.attrs["intercept"] = intercept
    return est, table


# ---------------------------------------------------------------------------------------------------------------
# Many tests, and how many seeds would settle one


def holm(p: ArrayLike) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values in the input order; None/nan stay nan and do not count in m."""
    p = np.asarray(p, dtype=float).ravel()
    out = np.full(p.shape, nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    order = ok[np.argsort(p[ok], kind="stable")]
    # the i-th smallest p is multiplied by the number of hypotheses still standing; the running max keeps the
    # adjusted values in the same order as the raw ones (a later rejection never needs less evidence)
    adjusted = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out[order] = np.minimum(adjusted, 1.0)
    return out


def seeds_needed(est: Estimate, seeds: int, alpha: float = 0.05, power: float = 0.8, margin: float = 0.0) -> int | None:
    """Seeds per condition a decisive answer would need if the observed effect is the true one.

    The standard error is read off the interval, SE = (high - low) / (2 z_{0.975}), and taken to shrink as
    1/sqrt(seeds). Directional claim (margin == 0), a two-sided test of value = 0:
        n = seeds · ((z_{1-α/2} + z_power) · SE / |value|)^2
    Equivalence claim (margin > 0, |value| < margin), two one-sided tests at level α each (TOST):
        n = seeds · ((z_{1-α} + z_power) · SE / (margin - |value|))^2
    None when it cannot be computed: SE zero or not finite, value 0 (directional), |value| >= margin (equivalence).
    Never less than `seeds`: the answer is how many to have, not how many could have sufficed.
    """
    v, low, high = est.value, est.low, est.high
    if not (_finite(v) and _finite(low) and _finite(high)):
        return None
    se = (high - low) / (2 * _z(0.5 + CONFIDENCE / 2))
    if se <= 0:
        return None
    if margin > 0:
        if abs(v) >= margin:
            return None
        ratio = (_z(1 - alpha) + _z(power)) * se / (margin - abs(v))
    else:
        if v == 0:
            return None
        ratio = (_z(1 - alpha / 2) + _z(power)) * se / abs(v)
    return max(int(seeds), math.ceil(seeds * ratio**2))
