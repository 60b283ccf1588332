"""Sharpness of the training loss: the top eigenvalue and the trace of each run's Hessian (docs/measures.md §7).

Definition. For run r with parameters θ_r and loss L_r, the Hessian is H_r = ∇²L_r(θ_r) [P, P]. Its top
eigenvalue λ_max is the curvature along the steepest direction: "sharpness" in the sense of the edge-of-stability
literature (gradient descent with step η is stable near a minimum only while λ_max < 2/η), and tr(H_r) = Σ λ_i
is the total curvature over all directions (a flat minimum has a small trace). Neither is ever formed as a
matrix: both come from Hessian-vector products H_r v by double backprop, which cost about two backward passes.

A pack's parameters are one flat tensor [R, P] and runs never interact, so the Hessian of Σ_r L_r is
block-diagonal across runs: one double backprop of Σ_r L_r with a stacked vector v [R, P] yields every run's
H_r v_r at once, row r depending on run r only. Every random vector for run r is drawn from run r's own
generator, so a run's sharpness does not depend on which runs share its pack.

Top eigenvalue by power iteration (as PyHessian): v ← Hv/‖Hv‖, λ = v·Hv (the Rayleigh quotient). Power
iteration converges to the eigenvalue of largest MAGNITUDE. Near a minimum the Hessian is (nearly) positive
semi-definite, so that is the top eigenvalue; early in training or on a saddle it can be a negative one, and the
sign is kept so that this is visible. When the two largest magnitudes are close (or equal with opposite signs)
convergence is slow: the iteration count reported beside λ says whether a run stopped at max_iters.

Trace by Hutchinson's estimator: tr(H) = E[vᵀHv] for v with independent Rademacher (±1) entries; its variance is
2·Σ_{i≠j} H_ij², so it is exact for a diagonal Hessian and noisy where off-diagonal curvature dominates.

Sharpness scales with the weights and is not invariant under reparametrisation (Dinh et al., 2017): multiplying
one layer of a ReLU net by c and the next by 1/c leaves the function and the loss unchanged but multiplies the
curvature along the first layer by 1/c² and along the second by c²; behind a normalisation layer the loss is
scale-invariant in the weights and the curvature falls as 1/‖θ‖². Weight decay changes ‖θ‖ by large factors
during grokking, so a sharpness figure means little without the weight norm at the same step: reports show it
beside ‖θ‖ (measures.norms).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LossFn = Callable[[torch.Tensor], torch.Tensor]
"""flat parameters [R, P] (requiring grad) -> per-run loss [R]; must be twice differentiable in its argument."""


def _gradient(loss_fn: LossFn, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A fresh leaf copy x of `flat` and the per-run gradients g = ∂(Σ_r L_r)/∂x [R, P] with their graph kept,
    so each Hessian-vector product afterwards costs one backward pass through g, not a new forward."""
    x = flat.detach().requires_grad_(True)
    with torch.enable_grad():  # callers measure under no_grad; the gradient graph is needed here regardless
        loss = loss_fn(x)
        if loss.shape != (flat.shape[0],):
            raise ValueError(f"loss_fn must return one loss per run, shape ({flat.shape[0]},), got {tuple(loss.shape)}")
        (g,) = torch.autograd.grad(loss.sum(), x, create_graph=True)
    return x, g


