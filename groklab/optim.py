"""Batched optimizers: one update for R runs, every numeric hyperparameter a per-run tensor [R].

A pack's parameters live in one flat tensor [R, P] (see `Layout`), so an update is a handful of
elementwise ops on that tensor, not a handful per parameter tensor.

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

On the CPU, Adam(W) with decoupled or coupled decay in float32 runs through torch's fused kernel (one pass
per run instead of ~15 elementwise passes over [R, P]; 4-15x faster, bench/optimizer.py); every other
combination, and any GPU, takes the elementwise update below. The two agree to float32 rounding at each step
(tested), so trajectories drift apart over many steps: a run stored by groklab before the fused kernel, then
continued to a larger budget, no longer equals one trained from scratch bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

from groklab.config import Config, OptimConfig

_HYPER = ("lr", "weight_decay", "beta1", "beta2", "eps", "momentum", "warmup_steps", "warmup_offset", "steps",
          "min_lr_ratio",
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
    warmup_offset: torch.Tensor  # 1, or 0 with optim.warmup_from_zero
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
            return [o.lr, o.weight_decay, o.betas[0], o.betas[1], o.eps, o.momentum, o.warmup_steps,
                    0.0 if o.warmup_from_zero else 1.0, c.train.steps,
                    o.min_lr_ratio, o.gamma, o.step_size, o.cycle_steps, o.fixed_norm or 0.0,
                    gf.alpha if gf else 0.0, gf.lamb if gf else 0.0]

        cols = torch.tensor([row(c) for c in configs], dtype=torch.float32, device=device).T
        return cls(**dict(zip(_HYPER, cols)))

    def select(self, keep: torch.Tensor | slice) -> Hyper:
        return Hyper(**{k: v[keep] for k, v in self.__dict__.items()})


def lr_at(hp: Hyper, step: int, schedule: str = "constant", batch_scale: float = 1.0) -> torch.Tensor:
    """Learning rate [R] of update number `step` (0-based): linear warmup, then the schedule.

    Warmup is lr * min(1, (step+1)/warmup): with warmup_steps=10 this equals
    LinearLR(start_factor=0.1, total_iters=9), the schedule of the reference repositories; with
    optim.warmup_from_zero lr * min(1, step/warmup), the LambdaLR of Nanda et al. and Grokfast.
    The schedule runs on u = steps since warmup ended; `m` is min_lr_ratio:
      constant 1 | cosine m + (1-m)(1+cos(pi u/U))/2 over U = steps - warmup | exponential gamma^u |
      step gamma^floor(u/step_size) | cyclic triangular m -> 1 -> m with period cycle_steps.
    `batch_scale` is the lr scaling factor for the current batch size (lr_scaling).
    """
    warm = torch.clamp((step + hp.warmup_offset) / hp.warmup_steps.clamp(min=1), max=1.0)
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


@dataclass(frozen=True)
class Layout:
    """Where each named parameter of a run lives in the run's flat parameter vector.

    A pack keeps all its parameters in one tensor [R, P]; each named parameter [R, *shape] is a view
    of columns offset..offset+numel. The optimizer then updates one tensor with a handful of
    elementwise ops per step, however many parameter tensors the model has."""

    shapes: dict[str, tuple[int, ...]]

    @classmethod
    def of(cls, params: dict[str, torch.Tensor]) -> Layout:
        """The layout of stacked parameters {name: [R, *shape]}."""
        return cls({k: tuple(v.shape[1:]) for k, v in params.items()})

    @cached_property
    def spans(self) -> dict[str, tuple[int, int]]:
        """{name: (first column, end column)} in the flat vector."""
        out, at = {}, 0
        for k, s in self.shapes.items():
            out[k] = (at, at + math.prod(s))
            at += math.prod(s)
        return out

    @cached_property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def flatten(self, tensors: dict[str, torch.Tensor] | list[torch.Tensor], out: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Stacked tensors [R, *shape] (a dict by name, or a list in layout order) -> one [R, P],
        written into `out` when given."""
        vals = list(tensors.values()) if isinstance(tensors, dict) else tensors
        return torch.cat([v.reshape(v.shape[0], -1) for v in vals], dim=1, out=out)

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """{name: [R, *shape]} views sharing flat's storage: writing to flat updates them."""
        r = flat.shape[0]
        return {k: flat[:, a:b].view(r, *self.shapes[k]) for k, (a, b) in self.spans.items()}

    def mask(self, names: set[str], device: torch.device | None = None) -> torch.Tensor:
        """[1, P] float: 1 on the columns of `names`, 0 elsewhere."""
        m = torch.zeros(1, self.size, device=device)
        for k, (a, b) in self.spans.items():
            if k in names:
                m[:, a:b] = 1.0
        return m


