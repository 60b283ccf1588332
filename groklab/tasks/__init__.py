"""Tasks: the full dataset of a task as tensors, and the per-run train/val split.

A task is a table of inputs and labels (`Task`). Token tasks (modular arithmetic, S5, parity,
sequences) hold token ids [N, T]; feature tasks (digits, local images) hold floats [N, F], images
flattened channel-major (`image_shape` gives (C, H, W)). Labels are [N] for a single answer or [N, L]
for a sequence answer (read at the last L positions). Each run draws its own train/val split from its
own seed (`split`), so seeds vary the split as well as init and batch order; with `task.folds` the
split is K-fold cross-validation's (`folds`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from groklab.config import TaskConfig


@dataclass(frozen=True)
class Task:
    inputs: torch.Tensor  # [N, T] token ids, or [N, F] float features
    labels: torch.Tensor  # [N] or [N, L] class ids
    vocab_size: int  # 0 for feature tasks
    n_classes: int
    operands: tuple[int, ...] = ()  # positions an MLP reads (the op / '=' tokens carry nothing)
    image_shape: tuple[int, int, int] | None = None  # image tasks: (channels, height, width) of a row of `inputs`

    @property
    def seq_len(self) -> int:
        return self.inputs.shape[1]

    @property
    def features(self) -> bool:
        return self.inputs.is_floating_point()

    @property
    def n_outputs(self) -> int:
        return 1 if self.labels.dim() == 1 else self.labels.shape[1]

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def n_train(self, cfg: TaskConfig) -> int:
        if cfg.folds is not None:  # every fold but the held-out one
            lo, hi = fold_bounds(len(self), cfg.folds)[cfg.fold : cfg.fold + 2]
            return len(self) - (hi - lo)
        n = cfg.train_size if cfg.train_size is not None else round(cfg.train_frac * len(self))
        return max(1, min(len(self) - 1, n))


def make_task(cfg: TaskConfig) -> Task:
    from groklab.tasks import digits, images, modular, parity, s5, sequence

    if cfg.name == "images":
        return images.make(cfg.path)
    if cfg.name == "modular":
        return modular.make(cfg.op, cfg.modulus, cfg.op_token, cfg.skip_zero)
    if cfg.name == "s5":
        return s5.make(cfg.op)
    if cfg.name == "parity":
        return parity.make(cfg.bits, cfg.k)
    if cfg.name == "sequence":
        return sequence.make(cfg.op, cfg.symbols, cfg.length)
    return digits.make()


def fold_bounds(n: int, k: int) -> list[int]:
    """Where each of k folds of n shuffled examples starts (and the last one ends): sizes differ by at most 1."""
    return [j * n // k for j in range(k + 1)]


def folds(n: int, k: int, generator: torch.Generator) -> list[torch.Tensor]:
    """K folds of the examples 0..n-1: one permutation from `generator`, cut at `fold_bounds`; each sorted.
    Disjoint and covering, so fold i of every run with the same seed is the val set of exactly one `task.fold`."""
    perm, b = torch.randperm(n, generator=generator), fold_bounds(n, k)
    return [perm[b[j] : b[j + 1]].sort().values for j in range(k)]


def split(task: Task, cfg: TaskConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random train/val index split drawn from the run's own generator.

    `task.train_size` (an example count) takes precedence over `task.train_frac`; with `task.folds` the val
    set is fold `task.fold` and the train set the other folds.
    """
    if cfg.folds is not None:
        parts = folds(len(task), cfg.folds, generator)
        val = parts.pop(cfg.fold)
        return torch.cat(parts).sort().values, val
    perm = torch.randperm(len(task), generator=generator)
    n = task.n_train(cfg)
    return perm[:n].sort().values, perm[n:].sort().values
