"""Batched optimizers: one update for R runs, every hyperparameter a per-run tensor [R].

The formulas mirror torch.optim.{AdamW, Adam, SGD} (tests compare them step by step), so a groklab
run follows the same trajectory as the plain loop a user would write. Runs whose `ok` flag is
False (diverged, or already finished) keep their parameters and state untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from groklab.config import Config


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

    @classmethod
    def from_configs(cls, configs: list[Config], device: torch.device) -> Hyper:
        def t(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)

        o = [c.optim for c in configs]
        return cls(
            lr=t([x.lr for x in o]),
            weight_decay=t([x.weight_decay for x in o]),
            beta1=t([x.betas[0] for x in o]),
            beta2=t([x.betas[1] for x in o]),
            eps=t([x.eps for x in o]),
            momentum=t([x.momentum for x in o]),
            warmup_steps=t([x.warmup_steps for x in o]),
        )

    def select(self, keep: torch.Tensor) -> Hyper:
        return Hyper(**{k: v[keep] for k, v in self.__dict__.items()})


def lr_at(hp: Hyper, step: int) -> torch.Tensor:
    """Learning rate [R] for update number `step` (0-based): linear warmup from lr/warmup to lr.

    With warmup_steps=10 this equals LinearLR(start_factor=0.1, total_iters=9), the schedule of the
    reference repositories.
    """
    factor = torch.clamp((step + 1) / hp.warmup_steps.clamp(min=1), max=1.0)
    return hp.lr * factor


@dataclass
class OptimState:
    step: int = 0
    exp_avg: dict[str, torch.Tensor] = field(default_factory=dict)
    exp_avg_sq: dict[str, torch.Tensor] = field(default_factory=dict)
    momentum_buffer: dict[str, torch.Tensor] = field(default_factory=dict)

    def select(self, keep: torch.Tensor) -> OptimState:
        return OptimState(
            self.step,
            {k: v[keep] for k, v in self.exp_avg.items()},
            {k: v[keep] for k, v in self.exp_avg_sq.items()},
            {k: v[keep] for k, v in self.momentum_buffer.items()},
        )


def _col(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[R] -> [R, 1, ..., 1] broadcasting against `like`."""
    return x.view(-1, *([1] * (like.dim() - 1)))


@torch.no_grad()
def step(
    name: str,
    params: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor],
    state: OptimState,
    hp: Hyper,
    lr: torch.Tensor,
    ok: torch.Tensor,
    nesterov: bool = False,
) -> None:
    """One in-place update of every run whose `ok` [R] is True."""
    state.step += 1
    t = state.step
    for k, p in params.items():
        g = grads[k]
        keep = _col(ok, p)
        lr_, wd = _col(lr, p), _col(hp.weight_decay, p)
        if name == "sgd":
            g = g + wd * p
            mom = _col(hp.momentum, p)
            buf = state.momentum_buffer.get(k)
            buf = g.clone() if buf is None else mom * buf + g
            state.momentum_buffer[k] = torch.where(keep, buf, state.momentum_buffer.get(k, buf))
            d = g + mom * buf if nesterov else buf
            p.copy_(torch.where(keep, p - lr_ * d, p))
            continue
        b1, b2, eps = _col(hp.beta1, p), _col(hp.beta2, p), _col(hp.eps, p)
        if name == "adam":
            g = g + wd * p
            new_p = p
        else:  # adamw: decoupled decay
            new_p = p * (1 - lr_ * wd)
        m = state.exp_avg.setdefault(k, torch.zeros_like(p))
        v = state.exp_avg_sq.setdefault(k, torch.zeros_like(p))
        m_new = torch.lerp(m, g, 1 - b1)
        v_new = v * b2 + (1 - b2) * g * g
        bc1 = 1 - b1**t
        bc2_sqrt = (1 - b2**t).sqrt()
        denom = v_new.sqrt() / bc2_sqrt + eps
        new_p = new_p - (lr_ / bc1) * m_new / denom
        p.copy_(torch.where(keep, new_p, p))
        m.copy_(torch.where(keep, m_new, m))
        v.copy_(torch.where(keep, v_new, v))
