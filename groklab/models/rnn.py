"""Recurrent network (GRU or LSTM) for token tasks, batched over runs.

Token embeddings of `width`, `layers` recurrent layers of `width` (each layer's output sequence, dropped out,
is the next one's input), and a linear read-out at the answer positions, as the transformer's: the last
position (`=`) for a single answer, the last L for a sequence answer. The cells are written out with batched
matmuls over the run axis, with nn.GRU's and nn.LSTM's gate order, equations and initialisation (every weight
and bias U(±1/√width); embeddings N(0, 1) as nn.Embedding), so copying the weights into nn.GRU / nn.LSTM
gives the same outputs:
  GRU   r, z = σ(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z});  n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
        h' = (1 − z) ⊙ n + z ⊙ h
  LSTM  i, f, o = σ(W_i· x + b_i· + W_h· h + b_h·);  g = tanh(W_ig x + b_ig + W_hg h + b_hg)
        c' = f ⊙ c + i ⊙ g;  h' = o ⊙ tanh(c')
`rnn<i>.ih.w` [width, G·width] is nn's weight_ih_l<i> transposed (gate blocks r, z, n or i, f, g, o), likewise
`hh` for weight_hh; `ih.b`, `hh.b` are bias_ih, bias_hh.
"""

from __future__ import annotations

import math

import torch

from groklab.config import ModelConfig
from groklab.models import Buffers, Dropout, Params, embed, linear, linear_init, uniform
from groklab.tasks import Task

GATES = {"gru": 3, "lstm": 4}


def init(cfg: ModelConfig, task: Task, g: torch.Generator) -> tuple[Params, set[str], Buffers]:
    if task.features:
        raise ValueError("model.kind: the rnn needs a token task; use mlp, resmlp or cnn for task.name=digits")
    d, gd = cfg.width, GATES[cfg.cell] * cfg.width
    p: Params = {"tok": torch.randn(task.vocab_size, d, generator=g)}
    bound = 1 / math.sqrt(d)
    for i in range(cfg.layers):  # in nn.GRU's parameter order: weight_ih, weight_hh, bias_ih, bias_hh
        p[f"rnn{i}.ih.w"], p[f"rnn{i}.hh.w"] = uniform((d, gd), bound, g), uniform((d, gd), bound, g)
        p[f"rnn{i}.ih.b"], p[f"rnn{i}.hh.b"] = uniform((gd,), bound, g), uniform((gd,), bound, g)
    p["out.w"], p["out.b"] = linear_init(d, task.n_classes, g)
    scaled = {k for k in p if k.endswith(".w") or k == "tok"}
    return p, scaled, {}


def layer(p: Params, i: int, x: torch.Tensor, cell: str) -> torch.Tensor:
    """Recurrent layer i over x [R, B, T, D] from a zero state: the hidden states [R, B, T, D]."""
    runs, batch, steps, d = x.shape
    xi = linear(x, p[f"rnn{i}.ih.w"], p[f"rnn{i}.ih.b"])  # the input's part of every gate, all steps at once
    h = c = torch.zeros(runs, batch, d, dtype=xi.dtype, device=x.device)
    out = []
    for s in range(steps):
        gi, gh = xi[:, :, s], linear(h, p[f"rnn{i}.hh.w"], p[f"rnn{i}.hh.b"])
        if cell == "gru":
            (ir, iz, i_n), (hr, hz, hn) = gi.chunk(3, -1), gh.chunk(3, -1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            n = torch.tanh(i_n + r * hn)
            h = (1 - z) * n + z * h
        else:
            ig, fg, gg, og = (gi + gh).chunk(4, -1)
            c = torch.sigmoid(fg) * c + torch.sigmoid(ig) * torch.tanh(gg)
            h = torch.sigmoid(og) * torch.tanh(c)
        out.append(h)
    return torch.stack(out, 2)


def forward(
    p: Params, tokens: torch.Tensor, cfg: ModelConfig, task: Task, dropout: Dropout, buffers: Buffers, train: bool
) -> torch.Tensor:
    x = embed(p["tok"], tokens)  # [R, B, T, D]
    for i in range(cfg.layers):
        x = layer(p, i, x, cfg.cell)
        if i == cfg.layers - 1:
            x = x[:, :, -task.n_outputs :]  # [R, B, L, D]: only the answer positions are read out
        x = dropout(x)
    return linear(x, p["out.w"], p["out.b"])
