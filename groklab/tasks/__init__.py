"""Tasks: the full dataset of a task as tensors, and the per-run train/val split.

A task is a table of inputs and labels (`Task`). Token tasks (modular arithmetic, S5, parity,
sequences) hold token ids [N, T]; feature tasks (digits) hold floats [N, F]. Labels are [N] for a
single answer or [N, L] for a sequence answer (read at the last L positions). Each run draws its own
train/val split from its own seed (`split`), so seeds vary the split as well as init and batch order.
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
        n = cfg.train_size if cfg.train_size is not None else round(cfg.train_frac * len(self))
        return max(1, min(len(self) - 1, n))


def make_task(cfg: TaskConfig) -> Task:
    from groklab.tasks import digits, modular, parity, s5, sequence

    if cfg.name == "modular":
        return modular.make(cfg.op, cfg.modulus)
    if cfg.name == "s5":
        return s5.make(cfg.op)
    if cfg.name == "parity":
        return parity.make(cfg.bits, cfg.k)
    if cfg.name == "sequence":
        return sequence.make(cfg.op, cfg.symbols, cfg.length)
    return digits.make()


def split(task: Task, cfg: TaskConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random train/val index split drawn from the run's own generator.

    `task.train_size` (an example count) takes precedence over `task.train_frac`.
    """
    perm = torch.randperm(len(task), generator=generator)
    n = task.n_train(cfg)
    return perm[:n].sort().values, perm[n:].sort().values
