"""Batched optimizers: one update for R runs, every numeric hyperparameter a per-run tensor [R].

The update rules mirror torch.optim.{AdamW, Adam, SGD} (tests compare them step by step), so a
groklab run follows the trajectory of the plain loop a user would write. One update, in order:

1. gradient filters: ⊥Grad (`orthograd`: drop the component along the weights, keep the norm),
   then Grokfast (`grokfast`: g + lamb * slow(g), slow = EMA or moving average);
2. `coupled` decay adds wd * w to the gradient (L2 in the loss);
3. the Adam(W) or SGD direction;
4. `decoupled` decay shrinks w by lr * wd * w (AdamW); `to_init` pulls w toward its initial value
   by lr * wd * (w - w0); `l1` is the proximal L1 step: move every weight lr * wd toward 0, never past;
5. `fixed_norm`: rescale the run's whole parameter vector to that L2 norm (Omnigrok).

Runs whose `ok` flag is False (diverged) keep their parameters and state untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from groklab.config import Config, OptimConfig

_HYPER = ("lr", "weight_decay", "beta1", "beta2", "eps", "momentum", "warmup_steps", "steps", "min_lr_ratio",
          "gamma", "step_size", "cycle_steps", "fixed_norm", "grokfast_alpha", "grokfast_lamb")


@dataclass
class Hyper:
    """Per-run hyperparameters, each a float tensor [R] on the pack's device."""

    lr: torch.Tensor
    weight_decay: torch.Tensor
    beta1: torch.Tensor
    beta2: torch.Tensor
    eps: torch.Tensor
    momentum: torch.Tensor
    warmup_steps: torch.Tensor
    steps: torch.Tensor
    min_lr_ratio: torch.Tensor
    gamma: torch.Tensor
    step_size: torch.Tensor
    cycle_steps: torch.Tensor
    fixed_norm: torch.Tensor  # 0 = off
    grokfast_alpha: torch.Tensor
    grokfast_lamb: torch.Tensor

    @classmethod
    def from_configs(cls, configs: list[Config], device: torch.device) -> Hyper:
        def row(c: Config) -> list[float]:
            o, gf = c.optim, c.optim.grokfast
            return [o.lr, o.weight_decay, o.betas[0], o.betas[1], o.eps, o.momentum, o.warmup_steps, c.train.steps,
                    o.min_lr_ratio, o.gamma, o.step_size, o.cycle_steps, o.fixed_norm or 0.0,
                    gf.alpha if gf else 0.0, gf.lamb if gf else 0.0]

        cols = torch.tensor([row(c) for c in configs], dtype=torch.float32, device=device).T
        return cls(**dict(zip(_HYPER, cols)))

    def select(self, keep: torch.Tensor) -> Hyper:
        return Hyper(**{k: v[keep] for k, v in self.__dict__.items()})


def lr_at(hp: Hyper, step: int, schedule: str = "constant", batch_scale: float = 1.0) -> torch.Tensor:
    """Learning rate [R] of update number `step` (0-based): linear warmup, then the schedule.

    Warmup is lr * min(1, (step+1)/warmup): with warmup_steps=10 this equals
    LinearLR(start_factor=0.1, total_iters=9), the schedule of the reference repositories.
    The schedule runs on u = steps since warmup ended; `m` is min_lr_ratio:
      constant 1 | cosine m + (1-m)(1+cos(pi u/U))/2 over U = steps - warmup | exponential gamma^u |
      step gamma^floor(u/step_size) | cyclic triangular m -> 1 -> m with period cycle_steps.
    `batch_scale` is the lr scaling factor for the current batch size (lr_scaling).
    """
    warm = torch.clamp((step + 1) / hp.warmup_steps.clamp(min=1), max=1.0)
    u = (step - hp.warmup_steps).clamp(min=0)
    m = hp.min_lr_ratio
    if schedule == "constant":
        f = torch.ones_like(u)
    elif schedule == "cosine":
        span = (hp.steps - hp.warmup_steps).clamp(min=1)
        f = m + (1 - m) * 0.5 * (1 + torch.cos(math.pi * torch.clamp(u / span, max=1.0)))
    elif schedule == "exponential":
        f = hp.gamma**u
    elif schedule == "step":
        f = hp.gamma ** torch.floor(u / hp.step_size)
    elif schedule == "cyclic":
        phase = torch.remainder(u, hp.cycle_steps) / hp.cycle_steps
        f = m + (1 - m) * (1 - torch.abs(2 * phase - 1))
    else:
        raise ValueError(f"optim.schedule: unknown {schedule!r}")
    return hp.lr * warm * f * batch_scale


def batch_scale(o: OptimConfig, batch_size: int) -> float:
    """lr multiplier for `optim.lr_scaling` at the current (effective) batch size."""
    power = {"none": 0.0, "linear": 1.0, "sqrt": 0.5}[o.lr_scaling]
    return (batch_size / o.base_batch_size) ** power


@dataclass
class OptimState:
    step: int = 0
    exp_avg: dict[str, torch.Tensor] = field(default_factory=dict)
    exp_avg_sq: dict[str, torch.Tensor] = field(default_factory=dict)
    momentum_buffer: dict[str, torch.Tensor] = field(default_factory=dict)
    init: dict[str, torch.Tensor] = field(default_factory=dict)  # w0 for decay: to_init
    grokfast_ema: dict[str, torch.Tensor] = field(default_factory=dict)
    grokfast_window: dict[str, torch.Tensor] = field(default_factory=dict)  # [R, window, ...] ring buffer
    grokfast_count: int = 0

    def select(self, keep: torch.Tensor) -> OptimState:
        def sel(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v[keep] for k, v in d.items()}

        return OptimState(self.step, sel(self.exp_avg), sel(self.exp_avg_sq), sel(self.momentum_buffer),
                          sel(self.init), sel(self.grokfast_ema), sel(self.grokfast_window), self.grokfast_count)