@dataclass
class OptimState:
    """Optimizer state as flat tensors [R, P] (None until first used)."""

    step: int = 0
    exp_avg: torch.Tensor | None = None
    exp_avg_sq: torch.Tensor | None = None
    momentum_buffer: torch.Tensor | None = None
    init: torch.Tensor | None = None  # w0 for decay: to_init
    grokfast_ema: torch.Tensor | None = None
    grokfast_window: torch.Tensor | None = None  # [R, window, P] ring buffer
    grokfast_count: int = 0

    TENSORS = ("exp_avg", "exp_avg_sq", "momentum_buffer", "init", "grokfast_ema", "grokfast_window")

    def select(self, keep: torch.Tensor | slice) -> OptimState:
        """The state of runs `keep`: copies for an index tensor, views for a slice."""
        kept = {k: None if getattr(self, k) is None else getattr(self, k)[keep] for k in self.TENSORS}
        return OptimState(step=self.step, grokfast_count=self.grokfast_count, **kept)


def orthogonalize(w: torch.Tensor, g: torch.Tensor, layout: Layout) -> torch.Tensor:
    """⊥Grad (Prieto et al., 2025), per run and parameter tensor: remove g's component along w,
    rescale to g's norm. w, g: flat [R, P]."""
    out = torch.empty_like(g)
    for a, b in layout.spans.values():
        wf, gf = w[:, a:b], g[:, a:b]
        proj = (wf * gf).sum(1, keepdim=True) / ((wf * wf).sum(1, keepdim=True) + 1e-30)
        orth = gf - proj * wf
        out[:, a:b] = orth * (gf.norm(dim=1, keepdim=True) / (orth.norm(dim=1, keepdim=True) + 1e-30))
    return out


def grokfast(o: OptimConfig, g: torch.Tensor, state: OptimState, hp: Hyper) -> torch.Tensor:
    """Grokfast (Lee et al., 2024), as ironjr/grokfast's gradfilter_ema / gradfilter_ma, on flat g [R, P].

    ema: s <- alpha s + (1 - alpha) g (s starts at the first g); g <- g + lamb s.
    ma:  s = mean of the last `window` gradients, applied only once the window is full.
    """
    gf = o.grokfast
    assert gf is not None
    lamb = hp.grokfast_lamb[:, None]
    if gf.kind == "ema":
        s = state.grokfast_ema
        s = g.clone() if s is None else torch.lerp(s, g, 1 - hp.grokfast_alpha[:, None])
        state.grokfast_ema = s
        return g + lamb * s
    if state.grokfast_window is None:
        state.grokfast_window = torch.zeros(g.shape[0], gf.window, g.shape[1], device=g.device)
    state.grokfast_window[:, state.grokfast_count % gf.window] = g
    state.grokfast_count += 1
    return g + lamb * state.grokfast_window.mean(1) if state.grokfast_count >= gf.window else g


# The update runs over blocks of runs of about this many elements, so its temporaries stay small:
# on the CPU, tensors above 32 MiB come from fresh pages every step (glibc's mmap threshold).
BLOCK_ELEMENTS = 1 << 21


