"""Sequence tasks: sort, reverse or copy a sequence of `length` symbols.

Input `[a1 .. aL, =, q1 .. qL]`: the query tokens q_i mark where output i is read (the model sees
the whole input and answers every position at once, no teacher forcing). Labels are [N, L]; an
example counts as correct only if all L outputs are.
"""

from __future__ import annotations

import itertools

import torch

from groklab.tasks import Task


def make(op: str, symbols: int, length: int) -> Task:
    seqs = torch.tensor(list(itertools.product(range(symbols), repeat=length)))  # [N, L]
    if op == "sort":
        labels = seqs.sort(dim=1).values
    elif op == "reverse":
        labels = seqs.flip(1)
    else:
        labels = seqs.clone()
    n = len(seqs)
    eq = torch.full((n, 1), symbols)
    queries = (symbols + 1 + torch.arange(length)).expand(n, -1)
    inputs = torch.cat([seqs, eq, queries], dim=1)
    return Task(inputs=inputs, labels=labels, vocab_size=symbols + 1 + length, n_classes=symbols,
                operands=tuple(range(length)))
