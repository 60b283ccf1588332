"""Decoder-only transformer, batched over runs; predicts the answer from the last position.


A sequence answer of L tokens is read at the last L positions. Same architecture as the grokking
reference implementations (Power et al.; danielmamay/grokking):
token + learned position embeddings, `layers` blocks of causal self-attention and a GELU MLP,
a final layer norm and an unembedding. `norm` chooses post-norm (x = LN(x + f(x))), pre-norm
(x = x + f(LN(x))), Grokfast's pre_replace (the first LN replaces the stream: x = LN(x); x = x + attn(x)) or none.
`bias` names the parts with biases (Nanda et al.: only the MLP).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from groklab.config import ModelConfig
from groklab.models import Buffers, Dropout, Params, activation, embed, layer_norm, linear, linear_init
from groklab.tasks import Task


def init(cfg: ModelConfig, task: Task, g: torch.Generator) -> tuple[Params, set[str], Buffers]:
    if task.features:
        raise ValueError("model.kind: the transformer needs a token task; use mlp or resmlp for task.name=digits")
    d, h = cfg.width, cfg.width * cfg.mlp_ratio
    p: Params = {
        "tok": torch.randn(task.vocab_size, d, generator=g),
        "pos": torch.randn(task.seq_len, d, generator=g),
    }
    for i in range(cfg.layers):
        bound = math.sqrt(6 / (d + 3 * d))  # xavier_uniform on the fused [3d, d] in-projection
        p[f"{i}.qkv.w"] = (torch.rand(d, 3 * d, generator=g) * 2 - 1) * bound
        p[f"{i}.qkv.b"] = torch.zeros(3 * d)
        p[f"{i}.out.w"] = linear_init(d, d, g, bias=False)[0]
        p[f"{i}.out.b"] = torch.zeros(d)
        if cfg.norm != "none":  # a model creates exactly the parameters its forward pass reads
            p[f"{i}.ln1.g"], p[f"{i}.ln1.b"] = torch.ones(d), torch.zeros(d)
        p[f"{i}.fc1.w"], p[f"{i}.fc1.b"] = linear_init(d, h, g)
        p[f"{i}.fc2.w"], p[f"{i}.fc2.b"] = linear_init(h, d, g)
        if cfg.norm != "none":
            p[f"{i}.ln2.g"], p[f"{i}.ln2.b"] = torch.ones(d), torch.zeros(d)
    if cfg.norm != "none":
        p["ln_f.g"], p["ln_f.b"] = torch.ones(d), torch.zeros(d)
    p["unembed.w"], p["unembed.b"] = linear_init(d, task.n_classes, g)
    # The biases are drawn (or not) before this, so leaving some out changes no other parameter's start.
    absent = {"attn": (".qkv.b", ".out.b"), "mlp": (".fc1.b", ".fc2.b"), "unembed": ("unembed.b",)}
    for part, suffixes in absent.items():
        if not cfg.has_bias(part):
            p = {k: v for k, v in p.items() if not k.endswith(suffixes)}
    if cfg.init == "normal":  # Nanda et al.: every matrix randn/sqrt(d_model), the unembedding randn/sqrt(classes)
        for k in p:
            if k.endswith(".w") or k in ("tok", "pos"):
                fan = task.n_classes if k == "unembed.w" else d
                p[k] = torch.randn(p[k].shape, generator=g) * (cfg.init_std or 1 / math.sqrt(fan))
            elif k.endswith(".b") and ".ln" not in k and not k.startswith("ln_f"):
                p[k] = torch.zeros_like(p[k])
    scaled = {k for k in p if k.endswith(".w") or k in ("tok", "pos")}
    return p, scaled, {}


def attention(p: Params, i: int, x: torch.Tensor, heads: int, last: int = 0) -> torch.Tensor:
    """Causal self-attention; with `last` > 0, queries only from the last `last` positions."""
    r, b, t, d = x.shape
    w, bias = p[f"{i}.qkv.w"], p.get(f"{i}.qkv.b")
    if last:  # queries only from the last `last` positions; each attends to every position up to its own
        bq, bkv = (None, None) if bias is None else (bias[:, :d], bias[:, d:])
        q = linear(x[:, :, -last:], w[..., :d], bq).view(r * b, last, heads, d // heads).transpose(1, 2)
        kv = linear(x, w[..., d:], bkv)  # [R, B, T, 2D]
        k, v = kv.view(r * b, t, 2, heads, d // heads).permute(2, 0, 3, 1, 4)  # 2 x [RB, H, T, dh]
    else:
        qkv = linear(x, w, bias)  # [R, B, T, 3D]
        q, k, v = qkv.view(r * b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)  # 3 x [RB, H, T, dh]
    n = last or t
    if q.dtype == torch.bfloat16 and q.device.type == "cpu":
        # PyTorch's CPU flash-attention kernel is 3-9x slower than plain matmuls in bfloat16 at these
        # sequence lengths (4-17; bench/README.md), so compute it directly, softmax in float32.
        mask = torch.ones(n, t, dtype=torch.bool, device=x.device).tril(t - n)
        s = (q @ k.transpose(-1, -2)).float() * (q.shape[-1] ** -0.5)
        y = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1).to(v.dtype) @ v
    else:
        mask = torch.ones(n, t, dtype=torch.bool, device=x.device).tril(t - n) if last > 1 else None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=not last)
    t = n
    y = y.transpose(1, 2).reshape(r, b, t, d)
    return linear(y, p[f"{i}.out.w"], p.get(f"{i}.out.b"))


def forward(
    p: Params, tokens: torch.Tensor, cfg: ModelConfig, task: Task, dropout: Dropout, buffers: Buffers, train: bool
) -> torch.Tensor:
    act = activation(cfg.activation)
    x = embed(p["tok"], tokens) + p["pos"].unsqueeze(1)  # [R, B, T, D]

    def mlp(i: int, z: torch.Tensor) -> torch.Tensor:
        return linear(act(linear(z, p[f"{i}.fc1.w"], p.get(f"{i}.fc1.b"))), p[f"{i}.fc2.w"], p.get(f"{i}.fc2.b"))

    def ln(name: str, z: torch.Tensor) -> torch.Tensor:
        return layer_norm(z, p[f"{name}.g"], p[f"{name}.b"])

    n_out = task.n_outputs
    for i in range(cfg.layers):
        # Only the last n_out positions are read out, so the last block computes nothing else.
        last = n_out if i == cfg.layers - 1 else 0
        res = x[:, :, -last:] if last else x
        if cfg.norm == "post":
            x = ln(f"{i}.ln1", res + dropout(attention(p, i, x, cfg.heads, last)))
            x = ln(f"{i}.ln2", x + dropout(mlp(i, x)))
        elif cfg.norm == "pre":
            x = res + dropout(attention(p, i, ln(f"{i}.ln1", x), cfg.heads, last))
            x = x + dropout(mlp(i, ln(f"{i}.ln2", x)))
        elif cfg.norm == "pre_replace":  # Grokfast's block: the normalised stream is what the residual carries
            x = ln(f"{i}.ln1", x)
            x = (x[:, :, -last:] if last else x) + dropout(attention(p, i, x, cfg.heads, last))
            x = x + dropout(mlp(i, ln(f"{i}.ln2", x)))
        else:
            x = res + dropout(attention(p, i, x, cfg.heads, last))
            x = x + dropout(mlp(i, x))
    # x: [R, B, n_out, D], the answers' positions (the '=' token for a single answer)
    if cfg.norm != "none":
        x = ln("ln_f", x)
    return linear(x, p["unembed.w"], p.get("unembed.b"))
