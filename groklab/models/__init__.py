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


# Initialisation follows PyTorch's defaults for nn.Linear / nn.Embedding / nn.MultiheadAttention / nn.Conv2d /
# nn.GRU / nn.LSTM, so a groklab run starts where the reference repositories' runs start.
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
    """Batch norm of x [R, B, D] (MLP) or [R, B, D, H, W] (CNN) per run and channel D, over the batch (and
    spatial) axes, as nn.BatchNorm1d / 2d do: batch statistics in training (running statistics updated in
    place), running statistics in eval."""
    mean_k, var_k = f"{name}.running_mean", f"{name}.running_var"
    dims = (1, *range(3, x.dim()))
    view = (x.shape[0], 1, x.shape[2]) + (1,) * (x.dim() - 3)
    if train:
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, unbiased=False, keepdim=True)
        with torch.no_grad():
            n = x.numel() // (x.shape[0] * x.shape[2])
            unbiased = var.view(buffers[var_k].shape) * (n / max(n - 1, 1))
            buffers[mean_k].lerp_(mean.view(buffers[mean_k].shape).float(), momentum)
            buffers[var_k].lerp_(unbiased.float(), momentum)
    else:
        mean, var = buffers[mean_k].view(view).to(x.dtype), buffers[var_k].view(view).to(x.dtype)
    return (x - mean) / torch.sqrt(var + eps) * g.view(view) + b.view(view)


def module(cfg: ModelConfig):  # noqa: ANN201 - one of the model modules
    from groklab.models import cnn, mlp, rnn, transformer

    return {"transformer": transformer, "cnn": cnn, "rnn": rnn}.get(cfg.kind, mlp)


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
