"""Sharpness (top Hessian eigenvalue, Hutchinson trace) and per-run gradient noise scale against known answers:
quadratic losses with a known Hessian, a small MLP against its dense Hessian, and linear regression whose
per-example gradient covariance is known in closed form."""

from __future__ import annotations

import math

import torch

from groklab.measures import noise, sharpness

DT = torch.float64


def _gens(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def _spd(p: int, eigs: torch.Tensor, seed: int) -> torch.Tensor:
    """A random SPD matrix with eigenvalues `eigs`: Q diag(eigs) Qᵀ, Q a random orthogonal matrix."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=DT))
    return q @ torch.diag(eigs) @ q.T


def _quadratic(a: torch.Tensor, b: torch.Tensor):
    """loss_r(w) = ½ wᵀ A_r w + b_rᵀ w, batched over runs: Hessian A_r. Elementwise, not bmm: on a loaded machine
    with 2 threads each tiny bmm costs milliseconds of thread wake-up, and the trace test does thousands."""
    return lambda w: (w * (0.5 * (a * w[:, None, :]).sum(-1) + b)).sum(1)


P, R = 20, 3


def _problem():
    """Three runs with different SPD Hessians, distinct eigenvalues, top one well separated (ratio ≤ 0.5)."""
    tops = [3.0, 5.0, 2.0]
    mats = [_spd(P, torch.cat([torch.linspace(0.1, t / 2, P - 1, dtype=DT), torch.tensor([t], dtype=DT)]), 10 + r)
            for r, t in enumerate(tops)]
    a = torch.stack(mats)
    g = torch.Generator().manual_seed(0)
    b = torch.randn(R, P, generator=g, dtype=DT)
    w = torch.randn(R, P, generator=g, dtype=DT)
    return a, b, w, torch.tensor(tops, dtype=DT)


def test_hvp_is_hessian_times_vector():
    a, b, w, _ = _problem()
    v = torch.randn(R, P, dtype=DT)
    assert torch.allclose(sharpness.hvp(_quadratic(a, b), w, v), torch.einsum("rpq,rq->rp", a, v), rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # evaluation code measures under no_grad; the measures turn gradients back on
        assert torch.allclose(sharpness.hvp(_quadratic(a, b), w, v), torch.einsum("rpq,rq->rp", a, v), rtol=1e-12)
        lam, _ = sharpness.top_eigenvalue(_quadratic(a, b), w, _gens([1, 2, 3]))
        assert lam.shape == (R,) and bool((lam > 0).all())


def test_top_eigenvalue_of_quadratic():
    a, b, w, tops = _problem()
    lam, iters = sharpness.top_eigenvalue(_quadratic(a, b), w, _gens([1, 2, 3]), max_iters=100)
    assert torch.allclose(lam, tops, rtol=1e-3, atol=0)
    assert (iters < 100).all() and (iters > 1).all()
    # a tight tolerance goes on to the exact value
    lam, _ = sharpness.top_eigenvalue(_quadratic(a, b), w, _gens([1, 2, 3]), max_iters=500, tol=1e-12)
    assert torch.allclose(lam, tops, rtol=1e-9, atol=0)


def test_converged_runs_freeze():
    """A fast run (eigenvalue ratio 0.01) stops early while a slow one (0.95) goes on; each gets its own count."""
    fast = torch.diag(torch.tensor([10.0] + [0.1] * 9, dtype=DT))
    slow = torch.diag(torch.tensor([10.0, 9.5] + [1.0] * 8, dtype=DT))
    a, b, w = torch.stack([fast, slow]), torch.zeros(2, 10, dtype=DT), torch.zeros(2, 10, dtype=DT)
    lam, iters = sharpness.top_eigenvalue(_quadratic(a, b), w, _gens([4, 5]), max_iters=60)
    assert iters[0] < iters[1]
    solo, solo_iters = sharpness.top_eigenvalue(_quadratic(a[:1], b[:1]), w[:1], _gens([4]), max_iters=60)
    assert lam[0] == solo[0] and iters[0] == solo_iters[0]


def test_zero_hessian_is_zero():
    loss = lambda w: (w * torch.arange(1.0, 5.0, dtype=DT)).sum(1)  # linear: H = 0
    lam, iters = sharpness.top_eigenvalue(loss, torch.ones(2, 4, dtype=DT), _gens([0, 1]))
    assert (lam == 0).all() and (iters == 2).all()
    assert (sharpness.hessian_trace(loss, torch.ones(2, 4, dtype=DT), _gens([0, 1]), samples=3) == 0).all()


def test_hessian_trace_of_quadratic_within_its_sampling_error():
    a, b, w, _ = _problem()
    samples = 2000
    est = sharpness.hessian_trace(_quadratic(a, b), w, _gens([7, 8, 9]), samples=samples)
    true = torch.diagonal(a, dim1=1, dim2=2).sum(1)
    off = a - torch.diag_embed(torch.diagonal(a, dim1=1, dim2=2))
    se = (2 * off.pow(2).sum((1, 2)) / samples).sqrt()  # exact Hutchinson variance with Rademacher vectors
    assert ((est - true).abs() < 3 * se).all(), (est, true, se)


def test_hessian_trace_exact_for_diagonal():
    d = torch.rand(R, P, dtype=DT, generator=torch.Generator().manual_seed(3)) * 4 - 1
    est = sharpness.hessian_trace(_quadratic(torch.diag_embed(d), torch.zeros(R, P, dtype=DT)), torch.zeros(R, P, dtype=DT),
                                  _gens([0, 1, 2]), samples=3)
    assert torch.allclose(est, d.sum(1), rtol=1e-12, atol=1e-12)


def test_pack_equals_solo():
    a, b, w, _ = _problem()
    seeds = [11, 12, 13]
    lam, iters = sharpness.top_eigenvalue(_quadratic(a, b), w, _gens(seeds))
    tr = sharpness.hessian_trace(_quadratic(a, b), w, _gens(seeds), samples=5)
    for r in range(R):
        s = slice(r, r + 1)
        lam_r, iters_r = sharpness.top_eigenvalue(_quadratic(a[s], b[s]), w[s], _gens(seeds[s]))
        tr_r = sharpness.hessian_trace(_quadratic(a[s], b[s]), w[s], _gens(seeds[s]), samples=5)
        assert abs(float(lam[r] - lam_r[0])) <= 1e-6 * abs(float(lam_r[0])) and int(iters[r]) == int(iters_r[0])
        assert abs(float(tr[r] - tr_r[0])) <= 1e-6 * abs(float(tr_r[0]))


# A 2-layer tanh MLP 4 -> 7 -> 2 (P = 51) with a squared-error loss on random data, one run per row of flat.
D_IN, HID, D_OUT = 4, 7, 2
SHAPES = [(D_IN, HID), (HID,), (HID, D_OUT), (D_OUT,)]
P_MLP = sum(math.prod(s) for s in SHAPES)


def _mlp_loss(x: torch.Tensor, y: torch.Tensor):
    def loss(flat: torch.Tensor) -> torch.Tensor:
        parts, i = [], 0
        for s in SHAPES:
            n = math.prod(s)
            parts.append(flat[:, i : i + n].reshape(flat.shape[0], *s))
            i += n
        w1, b1, w2, b2 = parts
        h = torch.tanh(torch.einsum("nd,rdh->rnh", x, w1) + b1[:, None])
        out = torch.einsum("rnh,rho->rno", h, w2) + b2[:, None]
        return 0.5 * (out - y).pow(2).sum(-1).mean(-1)

    return loss


def test_top_eigenvalue_of_mlp_matches_dense_hessian():
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(32, D_IN, generator=g, dtype=DT), torch.randn(32, D_OUT, generator=g, dtype=DT)
    flat = torch.randn(2, P_MLP, generator=g, dtype=DT) * 0.7
    loss = _mlp_loss(x, y)
    lam, iters = sharpness.top_eigenvalue(loss, flat, _gens([0, 1]), max_iters=300, tol=1e-7)
    for r in range(2):
        h = torch.autograd.functional.hessian(lambda w: loss(w[None])[0], flat[r])
        eig = torch.linalg.eigvalsh(h)
        want = eig[eig.abs().argmax()]
        assert abs(float(lam[r] - want)) < 1e-3 * abs(float(want)), (r, lam[r], want, iters[r])
    tr = sharpness.hessian_trace(loss, flat, _gens([0, 1]), samples=1)  # runs, shapes and dtype
    assert tr.shape == (2,) and tr.dtype == DT


# Linear regression y = xᵀw* + ε, x ~ N(0, I_d), ε ~ N(0, σ²), per-example loss ½(xᵀw − y)². With u = w − w*:
# g = x(xᵀu − ε), G = E[g] = u, E|g|² = (d + 2)|u|² + dσ² (Isserlis), so tr(Σ) = (d + 1)|u|² + dσ².
D, SIGMA = 5, 0.5


def _per_example_grads(x: torch.Tensor, eps: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """g_i = x_i(x_iᵀu − ε_i) for x [..., n, d], eps [..., n], u broadcastable to [..., 1, d]."""
    return x * ((x * u).sum(-1) - eps)[..., None]


def test_linear_regression_noise_statistics_match_closed_form():
    """The closed form the noise-scale test relies on, against a 1e6-sample Monte Carlo."""
    g = torch.Generator().manual_seed(0)
    u = torch.tensor([1.0, -0.5, 0.3, 0.0, 0.2], dtype=DT)
    n = 1_000_000
    per = _per_example_grads(torch.randn(n, D, generator=g, dtype=DT), SIGMA * torch.randn(n, generator=g, dtype=DT), u)
    mean = per.mean(0)
    tr = (per - mean).pow(2).sum(1).mean()
    assert torch.allclose(mean, u, atol=0.01)
    true_tr = (D + 1) * u.pow(2).sum() + D * SIGMA**2
    assert abs(float(tr / true_tr) - 1) < 0.01


def test_noise_scale_recovers_tr_sigma_over_g2():
    g = torch.Generator().manual_seed(1)
    us = torch.stack([torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0], dtype=DT), torch.tensor([0.3, -0.3, 0.2, 0.1, 0.0], dtype=DT)])
    steps, b_small, b_big, runs = 2000, 32, 64, 2
    x = torch.randn(steps, runs, b_big, D, generator=g, dtype=DT)
    eps = SIGMA * torch.randn(steps, runs, b_big, generator=g, dtype=DT)
    per = _per_example_grads(x, eps, us[None, :, None, :])  # [steps, R, b_big, D]
    g_small, g_big = per[:, :, :b_small].mean(2), per.mean(2)
    g2, tr = noise.estimates(g_small.reshape(-1, D), g_big.reshape(-1, D), b_small, b_big)
    g2, tr = g2.reshape(steps, runs), tr.reshape(steps, runs)
    true_g2 = us.pow(2).sum(1)
    true_tr = (D + 1) * true_g2 + D * SIGMA**2
    # each estimate is unbiased: its mean is within 4 standard errors of the truth
    for est, true in ((g2, true_g2), (tr, true_tr)):
        se = est.std(0) / math.sqrt(steps)
        assert ((est.mean(0) - true).abs() < 4 * se).all(), (est.mean(0), true, se)
    # the ratio of the means, with its delta-method standard error se(mean(tr − ρ·g2))/mean(g2)
    rho = tr.mean(0) / g2.mean(0)
    se_rho = (tr - rho * g2).std(0) / math.sqrt(steps) / g2.mean(0)
    want = true_tr / true_g2
    assert ((rho - want).abs() < 4 * se_rho).all(), (rho, want, se_rho)
    assert (se_rho < 0.2 * want).all()  # the check has teeth: the error bar is well below the value


def test_noise_scale_ema_by_hand():
    g = torch.Generator().manual_seed(2)
    ns = noise.NoiseScale(runs=2, ema=0.8)
    assert ns.value.isnan().all()
    e_g2 = e_tr = None
    for _ in range(4):
        gs, gb = torch.randn(2, 6, generator=g), torch.randn(2, 6, generator=g) * 0.5 + 1
        ns.update(gs, gb, 8, 24)
        small, big = gs.double().pow(2).sum(1), gb.double().pow(2).sum(1)
        g2 = (24 * big - 8 * small) / 16
        tr = (small - big) / (1 / 8 - 1 / 24)
        e_g2 = g2 if e_g2 is None else 0.8 * e_g2 + 0.2 * g2
        e_tr = tr if e_tr is None else 0.8 * e_tr + 0.2 * tr
    assert (e_g2 > 0).all()
    assert torch.allclose(ns.value, e_tr / e_g2, rtol=1e-12)

    state = ns.state()
    other = noise.NoiseScale(runs=2)
    other.load(state)
    assert torch.equal(other.value, ns.value) and other.ema == 0.8 and other.updates == 4
    ns.select([1])
    assert ns.runs == 1 and torch.equal(ns.value, other.value[1:])
    # |G|² EMA ≤ 0 (big-batch gradient 0: only noise) gives inf
    z = noise.NoiseScale(runs=1)
    z.update(torch.ones(1, 3), torch.zeros(1, 3), 8, 16)
    assert z.value.isinf().all()


def test_halves_match_scalar_sampling_estimator():
    """Averaging the estimates of both halves (each a small batch) against the whole is sampling.NoiseScale's."""
    from groklab.sampling import NoiseScale as ScalarNoiseScale

    g = torch.Generator().manual_seed(3)
    packed = noise.NoiseScale(runs=1, ema=0.9)
    for _ in range(3):
        g_a, g_c = torch.randn(10, generator=g, dtype=DT), torch.randn(10, generator=g, dtype=DT)
        scalar = ScalarNoiseScale(0.9)  # fresh: its first update holds the step's own estimates
        scalar.update(g_a, g_c, 32)
        whole = (g_a + g_c) / 2
        ea, ec = noise.estimates(g_a[None], whole[None], 16, 32), noise.estimates(g_c[None], whole[None], 16, 32)
        assert math.isclose(float((ea[0] + ec[0]) / 2), float(scalar.g2), rel_tol=1e-12)
        assert math.isclose(float((ea[1] + ec[1]) / 2), float(scalar.trace), rel_tol=1e-12)
        packed.update(g_a[None], whole[None], 16, 32)
    assert math.isfinite(float(packed.value[0]))
