"""Batched models: every parameter carries a leading run axis R.

A model is two plain functions: `init(cfg, task, generator)` returns one run's parameters (no run
axis), drawn from that run's own generator; `forward(params, inputs, cfg, task, ...)` maps stacked
parameters [R, ...] and inputs [R, B, ...] to logits [R, B, L, C]. Runs never mix: every op is batched
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
Buffers = dict[str, torch.Tensor]  # non-trained state [R, ...] (batch-norm running statistics)
Dropout = Callable[[torch.Tensor], torch.Tensor]


def no_dropout(x: torch.Tensor) -> torch.Tensor:
    return x


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x [R, ..., Din] @ w [R, Din, Dout] + b [R, Dout], batched over runs, in w's dtype."""
    shape = x.shape
    x2 = x.reshape(shape[0], -1, shape[-1]).to(w.dtype)
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
    # (F.one_hot would also work, but it checks the token range with two reductions per call.)
    vocab = torch.arange(table.shape[1], device=tokens.device)
    onehot = (tokens.reshape(tokens.shape[0], -1, 1) == vocab).to(table.dtype)
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


def batch_norm(
    x: torch.Tensor, g: torch.Tensor, b: torch.Tensor, buffers: Buffers, name: str, train: bool,
    momentum: float = 0.1, eps: float = 1e-5,
) -> torch.Tensor:
    """Batch norm over the batch axis of x [R, B, D], separately per run, as nn.BatchNorm1d does:
    batch statistics in training (running statistics updated in place), running statistics in eval."""
    mean_k, var_k = f"{name}.running_mean", f"{name}.running_var"
    if train:
        mean = x.mean(1, keepdim=True)
        var = x.var(1, unbiased=False, keepdim=True)
        with torch.no_grad():
            n = x.shape[1]
            unbiased = var.squeeze(1) * (n / max(n - 1, 1))
            buffers[mean_k].lerp_(mean.squeeze(1).float(), momentum)
            buffers[var_k].lerp_(unbiased.float(), momentum)
    else:
        mean, var = buffers[mean_k].unsqueeze(1).to(x.dtype), buffers[var_k].unsqueeze(1).to(x.dtype)
    return (x - mean) / torch.sqrt(var + eps) * g.unsqueeze(1) + b.unsqueeze(1)


def module(cfg: ModelConfig):  # noqa: ANN201 - one of the model modules
    from groklab.models import mlp, transformer

    return transformer if cfg.kind == "transformer" else mlp


def init(cfg: ModelConfig, task: Task, generator: torch.Generator) -> tuple[Params, set[str], Buffers]:
    """One run's parameters, the names `init_scale` multiplies (weights, embeddings), and buffers."""
    return module(cfg).init(cfg, task, generator)


def forward(
    params: Params,
    inputs: torch.Tensor,
    cfg: ModelConfig,
    task: Task,
    dropout: Dropout = no_dropout,
    buffers: Buffers | None = None,
    train: bool = False,
) -> torch.Tensor:
    """Logits [R, B, L, C] for inputs [R, B, ...]; L = task.n_outputs."""
    return module(cfg).forward(params, inputs, cfg, task, dropout, buffers or {}, train)