def _hv(x: torch.Tensor, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """H v [R, P] for every run from the kept gradient graph: ∂(Σ g·v)/∂x. Row r is H_r v_r because g_r
    depends on x_r only. The graph is retained for the next product."""
    if not g.requires_grad:  # the loss is (at most) linear in the parameters: the Hessian is zero
        return torch.zeros_like(x)
    with torch.enable_grad():
        (hv,) = torch.autograd.grad((g * v).sum(), x, retain_graph=True, allow_unused=True)
    return torch.zeros_like(x) if hv is None else hv.detach()


def hvp(loss_fn: LossFn, flat: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Hessian-vector products H_r v_r [R, P] of every run, from one double backprop of Σ_r L_r."""
    x, g = _gradient(loss_fn, flat)
    return _hv(x, g, v.to(device=flat.device, dtype=flat.dtype))


def _draw(generators: list[torch.Generator], n: int, like: torch.Tensor, rademacher: bool) -> torch.Tensor:
    """One random vector [R, n] per run, row r drawn from generators[r] alone (on the generator's device, then
    moved to `like`'s), so a run's vectors do not depend on its pack."""
    rows = []
    for gen in generators:
        if rademacher:
            row = torch.randint(0, 2, (n,), generator=gen, device=gen.device).to(like.dtype) * 2 - 1
        else:
            row = torch.randn(n, generator=gen, device=gen.device, dtype=like.dtype)
        rows.append(row)
    return torch.stack(rows).to(like.device)


def _check(flat: torch.Tensor, generators: list[torch.Generator]) -> None:
    if flat.dim() != 2:
        raise ValueError(f"flat must be [R, P], got shape {tuple(flat.shape)}")
    if len(generators) != flat.shape[0]:
        raise ValueError(f"one generator per run: {flat.shape[0]} runs, {len(generators)} generators")


def top_eigenvalue(loss_fn: LossFn, flat: torch.Tensor, generators: list[torch.Generator], max_iters: int = 20,
                   tol: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Per run, the Hessian eigenvalue of largest magnitude [R] (the top one near a minimum; see the module
    docstring) by power iteration, and the iterations each run used [R] (int64; == max_iters where a run did
    not converge).

    Run r starts from a Gaussian vector drawn from generators[r] and stops once the relative change of its
    Rayleigh quotient is at most `tol` (|λ_new − λ_old| ≤ tol·|λ_new|). All runs go on sharing the batched
    product until every run has stopped, but a stopped run's λ and count are frozen. The gradient graph is
    built once and reused by every iteration.

    `tol` bounds the last step, not the error: with r = |λ_2/λ_1| the remaining error is about tol·r²/(1 − r²),
    so a small gap leaves λ low by several tol (a tanh MLP with r ≈ 0.82: 0.2 % low at tol 1e-3; r ≈ 0.93 hit 20
    iterations 2.7 % low). For a positive top eigenvalue the estimate approaches from below."""
    _check(flat, generators)
    x, g = _gradient(loss_fn, flat)
    v = _draw(generators, flat.shape[1], flat.detach(), rademacher=False)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    lam = torch.zeros(flat.shape[0], dtype=flat.dtype, device=flat.device)
    iters = torch.zeros(flat.shape[0], dtype=torch.int64, device=flat.device)
    active = torch.ones(flat.shape[0], dtype=torch.bool, device=flat.device)
    for it in range(1, max_iters + 1):
        hv = _hv(x, g, v)
        new = (v * hv).sum(1)
        # `<=` so that a run with a zero Hessian (λ = 0 twice) counts as converged
        done = active & ((new - lam).abs() <= tol * new.abs()) if it > 1 else torch.zeros_like(active)
        lam = torch.where(active, new, lam)
        iters = torch.where(active, torch.full_like(iters, it), iters)
        active = active & ~done
        if not bool(active.any()):
            break
        norm = hv.norm(dim=1, keepdim=True)
        # a run whose Hv vanished keeps its vector (its λ is 0 and it converges next iteration)
        v = torch.where(norm > 0, hv / norm.clamp_min(torch.finfo(hv.dtype).tiny), v)
    return lam, iters


def hessian_trace(loss_fn: LossFn, flat: torch.Tensor, generators: list[torch.Generator], samples: int = 10
                  ) -> torch.Tensor:
    """Per run, Hutchinson's estimate of tr(H_r) [R]: the mean of vᵀH_r v over `samples` Rademacher vectors drawn
    from generators[r]. Unbiased; standard error sqrt(2·Σ_{i≠j} H_ij² / samples). The gradient graph is built once."""
    _check(flat, generators)
    if samples < 1:
        raise ValueError("samples must be at least 1")
    x, g = _gradient(loss_fn, flat)
    total = torch.zeros(flat.shape[0], dtype=flat.dtype, device=flat.device)
    for _ in range(samples):
        v = _draw(generators, flat.shape[1], flat.detach(), rademacher=True)
        total = total + (v * _hv(x, g, v)).sum(1)
    return total / samples
