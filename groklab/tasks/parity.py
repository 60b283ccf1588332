"""Sparse parity (Barak et al., 2022): n random bits, label = parity of the first k.

The task holds all 2^n bit strings, `[b1, ..., bn, =]`. Which k bits matter is fixed (the first k);
neither model is told, and both treat positions symmetrically up to their embeddings.
"""

from __future__ import annotations

import torch

from groklab.tasks import Task


def make(bits: int, k: int) -> Task:
    n = 2**bits
    x = (torch.arange(n).unsqueeze(1) >> torch.arange(bits)) & 1  # [N, bits]
    labels = x[:, :k].sum(1) % 2
    inputs = torch.cat([x, torch.full((n, 1), 2)], dim=1)
    return Task(inputs=inputs, labels=labels, vocab_size=3, n_classes=2, operands=tuple(range(bits)))
