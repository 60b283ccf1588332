"""MLP on the two operands: embeddings of x and y concatenated, `layers` hidden layers, a readout.

The op and '=' tokens carry no information in a one-operation task, so the MLP reads positions 0
and 2 of `[x, op, y, =]` only (the setup of Liu et al.'s Omnigrok and Gromov's modular MLP).
"""

from __future__ import annotations

import torch

from groklab.config import ModelConfig
from groklab.models import Dropout, Params, activation, embed, linear, linear_init
from groklab.tasks import Task


def init(cfg: ModelConfig, task: Task, g: torch.Generator) -> tuple[Params, set[str]]:
    w = cfg.width
    p: Params = {"tok": torch.randn(task.vocab_size, w, generator=g)}
    din = 2 * w
    for i in range(cfg.layers):
        p[f"{i}.w"], p[f"{i}.b"] = linear_init(din, w, g)
        din = w
    p["out.w"], p["out.b"] = linear_init(din, task.n_classes, g)
    scaled = {k for k in p if k.endswith(".w") or k == "tok"}
    return p, scaled


def forward(p: Params, tokens: torch.Tensor, cfg: ModelConfig, dropout: Dropout) -> torch.Tensor:
    act = activation(cfg.activation)
    e = embed(p["tok"], tokens[..., [0, 2]])  # [R, B, 2, W]
    x = e.flatten(-2)  # [R, B, 2W]
    for i in range(cfg.layers):
        x = dropout(act(linear(x, p[f"{i}.w"], p[f"{i}.b"])))
    return linear(x, p["out.w"], p["out.b"])