@torch.no_grad()
def step(
    o: OptimConfig,
    p: torch.Tensor,
    g: torch.Tensor,
    state: OptimState,
    hp: Hyper,
    lr: torch.Tensor,
    ok: torch.Tensor | None,
    layout: Layout | None = None,
    decay_mask: torch.Tensor | None = None,
    fixed_norm: bool = False,
) -> None:
    """One in-place update of flat parameters p [R, P] with gradients g [R, P], for every run whose
    `ok` [R] is True (None: every run). `o` holds the pack-wide choices (name, decay kind, filters);
    `hp` the per-run numbers. `layout` names the parameter tensors (needed by orthograd);
    `decay_mask` [1, P] limits decay to some columns (default all); `fixed_norm`: whether any run
    has a norm constraint."""
    state.step += 1
    if o.orthograd:
        if layout is None:
            raise ValueError("optim.orthograd needs the parameter layout")
        g = orthogonalize(p, g, layout)
    if o.grokfast is not None:
        g = grokfast(o, g, state, hp)
    names = ("momentum_buffer",) if o.name == "sgd" else ("exp_avg", "exp_avg_sq")
    for name in names:
        if getattr(state, name) is None:
            setattr(state, name, torch.zeros_like(p))
    if _fusable(o, p, g, state.exp_avg, state.exp_avg_sq):
        _fused_adam(o, p, g, state, hp, lr, ok, layout, decay_mask, fixed_norm)
        return
    rows = max(1, BLOCK_ELEMENTS // max(p.shape[1], 1))
    if rows >= p.shape[0]:  # one block: no views to take
        _update(o, p, g, state, state.step, hp, lr, ok, decay_mask, fixed_norm)
        return
    for s in range(0, p.shape[0], rows):
        r = slice(s, s + rows)
        _update(o, p[r], g[r], state.select(r), state.step, hp.select(r), lr[r], None if ok is None else ok[r],
                decay_mask, fixed_norm)


def _update(o: OptimConfig, p: torch.Tensor, g: torch.Tensor, state: OptimState, t: int, hp: Hyper,
            lr: torch.Tensor, ok: torch.Tensor | None, decay_mask: torch.Tensor | None, fixed_norm: bool) -> None:
    """The update of one block of runs; p and the state tensors are views, written in place."""
    lr_ = lr[:, None]
    wd = hp.weight_decay[:, None] if decay_mask is None else hp.weight_decay[:, None] * decay_mask

    def write(dst: torch.Tensor, new: torch.Tensor) -> None:  # runs not ok keep their old values
        dst.copy_(new if ok is None else torch.where(ok[:, None], new, dst))

    if o.decay == "coupled":
        g = g + wd * p
    if o.name == "sgd":
        mom, buf = hp.momentum[:, None], state.momentum_buffer
        new_buf = mom * buf + g  # the buffer starts at 0, so the first step gives g, as torch.optim.SGD
        update = lr_ * (g + mom * new_buf if o.nesterov else new_buf)
        write(buf, new_buf)
    else:
        b1, b2 = hp.beta1[:, None], hp.beta2[:, None]
        m, v = state.exp_avg, state.exp_avg_sq
        # The same arithmetic as torch.optim.AdamW: lerp for m, v * b2 + (1 - b2) g g for v.
        m_new = torch.lerp(m, g, 1 - b1)
        v_new = torch.addcmul(v * b2, (1 - b2) * g, g)
        denom = v_new.sqrt().div_((1 - b2**t).sqrt()).add_(hp.eps[:, None])
        update = m_new.mul(lr_ / (1 - b1**t)).div_(denom)
        write(m, m_new)
        write(v, v_new)
    if o.decay == "decoupled":
        q = p.mul(1 - lr_ * wd)
    elif o.decay == "to_init":
        assert state.init is not None, "optim.decay to_init needs state.init"
        q = p - lr_ * wd * (p - state.init)
    else:
        q = p.clone()
    q.sub_(update)
    if o.decay == "l1":
        q = torch.sign(q) * torch.clamp(q.abs() - lr_ * wd, min=0.0)
    if fixed_norm:
        norm = q.pow(2).sum(1).sqrt()
        factor = torch.where(hp.fixed_norm > 0, hp.fixed_norm / norm.clamp(min=1e-30), torch.ones_like(norm))
        q.mul_(factor[:, None])
    write(p, q)


def _fusable(o: OptimConfig, p: torch.Tensor, *tensors: torch.Tensor | None) -> bool:
    """Adam(W) with decoupled or coupled decay (any weight_decay, 0 included), float32 on the CPU, every tensor
    contiguous (the kernel reads memory as contiguous whatever the strides): torch's fused Adam kernel applies."""
    return (p.device.type == "cpu" and p.dtype == torch.float32 and o.name in ("adam", "adamw")
            and o.decay in ("decoupled", "coupled") and all(t is not None and t.is_contiguous() for t in (p, *tensors)))


def _fused_adam(o: OptimConfig, p: torch.Tensor, g: torch.Tensor, state: OptimState, hp: Hyper, lr: torch.Tensor,
                ok: torch.Tensor | None, layout: Layout | None, decay_mask: torch.Tensor | None,
                fixed_norm: bool) -> None:
    """The Adam(W) update through torch's fused CPU kernel (`torch._fused_adamw_`, as torch.optim.AdamW(fused=True)):
    one pass over each run's row instead of ~15 elementwise passes over [R, P] (4-15x faster, bench/optimizer.py).

    The kernel takes one set of scalar hyperparameters per call, so runs are grouped by theirs; each run's
    row (or each parameter's span of it, when `decay_mask` limits decay) is its own tensor, so a run's
    arithmetic is the same whichever runs share its pack. Runs not `ok` are left out."""
    rows = range(p.shape[0]) if ok is None else [r for r, v in enumerate(ok.tolist()) if v]
    values = torch.stack([lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay], 1).tolist()
    groups: dict[tuple[float, ...], list[int]] = {}
    for r in rows:
        groups.setdefault(tuple(values[r]), []).append(r)
    spans = [(0, p.shape[1], True)]
    if decay_mask is not None:  # [(first, end column, decayed)], per parameter, or per stretch of equal mask
        if layout is not None:
            cuts = [a for a, _ in layout.spans.values()]
        else:
            cuts = [0, *((decay_mask[0, 1:] != decay_mask[0, :-1]).nonzero()[:, 0] + 1).tolist()]
        cuts = [a for a, b in zip(cuts, [*cuts[1:], p.shape[1]]) if b > a]  # a parameter of size 0 has no columns
        flags = decay_mask[0, torch.tensor(cuts, dtype=torch.long, device=decay_mask.device)].tolist()
        spans = [(a, b, bool(d)) for a, b, d in zip(cuts, [*cuts[1:], p.shape[1]], flags)]
    fused = torch._fused_adamw_ if o.decay == "decoupled" else torch._fused_adam_
    step_t = torch.tensor(float(state.step))  # read, not advanced, by the kernel
    m, v = state.exp_avg, state.exp_avg_sq
    assert m is not None and v is not None
    for (lr_, b1, b2, eps, wd), members in groups.items():
        for decayed in (True, False):
            cols = [(a, b) for a, b, d in spans if d == decayed]
            if not cols:
                continue
            pick = [(r, a, b) for r in members for a, b in cols]
            fused([p[r, a:b] for r, a, b in pick], [g[r, a:b] for r, a, b in pick], [m[r, a:b] for r, a, b in pick],
                  [v[r, a:b] for r, a, b in pick], [], [step_t] * len(pick), amsgrad=False, lr=lr_, beta1=b1,
                  beta2=b2, weight_decay=wd if decayed else 0.0, eps=eps, maximize=False)
    if fixed_norm:
        keep = torch.tensor(list(rows), dtype=torch.long)
        norm = p[keep].pow(2).sum(1).sqrt()
        target = hp.fixed_norm[keep]
        factor = torch.where(target > 0, target / norm.clamp(min=1e-30), torch.ones_like(norm))
        p[keep] = p[keep] * factor[:, None]
