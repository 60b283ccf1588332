"""Per-run simple gradient noise scale B_simple = tr(Σ)/|G|² (McCandlish et al., 2018, arXiv 1812.06162;
docs/measures.md §7).

G is a run's true (full-data) gradient and Σ the covariance of its per-example gradients. A minibatch of B
examples gives a mean gradient G_B with E|G_B|² = |G|² + tr(Σ)/B, so the norms at two batch sizes b_small < b_big
give unbiased estimates of both terms:

    |G|²  ≈ (b_big·|G_big|² − b_small·|G_small|²)/(b_big − b_small)
    tr(Σ) ≈ (|G_small|² − |G_big|²)/(1/b_small − 1/b_big)

B_simple is the batch size at which gradient noise and signal are about equal: above it, a bigger batch buys
little per step (the critical batch size B_crit ≈ B_simple empirically). In grokking it is logged per run through
memorisation and plateau, where |G| → small and B_simple should blow up.

Each single-step estimate is very noisy (the |G|² estimate is often negative), and the ratio of two unbiased
estimates is biased, so, as McCandlish et al. do, the numerator and the denominator are smoothed separately by
exponential moving averages and only then divided (`NoiseScale`).

Two gradients from one batch (as the scalar estimator `groklab.sampling.NoiseScale` does): with a batch of b
examples split into halves a and c, and per-half mean-loss gradients g_a, g_c, the small batch is a half
(b_small = b/2, g_small = g_a) and the big batch is the whole (b_big = b, g_big = (g_a + g_c)/2, the whole
batch's mean-loss gradient), which costs one forward/backward per half and no extra examples. Both halves are
small batches of the same size: averaging `estimates(g_a, g_big, ...)` and `estimates(g_c, g_big, ...)` (the
estimates are linear in |g_small|²) is exactly sampling.NoiseScale's per-step estimate and has lower variance
than using one half. The estimates are per row, so a pack's [R, P] gradients give every run's at once, and a
run's value does not depend on its pack.
"""

from __future__ import annotations

import torch


def _sq_norm(g: torch.Tensor) -> torch.Tensor:
    """|g|² per run, accumulated in float64: the tr(Σ) estimate is a difference of two nearly equal squared norms."""
    return torch.linalg.vector_norm(g, dim=-1, dtype=torch.float64).pow(2)


def estimates(g_small: torch.Tensor, g_big: torch.Tensor, b_small: int, b_big: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-run unbiased single-step estimates (|G|² [R], tr(Σ) [R]), float64, from the flat mean-loss gradients
    [R, P] of a batch of b_small examples and one of b_big examples (see the module docstring)."""
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < b_small < b_big, got {b_small}, {b_big}")
    if g_small.shape != g_big.shape:
        raise ValueError(f"gradient shapes differ: {tuple(g_small.shape)} vs {tuple(g_big.shape)}")
    small, big = _sq_norm(g_small), _sq_norm(g_big)
    g2 = (b_big * big - b_small * small) / (b_big - b_small)
    trace = (small - big) / (1 / b_small - 1 / b_big)
    return g2, trace


class NoiseScale:
    """Per-run EMAs of the |G|² and tr(Σ) estimates, kept separately as McCandlish et al. do (the ratio of
    unbiased estimates is biased); value = tr(Σ) EMA / |G|² EMA [R]. The first update sets the EMAs."""

    def __init__(self, runs: int, ema: float = 0.9):
        if not 0 <= ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        self.runs, self.ema, self.updates = runs, ema, 0
        self.g2 = torch.full((runs,), float("nan"), dtype=torch.float64)
        self.trace = torch.full((runs,), float("nan"), dtype=torch.float64)

    def update(self, g_small: torch.Tensor, g_big: torch.Tensor, b_small: int, b_big: int) -> None:
        """Fold in one step's gradients [R, P] of a b_small batch and a b_big batch (see `estimates`)."""
        if g_small.shape[0] != self.runs:
            raise ValueError(f"expected gradients of {self.runs} runs, got {g_small.shape[0]}")
        g2, trace = estimates(g_small, g_big, b_small, b_big)
        if self.updates == 0:
            self.g2, self.trace = g2, trace
        else:
            self.g2 = self.ema * self.g2.to(g2.device) + (1 - self.ema) * g2
            self.trace = self.ema * self.trace.to(trace.device) + (1 - self.ema) * trace
        self.updates += 1

    @property
    def value(self) -> torch.Tensor:
        """B_simple per run [R] (float64): nan before the first update; inf where the |G|² EMA is ≤ 0 (the noise
        swamps the signal, so any batch size is "small"). A negative tr(Σ) EMA (possible early, from noise) is
        reported as it is."""
        if self.updates == 0:
            return torch.full((self.runs,), float("nan"), dtype=torch.float64)
        return torch.where(self.g2 > 0, self.trace / self.g2, torch.full_like(self.g2, float("inf")))

    def select(self, keep: list[int]) -> None:
        """Keep only runs `keep` (in that order) when the pack is compacted."""
        idx = torch.as_tensor(keep, dtype=torch.long)
        self.g2, self.trace = self.g2[idx.to(self.g2.device)], self.trace[idx.to(self.trace.device)]
        self.runs = len(keep)

    def state(self) -> dict[str, torch.Tensor]:
        """Plain CPU tensors for a checkpoint."""
        return {"g2": self.g2.detach().cpu().clone(), "trace": self.trace.detach().cpu().clone(),
                "updates": torch.tensor(self.updates), "ema": torch.tensor(self.ema, dtype=torch.float64)}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from `state()`; the run count follows the saved tensors."""
        self.g2 = state["g2"].to(torch.float64).clone()
        self.trace = state["trace"].to(torch.float64).clone()
        self.updates, self.ema, self.runs = int(state["updates"]), float(state["ema"]), int(self.g2.shape[0])
