"""Batched models: every parameter carries a leading run axis R.

A model is two plain functions: `init(cfg, task, generator)` returns one run's parameters (no run
axis), drawn from that run's own generator; `forward(params, tokens, cfg, dropout)` maps stacked
parameters [R, ...] and tokens [R, B, T] to logits [R, B, C]. Runs never mix: every op is batched
over R, so a run's numbers do not depend on which other runs share its pack.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from groklab.config import ModelConfig
from groklab.tasks import Task

Params = dict[str, torch.Tensor]
Dropout = Callable[[torch.Tensor], torch.Tensor]


def no_dropout(x: torch.Tensor) -> torch.Tensor:
    return x


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x [R, ..., Din] @ w [R, Din, Dout] + b [R, Dout], batched over runs."""
    shape = x.shape
    x2 = x.reshape(shape[0], -1, shape[-1])
    y = torch.bmm(x2, w) if b is None else torch.baddbmm(b.unsqueeze(1), x2, w)
    return y.reshape(*shape[:-1], w.shape[-1])


def layer_norm(x: torch.Tensor, g: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Layer norm with a per-run gain and bias [R, D]."""
    view = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    return F.layer_norm(x, x.shape[-1:], eps=eps) * g.view(view) + b.view(view)


def embed(table: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """table [R, V, D], tokens [R, ...] -> [R, ..., D].

    A one-hot batched matmul rather than indexing: the backward of indexing accumulates repeated
    tokens in an order that depends on how many runs share the pack, which would break pack ≡ solo
    in the last bits. The vocabularies here are small (≤ a few hundred), so this costs little.
    """
    onehot = F.one_hot(tokens.reshape(tokens.shape[0], -1), table.shape[1]).to(table.dtype)
    return torch.bmm(onehot, table).view(*tokens.shape, table.shape[-1])


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    return {"relu": F.relu, "gelu": F.gelu, "quadratic": torch.square}[name]


# Initialisation follows PyTorch's defaults for nn.Linear / nn.Embedding / nn.MultiheadAttention,
# so a groklab run starts where the reference repositories' runs start.
def uniform(shape: tuple[int, ...], bound: float, g: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=g) * 2 - 1) * bound


def linear_init(din: int, dout: int, g: torch.Generator, bias: bool = True) -> list[torch.Tensor]:
    bound = 1 / math.sqrt(din)
    w = uniform((din, dout), bound, g)
    return [w, uniform((dout,), bound, g)] if bias else [w]


def init(cfg: ModelConfig, task: Task, generator: torch.Generator) -> tuple[Params, set[str]]:
    """One run's parameters and the names that `init_scale` multiplies (weights, embeddings)."""
    from groklab.models import mlp, transformer

    module = transformer if cfg.kind == "transformer" else mlp
    return module.init(cfg, task, generator)


def forward(params: Params, tokens: torch.Tensor, cfg: ModelConfig, dropout: Dropout = no_dropout) -> torch.Tensor:
    from groklab.models import mlp, transformer

    module = transformer if cfg.kind == "transformer" else mlp
    return module.forward(params, tokens, cfg, dropout)
