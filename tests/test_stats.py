"""groklab.analysis.stats against hand computations, published values, scipy and planted effects."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as sps

from groklab.analysis.stats import (
    CONFIDENCE,
    Estimate,
    bootstrap,
    compare_fractions,
    compare_times,
    compare_values,
    fraction,
    gehan_scores,
    holm,
    median_time,
    rmst,
    scaling,
    seeds_needed,
    survival,
    trend,
)

# Six runs; censored ones (observed 0) stopped at their budget without grokking.
T = [2, 3, 3, 5, 8, 8]
OBS = [1, 1, 0, 1, 0, 1]
Z = sps.norm.ppf(0.975)


def test_estimate_to_dict_is_json_safe():
    d = Estimate(1.0, -math.inf, math.nan, p=None, n=3).to_dict()
    assert d == {"value": 1.0, "low": None, "high": None, "p": None, "n": 3}
    json.dumps(d, allow_nan=False)


def test_survival_product_limit_by_hand():
    sv = survival(T, OBS)
    # t=2: 6 at risk, 1 groks; t=3: 5 at risk, 1 groks (the run censored at 3 still counts as at risk);
    # t=5: 3 at risk, 1 groks; t=8: 2 at risk, 1 groks, 1 censored.
    s = [1, 5 / 6, 5 / 6 * 4 / 5, 5 / 6 * 4 / 5 * 2 / 3, 5 / 6 * 4 / 5 * 2 / 3 * 1 / 2]
    assert sv["time"].tolist() == [0, 2, 3, 5, 8]
    np.testing.assert_allclose(sv["not_grokked"], s)
    # log-log band at t=2: Greenwood var(log S) = d/(n(n-d)) = 1/30; bounds S^exp(±z·sqrt(var)/|log S|)
    w = Z * math.sqrt(1 / 30) / abs(math.log(5 / 6))
    assert sv["low"][1] == pytest.approx((5 / 6) ** math.exp(w), rel=1e-9)
    assert sv["high"][1] == pytest.approx((5 / 6) ** math.exp(-w), rel=1e-9)
    assert (sv["low"] <= sv["not_grokked"]).all() and (sv["not_grokked"] <= sv["high"]).all()


def test_survival_ends_at_the_longest_budget_and_handles_no_grokking():
    sv = survival([2, 3, 10], [1, 0, 0])
    assert sv["time"].tolist() == [0, 2, 10]
    assert sv["not_grokked"].tolist() == pytest.approx([1, 2 / 3, 2 / 3])
    none = survival([5, 7, 7], [0, 0, 0])
    assert none.values.tolist() == [[0, 1, 1, 1], [7, 1, 1, 1]]
    # one run that grokked: the curve drops to 0; the upper band is undefined there and stays where it was
    one = survival([4], [1])
    assert one.values.tolist() == [[0, 1, 1, 1], [4, 0, 0, 1]]


def test_survival_rejects_infinite_times_and_drops_missing_ones():
    with pytest.raises(ValueError, match="censored at its budget"):
        survival([1, math.inf], [1, 0])
    assert survival([*T, math.nan], [*OBS, 1]).equals(survival(T, OBS))
    assert median_time([*T, math.nan], [*OBS, 0]).n == 6


def test_median_time():
    m = median_time(T, OBS)
    # S: 5/6, 2/3, 4/9 -> first <= 0.5 at t=5; lower band is 0.27 at t=2; upper band never reaches 0.5
    assert (m.value, m.low, m.high, m.n) == (5, 2, math.inf, 6)
    assert m.low <= m.value <= m.high
    assert median_time([10, 20, 100, 100, 100], [1, 1, 0, 0, 0]).value == math.inf  # 2 of 5 grokked
    # a bigger sample gets a finite interval around its median
    t = np.arange(1, 41) * 10.0
    m = median_time(t, np.ones(40, bool))
    assert m.value == 205 and 100 < m.low < 205 < m.high < 300  # an even sample: the middle of the 0.5 stretch
    # two seeds: one grokked is no median (the other may never grok); both grokked is their mean, not the minimum
    assert median_time([400, 1000], [1, 0]).value == math.inf
    assert median_time([400, 600], [1, 1]).value == 500


def test_rmst():
    # area under 1 on [0,2), 5/6 on [2,3), 2/3 on [3,5), 4/9 on [5,6)
    assert rmst(T, OBS, 6) == pytest.approx(2 + 5 / 6 + 2 * 2 / 3 + 4 / 9)
    assert rmst([5, 7], [0, 0], 6) == 6
    t = np.array([3.0, 9.0, 4.0, 12.0])
    assert rmst(t, np.ones(4, bool), 10) == pytest.approx(np.minimum(t, 10).mean())


def test_fraction_wilson():
    zero, all_, half = fraction(0, 10), fraction(10, 10), fraction(5, 10)
    assert (zero.value, zero.low) == (0, 0) and zero.high == pytest.approx(0.2775, abs=1e-4)  # textbook z²/(n+z²)
    assert all_.low == pytest.approx(0.7225, abs=1e-4) and all_.high == 1
    # Wilson: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    centre, half_width = (0.5 + Z**2 / 20) / (1 + Z**2 / 10), Z * math.sqrt(0.025 + Z**2 / 400) / (1 + Z**2 / 10)
    assert (half.low, half.high) == pytest.approx((centre - half_width, centre + half_width))
    assert half.n == 10 and math.isnan(fraction(0, 0).value)


def test_bootstrap_covers_the_true_mean():
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(200):
        est = bootstrap(rng.normal(3.0, 2.0, 20))
        hits += est.low <= 3.0 <= est.high
    assert 0.88 <= hits / 200 <= 0.99


def test_bootstrap_degenerate_and_nan():
    assert bootstrap([2.0, 2.0, 2.0]) == Estimate(2.0, 2.0, 2.0, n=3)
    assert bootstrap([1.0, math.nan]) == Estimate(1.0, 1.0, 1.0, n=1)
    assert math.isnan(bootstrap([]).value)
    e = bootstrap([1.0, 2.0, 3.0, 10.0, math.nan], np.median)
    assert e.value == 2.5 and e.n == 4 and e.low <= e.value <= e.high
    assert bootstrap([1.0, 2.0, 5.0], seed=3) == bootstrap([1.0, 2.0, 5.0], seed=3)


def test_compare_times_planted_effect():
    rng = np.random.default_rng(0)
    a = rng.uniform(800, 1200, 10)
    obs = np.ones(10, bool)
    e = compare_times((a, obs), (a / 2, obs))
    # every run grokked, so both curves reach 0 and RMST is the mean time: the ratio is exactly 1/2
    assert e.value == pytest.approx(math.log(0.5))
    assert e.low < e.value < e.high < 0 and e.p < 0.05 and e.n == 20


def test_compare_times_identical_samples():
    t, o = [100, 200, 300, 400, 1000, 1000], [1, 1, 1, 1, 0, 0]
    e = compare_times((t, o), (t, o))
    assert e.value == 0 and e.p == pytest.approx(1.0) and e.low <= 0 <= e.high
    assert compare_times((t, o), (t, o), seed=5) == compare_times((t, o), (t, o), seed=5)


def test_compare_times_censoring():
    # a: half the runs never grokked within the budget of 1000; b: all grokked early
    ta, oa = np.array([200, 300, 400, 500, 600, 1000, 1000, 1000, 1000, 1000.0]), np.arange(10) < 5
    tb, ob = np.array([100, 120, 150, 160, 180, 200, 220, 250, 260, 300.0]), np.ones(10, bool)
    e = compare_times((ta, oa), (tb, ob))
    # horizon = a's budget (b's curve is known to be 0 beyond 300); with censoring only at the horizon,
    # RMST is the mean of the times with never-grokked runs counted at the budget
    assert e.value == pytest.approx(math.log(tb.mean() / ta.mean()))
    assert e.high < 0 and e.p < 0.01
    # dropping the censored runs instead would have flattered a
    assert e.value < compare_times((ta[oa], oa[oa]), (tb, ob)).value
    nothing = compare_times(([5, 5], [0, 0]), ([5, 9], [0, 0]))
    assert (nothing.value, nothing.p) == (0, 1.0)


def test_compare_values():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 20), rng.normal(1.5, 1, 20)
    e = compare_values(a, b)
    assert e.value == pytest.approx(b.mean() - a.mean()) and e.low < 1.5 < e.high and e.p < 0.001 and e.n == 40
    null = compare_values(a, rng.permutation(a))  # same values, so no difference at all
    assert null.value == pytest.approx(0, abs=1e-12) and null.p > 0.9 and null.low < 0 < null.high
    assert compare_values([1, 1, 1], [1, 1, math.nan]) == Estimate(0.0, 0.0, 0.0, p=1.0, n=5)
    one = compare_values([1.0], [2.0])
    assert one.value == 1 and math.isnan(one.low) and one.p is None
    assert compare_values([1, 1, 1], [2, 2, 2]).p == pytest.approx(0.1)  # exact: 2 of the C(6,3) = 20 splits


def test_compare_fractions_newcombe_published_example():
    # Newcombe (1998), Stat. Med. 17:873, Table II, example (a) 56/70 - 48/80, method 10: 0.0524 to 0.3339
    e = compare_fractions(48, 80, 56, 70)
    assert e.value == pytest.approx(0.2)
    assert (round(e.low, 4), round(e.high, 4)) == (0.0524, 0.3339)
    assert e.p == pytest.approx(sps.fisher_exact([[48, 32], [56, 14]]).pvalue)
    # example (h) 10/10 - 0/10: 0.6075 to 1.0000
    h = compare_fractions(0, 10, 10, 10)
    assert (round(h.low, 4), round(h.high, 4)) == (0.6075, 1.0) and h.p < 0.001
    null = compare_fractions(5, 10, 5, 10)
    assert null.value == 0 and null.p == 1.0 and null.low < 0 < null.high
    assert math.isnan(compare_fractions(0, 0, 1, 2).value)


def test_gehan_scores_by_hand():
    # t=1 groks before everyone; t=2 groks before the run censored at 2 and the one censored at 3;
    # the two censored runs are not ordered between themselves
    assert gehan_scores([1, 2, 2, 3], [1, 1, 0, 0]).tolist() == [-3, -1, 2, 2]


def test_trend():
    x = np.arange(6.0)
    assert trend(x, x**2).value == pytest.approx(1) and trend(x, -x).value == pytest.approx(-1)
    assert trend(x, x**2).p == pytest.approx(2 / math.factorial(6))  # exact: 6! orders of x, two-sided
    flat = trend(np.ones(5), np.arange(5.0))
    assert (flat.value, flat.p) == (0, 1)
    assert trend(x, np.ones(6), np.zeros(6, bool)).value == 0  # nothing grokked: no trend to see


def test_trend_with_a_common_budget_is_spearman_at_the_budget():
    rng = np.random.default_rng(3)
    x = np.repeat([1.0, 2, 4, 8, 16], 4)
    t = rng.integers(100, 900, 20).astype(float)
    t[[1, 2]] = t[3]  # a tie among grokked runs
    observed = rng.random(20) < 0.6
    t[~observed] = 1000.0
    e = trend(x, t, observed)
    assert e.value == pytest.approx(sps.spearmanr(x, t).statistic)
    assert trend(x, t).value == pytest.approx(e.value)  # observed=None is plain Spearman


def test_trend_planted_decrease():
    rng = np.random.default_rng(4)
    x = np.repeat([1.0, 2, 3, 4, 5], 4)
    t = 1000 / x * np.exp(rng.normal(0, 0.3, 20))
    observed = t < 600
    t = np.minimum(t, 600)  # slow runs hit the budget
    e = trend(x, t, observed)
    assert e.value < -0.5 and e.high < 0 and e.p < 0.05 and e.n == 20


def test_scaling_recovers_a_power_law():
    rng = np.random.default_rng(5)
    x = np.repeat([1.0, 2, 4, 8, 16, 32], 4)
    t = 1000 / x * np.exp(rng.normal(0, 0.05, 24))
    observed = np.ones(24, bool)
    observed[20:23] = False  # the x=32 cell: 3 of 4 runs never grokked within their budget
    t[20:23] = 2000.0
    cell = [f"c{v:g}" for v in x]
    est, table = scaling(x, t, observed, cell)
    assert est.value == pytest.approx(-1, abs=0.05) and est.low < -1 < est.high and est.n == 20
    assert est.p < 1e-3
    assert table.columns.tolist() == ["cell", "x", "median", "low", "high", "fitted"]
    assert table["fitted"].tolist() == [True] * 5 + [False] and table["median"].iloc[-1] == math.inf
    assert math.exp(table.attrs["intercept"]) == pytest.approx(1000, rel=0.1)
    few, table2 = scaling(x[:8], t[:8], observed[:8], cell[:8])
    assert math.isnan(few.value) and len(table2) == 2 and not table2["fitted"].any()
    with pytest.raises(ValueError, match="x varies"):
        scaling([1, 2], [1, 1], [1, 1], ["a", "a"])


def test_holm_by_hand():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> running max 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.01, None, 0.04, math.nan]), [0.02, math.nan, 0.04, math.nan])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])
    assert holm([]).size == 0


def test_seeds_needed():
    def est(v: float) -> Estimate:
        return Estimate(v, v - 1, v + 1)  # SE = 1/z

    # directional: 10 · ((z_.975 + z_.8)/z / 1)²
    assert seeds_needed(est(1.0), 10) == math.ceil(10 * ((Z + sps.norm.ppf(0.8)) / Z) ** 2)
    directional = [seeds_needed(est(v), 10) for v in (2.0, 1.0, 0.5, 0.25)]
    assert directional == sorted(directional) and directional[0] < directional[-1]
    assert seeds_needed(est(50.0), 10) == 10  # already decisive: never fewer than we have
    equivalence = [seeds_needed(est(0.1), 10, margin=m) for m in (3.0, 2.0, 1.0, 0.5)]
    assert equivalence == sorted(equivalence) and equivalence[0] < equivalence[-1]
    assert seeds_needed(est(0.0), 10) is None
    assert seeds_needed(est(0.5), 10, margin=0.5) is None
    assert seeds_needed(Estimate(1.0, 1.0, 1.0), 10) is None
    assert seeds_needed(Estimate(1.0, math.nan, math.nan), 10) is None
    assert seeds_needed(Estimate(1.0, 0.0, math.inf), 10) is None
    assert CONFIDENCE == 0.95


@given(st.lists(st.tuples(st.integers(1, 30), st.booleans()), min_size=1, max_size=15))
def test_survival_properties(runs):
    t, o = zip(*runs)
    sv = survival(t, o)
    s = sv["not_grokked"].to_numpy()
    assert sv.iloc[0].tolist() == [0, 1, 1, 1] and sv["time"].iloc[-1] == max(t)
    assert (np.diff(sv["time"]) > 0).all() and (np.diff(s) <= 1e-12).all()
    assert ((0 <= sv["low"]) & (sv["low"] <= s + 1e-12) & (s <= sv["high"] + 1e-12) & (sv["high"] <= 1)).all()
    m = median_time(t, o)
    assert m.low <= m.value <= m.high
    tau = max(t)
    assert 0 < rmst(t, o, tau) <= tau


@given(st.lists(st.one_of(st.floats(0, 1), st.none()), max_size=12))
def test_holm_properties(p):
    adj = holm(p)
    raw = np.array(p, dtype=float)
    assert (np.isnan(adj) == np.isnan(raw)).all()
    ok = ~np.isnan(raw)
    assert (adj[ok] >= raw[ok]).all() and (adj[ok] <= 1).all()
    r, a = raw[ok], adj[ok]
    assert all(a[i] <= a[j] for i in range(len(r)) for j in range(len(r)) if r[i] < r[j])
