"""Which examples each step trains on, and how many.

Per-run minibatch sampling, the batch-size schedules (`train.batch_schedule`: a ramp, or adaptive
doubling) and the gradient noise scale the adaptive schedule follows. They live here, not in the
Pack, so the Pack reads as the step loop of DESIGN.md: sample, gradients, optimizer step, evaluate.
The Pack keeps the state (`sampler`, `batch_size`, `noise`) because checkpoints save it from there.
"""

from __future__ import annotations

import math

import torch

from groklab.config import TrainConfig
from groklab.measures.noise import estimates


class BatchSampler:
    """Per-run minibatch positions [R, b] from each run's own generator.

    without_replacement: epoch-wise shuffling. Runs in a pack share train size and batch size, so
    their epochs end on the same step; each epoch costs one randperm per run, and a batch that crosses
    an epoch boundary takes the end of one permutation and the start of the next (so k batches of b
    are exactly one batch of k*b: gradient accumulation sees the same examples as the big batch).
    with_replacement: b independent uniform draws per run and step.
    Under gradual exposure the Pack grows `n` (the exposed prefix of each run's split): positions
    already drawn stay valid, so an epoch in progress finishes as drawn and the next one covers the
    grown set.
    """

    def __init__(self, generators: list[torch.Generator], n: int, replacement: bool = False):
        self.generators, self.n, self.replacement = generators, n, replacement
        self.buffer = torch.empty(len(generators), 0, dtype=torch.long)

    def effective(self, b: int) -> int:
        """The batch a step really takes for a requested size b: without replacement at most the whole
        train set (a batch_size of 100000 on 3,830 examples is full batch: 3,830 samples a step, and
        what lr_scaling scales by)."""
        return b if self.replacement else min(b, self.n)

    def next(self, b: int) -> torch.Tensor:
        """Positions [R, b]; b is an effective batch (times `accumulate`): exactly one epoch is the full
        batch in order, more than one epoch concatenates permutations (k full micro-batches)."""
        if self.replacement:
            return torch.stack([torch.randint(self.n, (b,), generator=g) for g in self.generators])
        if b == self.n:  # full batch
            return torch.arange(self.n).expand(len(self.generators), -1)
        while self.buffer.shape[1] < b:
            perms = torch.stack([torch.randperm(self.n, generator=g) for g in self.generators])
            self.buffer = torch.cat([self.buffer, perms], dim=1)
        out, self.buffer = self.buffer[:, :b], self.buffer[:, b:]
        return out

    def select(self, keep: list[int]) -> None:
        self.generators = [self.generators[i] for i in keep]
        self.buffer = self.buffer[keep]


class NoiseScale:
    """The gradient noise scale B_simple = tr(Σ) / |G|² an adaptive batch schedule follows (McCandlish et al.,
    2018; the estimators are `groklab.measures.noise.estimates`), from the gradients of the two halves of each
    batch and of the whole batch, with exponential moving averages of numerator and denominator. Adaptive
    runs train one per pack, so the estimate is the pack's."""

    def __init__(self, ema: float):
        self.ema, self.trace, self.g2 = ema, None, None

    def update(self, g_a: torch.Tensor, g_c: torch.Tensor, b: int) -> None:
        """g_a, g_c: flat gradients of the two halves of a batch of b examples."""
        whole = (g_a + g_c) / 2
        (g2_a, tr_a), (g2_c, tr_c) = estimates(g_a, whole, b // 2, b), estimates(g_c, whole, b // 2, b)
        g2, trace = ((g2_a + g2_c) / 2).sum(), ((tr_a + tr_c) / 2).sum()  # both halves: lower variance
        if self.g2 is None:
            self.g2, self.trace = g2, trace
        else:
            self.g2 = self.ema * self.g2 + (1 - self.ema) * g2
            self.trace = self.ema * self.trace + (1 - self.ema) * trace

    @property
    def value(self) -> float:
        if self.g2 is None:
            return float("nan")
        return float(self.trace / self.g2) if float(self.g2) > 0 else float("inf")


def initial_batch_size(train: TrainConfig, n_train: int) -> int:
    """The batch size of the first step: a schedule's `start`, else `train.batch_size`, capped at
    ⌈batch_frac × n_train⌉ (openai/grok's min(512, N/2))."""
    sched = train.batch_schedule
    if sched is not None:
        return sched.start
    if train.batch_frac is not None:
        return min(train.batch_size, math.ceil(train.batch_frac * n_train))
    return train.batch_size


def noise_scale(train: TrainConfig) -> NoiseScale | None:
    """A noise-scale estimator where the adaptive schedule needs one; None spares the half-batch split."""
    sched = train.batch_schedule
    return NoiseScale(sched.ema) if sched is not None and sched.kind == "adaptive" else None


def scheduled_batch_size(train: TrainConfig, step: int, current: int) -> int:
    """The batch size of update `step`: a ramp's size there; otherwise the size in use goes on."""
    sched = train.batch_schedule
    if sched is not None and sched.kind == "ramp":
        return sched.at(step)
    return current


def adapted_batch_size(train: TrainConfig, noise: NoiseScale | None, step: int, current: int) -> int:
    """The batch size after update `step` - 1 (`step` updates done): every `check_every` steps the adaptive
    schedule doubles it, up to `end`, while the measured noise scale exceeds it; otherwise it stays."""
    sched = train.batch_schedule
    if noise is not None and sched is not None and step % sched.check_every == 0:
        if noise.value > current and current < sched.end:
            return min(2 * current, sched.end)
    return current
