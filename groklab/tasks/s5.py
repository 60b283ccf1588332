"""Composition in the permutation group S5 (Power et al., 2022): 120 elements, 14,400 pairs."""

from __future__ import annotations

import itertools

import torch

from groklab.tasks import Task

PERMS = list(itertools.permutations(range(5)))
INDEX = {p: i for i, p in enumerate(PERMS)}


def _compose(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """(a*b)(i) = a(b(i)): apply b first."""
    return tuple(a[b[i]] for i in range(5))


def _inverse(a: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * 5
    for i, v in enumerate(a):
        inv[v] = i
    return tuple(inv)


OPS = {
    "x*y": lambda a, b: _compose(a, b),
    "x*y*x^-1": lambda a, b: _compose(_compose(a, b), _inverse(a)),
    "x*y*x": lambda a, b: _compose(_compose(a, b), a),
}


def make(op: str) -> Task:
    n = len(PERMS)
    f = OPS[op]
    rows = [(i, j, INDEX[f(a, b)]) for i, a in enumerate(PERMS) for j, b in enumerate(PERMS)]
    t = torch.tensor(rows)
    x, y, labels = t[:, 0], t[:, 1], t[:, 2]
    inputs = torch.stack([x, torch.full_like(x, n), y, torch.full_like(x, n + 1)], dim=1)
    return Task(inputs=inputs, labels=labels, vocab_size=n + 2, n_classes=n, operands=(0, 2))