def _col(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[R] -> [R, 1, ..., 1] broadcasting against `like`."""
    return x.view(-1, *([1] * (like.dim() - 1)))


def orthogonalize(w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """⊥Grad (Prieto et al., 2025), per run: remove g's component along w, rescale to g's norm."""
    wf, gf = w.flatten(1), g.flatten(1)
    proj = (wf * gf).sum(1, keepdim=True) / ((wf * wf).sum(1, keepdim=True) + 1e-30)
    orth = gf - proj * wf
    scale = gf.norm(dim=1, keepdim=True) / (orth.norm(dim=1, keepdim=True) + 1e-30)
    return (orth * scale).view_as(g)


def grokfast(o: OptimConfig, grads: dict[str, torch.Tensor], state: OptimState, hp: Hyper) -> dict[str, torch.Tensor]:
    """Grokfast (Lee et al., 2024), as ironjr/grokfast's gradfilter_ema / gradfilter_ma.

    ema: s <- alpha s + (1 - alpha) g (s starts at the first g); g <- g + lamb s.
    ma:  s = mean of the last `window` gradients, applied only once the window is full.
    """
    gf = o.grokfast
    assert gf is not None
    out = {}
    if gf.kind == "ema":
        for k, g in grads.items():
            s = state.grokfast_ema.get(k)
            s = g.clone() if s is None else torch.lerp(s, g, 1 - _col(hp.grokfast_alpha, g))
            state.grokfast_ema[k] = s
            out[k] = g + _col(hp.grokfast_lamb, g) * s
        return out
    slot = state.grokfast_count % gf.window
    state.grokfast_count += 1
    for k, g in grads.items():
        buf = state.grokfast_window.get(k)
        if buf is None:
            buf = state.grokfast_window[k] = torch.zeros(g.shape[0], gf.window, *g.shape[1:], device=g.device)
        buf[:, slot] = g
        out[k] = g + _col(hp.grokfast_lamb, g) * buf.mean(1) if state.grokfast_count >= gf.window else g
    return out


@torch.no_grad()
def step(
    o: OptimConfig,
    params: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor],
    state: OptimState,
    hp: Hyper,
    lr: torch.Tensor,
    ok: torch.Tensor,
    decay_on: set[str] | None = None,
    fixed_norm: bool = False,
) -> None:
    """One in-place update of every run whose `ok` [R] is True. `o` holds the pack-wide choices
    (name, decay kind, filters); `hp` the per-run numbers. `decay_on`: names that decay (default all);
    `fixed_norm`: whether any run of the pack has a norm constraint."""
    state.step += 1
    t = state.step
    if o.orthograd:
        grads = {k: orthogonalize(params[k], g) for k, g in grads.items()}
    if o.grokfast is not None:
        grads = grokfast(o, grads, state, hp)
    new: dict[str, torch.Tensor] = {}
    for k, p in params.items():
        g = grads[k]
        lr_ = _col(lr, p)
        wd = _col(hp.weight_decay, p) if decay_on is None or k in decay_on else torch.zeros_like(lr_)
        if o.decay == "coupled":
            g = g + wd * p
        if o.name == "sgd":
            mom = _col(hp.momentum, p)
            old = state.momentum_buffer.get(k)
            buf = g.clone() if old is None else mom * old + g
            state.momentum_buffer[k] = buf if old is None else torch.where(_col(ok, p), buf, old)
            update = lr_ * (g + mom * buf if o.nesterov else buf)
        else:
            b1, b2, eps = _col(hp.beta1, p), _col(hp.beta2, p), _col(hp.eps, p)
            m = state.exp_avg.setdefault(k, torch.zeros_like(p))
            v = state.exp_avg_sq.setdefault(k, torch.zeros_like(p))
            m_new = torch.lerp(m, g, 1 - b1)
            v_new = v * b2 + (1 - b2) * g * g
            denom = v_new.sqrt() / (1 - b2**t).sqrt() + eps
            update = (lr_ / (1 - b1**t)) * m_new / denom
            keep = _col(ok, p)
            m.copy_(torch.where(keep, m_new, m))
            v.copy_(torch.where(keep, v_new, v))
        if o.decay == "decoupled":
            base = p * (1 - lr_ * wd)
        elif o.decay == "to_init":
            base = p - lr_ * wd * (p - state.init[k])
        else:
            base = p
        q = base - update
        if o.decay == "l1":
            q = torch.sign(q) * torch.clamp(q.abs() - lr_ * wd, min=0.0)
        new[k] = q
    if fixed_norm:
        norm = torch.sqrt(sum(q.pow(2).flatten(1).sum(1) for q in new.values()))
        factor = torch.where(hp.fixed_norm > 0, hp.fixed_norm / norm.clamp(min=1e-30), torch.ones_like(norm))
        new = {k: q * _col(factor, q) for k, q in new.items()}
    for k, p in params.items():
        p.copy_(torch.where(_col(ok, p), new[k], p))
