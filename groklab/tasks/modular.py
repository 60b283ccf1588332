"""Binary operations modulo a prime (Power et al., 2022): sequences `[x, op, y, =]` -> x∘y mod p, or `[x, y, =]`
without the operator token (Nanda et al., 2023)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from groklab.tasks import Task

Op = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def _div(x: torch.Tensor, y: torch.Tensor, p: int) -> torch.Tensor:
    inv = torch.tensor([pow(int(v), p - 2, p) for v in range(p)])  # Fermat inverse; y is never 0
    return x * inv[y] % p


OPS: dict[str, Op] = {
    "x+y": lambda x, y, p: (x + y) % p,
    "x-y": lambda x, y, p: (x - y) % p,
    "x*y": lambda x, y, p: (x * y) % p,
    "x/y": _div,
    "x^2+y^2": lambda x, y, p: (x**2 + y**2) % p,
    "x^2+xy+y^2": lambda x, y, p: (x**2 + x * y + y**2) % p,
    "x^2+xy+y^2+x": lambda x, y, p: (x**2 + x * y + y**2 + x) % p,
    "x^3+xy": lambda x, y, p: (x**3 + x * y) % p,
    "x^3+xy^2+y": lambda x, y, p: (x**3 + x * y**2 + y) % p,
}


def make(op: str, p: int, op_token: bool = True, skip_zero: bool = False) -> Task:
    xs = torch.arange(p)
    ys = torch.arange(1 if op == "x/y" or skip_zero else 0, p)
    x, y = torch.cartesian_prod(xs, ys).T
    labels = OPS[op](x, y, p)
    if not op_token:  # Nanda et al.: `=` is token p, d_vocab p + 1
        inputs = torch.stack([x, y, torch.full_like(x, p)], dim=1)
        return Task(inputs=inputs, labels=labels, vocab_size=p + 1, n_classes=p, operands=(0, 1))
    op_tok, eq_tok = p, p + 1
    inputs = torch.stack([x, torch.full_like(x, op_tok), y, torch.full_like(x, eq_tok)], dim=1)
    return Task(inputs=inputs, labels=labels, vocab_size=p + 2, n_classes=p, operands=(0, 2))
