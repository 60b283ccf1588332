"""MLP and residual MLP, batched over runs.

Token tasks: the embeddings of the operand positions are concatenated (x and y for `[x, op, y, =]`;
the op and '=' tokens carry nothing in a one-operation task), the setup of Omnigrok and Gromov's
modular MLP; with `input: onehot` their one-hot vectors are (Doshi et al.; Prieto et al.), no embedding table.
`bias` names the layers with biases (`hidden`, `out`); `init: normal` draws every matrix from N(0, 1/fan-in)
(or N(0, init_std²)). Feature tasks (digits) feed the features through a linear input layer.

mlp:    `layers` hidden layers  h = dropout(act(norm(W h + b)))
resmlp: an input layer to `width`, then `layers` pre-norm residual blocks
        h = h + dropout(W2 act(W1 norm(h) + b1) + b2) with hidden width mlp_ratio x width, a final norm.
norm is none, layer (per-run layer norm) or batch (per-run batch norm with running statistics).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from groklab.config import ModelConfig
from groklab.models import (
    Buffers,
    Dropout,
    Params,
    activation,
    batch_norm,
    embed,
    layer_norm,
    linear,
    linear_init,
)
from groklab.tasks import Task


def _norm_params(p: Params, buffers: Buffers, name: str, d: int, norm: str) -> None:
    if norm == "none":
        return
    p[f"{name}.g"], p[f"{name}.b"] = torch.ones(d), torch.zeros(d)
    if norm == "batch":
        buffers[f"{name}.running_mean"], buffers[f"{name}.running_var"] = torch.zeros(d), torch.ones(d)


def init(cfg: ModelConfig, task: Task, g: torch.Generator) -> tuple[Params, set[str], Buffers]:
    w, out = cfg.width, task.n_classes * task.n_outputs
    p: Params = {}
    buffers: Buffers = {}
    if task.features:
        din = task.inputs.shape[1]
    elif cfg.input == "onehot":
        din = len(task.operands) * task.vocab_size
    else:
        p["tok"] = torch.randn(task.vocab_size, w, generator=g)
        din = len(task.operands) * w
    if cfg.kind == "mlp":
        for i in range(cfg.layers):
            p[f"{i}.w"], p[f"{i}.b"] = linear_init(din, w, g)
            _norm_params(p, buffers, f"{i}.norm", w, cfg.norm)
            din = w
    else:
        h = w * cfg.mlp_ratio
        p["in.w"], p["in.b"] = linear_init(din, w, g)
        for i in range(cfg.layers):
            _norm_params(p, buffers, f"{i}.norm", w, cfg.norm)
            p[f"{i}.fc1.w"], p[f"{i}.fc1.b"] = linear_init(w, h, g)
            p[f"{i}.fc2.w"], p[f"{i}.fc2.b"] = linear_init(h, w, g)
        _norm_params(p, buffers, "final.norm", w, cfg.norm)
        din = w
    p["out.w"], p["out.b"] = linear_init(din, out, g)
    for k in [k for k in p if k.endswith(".b") and ".norm" not in k]:  # drawn above: the weights stay as they were
        if not cfg.has_bias("out" if k == "out.b" else "hidden"):
            del p[k]
    if cfg.init == "normal":
        for k in p:
            if k.endswith(".w") or k == "tok":
                p[k] = torch.randn(p[k].shape, generator=g) * (cfg.init_std or 1 / math.sqrt(p[k].shape[0]))
            elif ".norm" not in k:
                p[k] = torch.zeros_like(p[k])
    scaled = {k for k in p if k.endswith(".w") or k == "tok"}
    return p, scaled, buffers


def forward(
    p: Params, inputs: torch.Tensor, cfg: ModelConfig, task: Task, dropout: Dropout, buffers: Buffers, train: bool
) -> torch.Tensor:
    act = activation(cfg.activation)

    def norm(name: str, z: torch.Tensor) -> torch.Tensor:
        if cfg.norm == "layer":
            return layer_norm(z, p[f"{name}.g"], p[f"{name}.b"])
        if cfg.norm == "batch":
            return batch_norm(z, p[f"{name}.g"], p[f"{name}.b"], buffers, name, train)
        return z

    if task.features:
        x = inputs  # [R, B, F]
    elif cfg.input == "onehot":
        x = F.one_hot(inputs[..., list(task.operands)], task.vocab_size).flatten(-2).to(p["out.w"].dtype)
    else:
        x = embed(p["tok"], inputs[..., list(task.operands)]).flatten(-2)  # [R, B, n_operands * W]
    if cfg.kind == "mlp":
        for i in range(cfg.layers):
            x = dropout(act(norm(f"{i}.norm", linear(x, p[f"{i}.w"], p.get(f"{i}.b")))))
    else:
        x = linear(x, p["in.w"], p.get("in.b"))
        for i in range(cfg.layers):
            h = act(linear(norm(f"{i}.norm", x), p[f"{i}.fc1.w"], p.get(f"{i}.fc1.b")))
            x = x + dropout(linear(h, p[f"{i}.fc2.w"], p.get(f"{i}.fc2.b")))
        x = norm("final.norm", x)
    logits = linear(x, p["out.w"], p.get("out.b"))
    return logits.view(*logits.shape[:2], task.n_outputs, task.n_classes)
