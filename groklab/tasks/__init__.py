"""Tasks: the full dataset of a task as tensors, and the per-run train/val split.

A task is a table of token sequences and labels (`Task`). Each run draws its own train/val split
from its own seed (`split`), so seeds vary the split as well as the init and batch order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from groklab.config import TaskConfig


@dataclass(frozen=True)
class Task:
    inputs: torch.Tensor  # [N, T] token ids
    labels: torch.Tensor  # [N] class ids
    vocab_size: int
    n_classes: int

    @property
    def seq_len(self) -> int:
        return self.inputs.shape[1]

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def n_train(self, train_frac: float) -> int:
        return max(1, min(len(self) - 1, round(train_frac * len(self))))


def make_task(cfg: TaskConfig) -> Task:
    from groklab.tasks import modular, s5

    if cfg.name == "modular":
        return modular.make(cfg.op, cfg.modulus)
    if cfg.name == "s5":
        return s5.make(cfg.op)
    raise ValueError(f"task.name: unknown task {cfg.name!r}")  # config validation stops this earlier


def split(task: Task, train_frac: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random train/val index split drawn from the run's own generator."""
    perm = torch.randperm(len(task), generator=generator)
    n = task.n_train(train_frac)
    return perm[:n].sort().values, perm[n:].sort().values
