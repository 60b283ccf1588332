import pytest
import torch
from torch import nn

from groklab import models
from groklab.config import ModelConfig, TaskConfig
from groklab.engine import run_generator
from groklab.tasks import make_task


class RefBlock(nn.Module):
    """The reference decoder block (danielmamay/grokking style), with norm placement as a knob."""

    def __init__(self, d, heads, ratio, norm):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, ratio * d), nn.GELU(), nn.Linear(ratio * d, d))
        self.norm = norm

    def forward(self, x):
        t = x.shape[1]
        mask = torch.triu(torch.full((t, t), float("-inf")), diagonal=1)

        def att(z):
            return self.attn(z, z, z, attn_mask=mask, need_weights=False)[0]

        if self.norm == "post":
            x = self.ln1(x + att(x))
            return self.ln2(x + self.ffn(x))
        if self.norm == "pre":
            x = x + att(self.ln1(x))
            return x + self.ffn(self.ln2(x))
        x = x + att(x)
        return x + self.ffn(x)


def load_reference(p, r, cfg, task):
    d = cfg.width
    blocks = [RefBlock(d, cfg.heads, cfg.mlp_ratio, cfg.norm) for _ in range(cfg.layers)]
    with torch.no_grad():
        for i, b in enumerate(blocks):
            b.attn.in_proj_weight.copy_(p[f"{i}.qkv.w"][r].T)
            b.attn.in_proj_bias.copy_(p[f"{i}.qkv.b"][r])
            b.attn.out_proj.weight.copy_(p[f"{i}.out.w"][r].T)
            b.attn.out_proj.bias.copy_(p[f"{i}.out.b"][r])
            for ln in ("ln1", "ln2") if cfg.norm != "none" else ():  # norm none has no layer-norm parameters
                getattr(b, ln).weight.copy_(p[f"{i}.{ln}.g"][r])
                getattr(b, ln).bias.copy_(p[f"{i}.{ln}.b"][r])
            b.ffn[0].weight.copy_(p[f"{i}.fc1.w"][r].T)
            b.ffn[0].bias.copy_(p[f"{i}.fc1.b"][r])
            b.ffn[2].weight.copy_(p[f"{i}.fc2.w"][r].T)
            b.ffn[2].bias.copy_(p[f"{i}.fc2.b"][r])

    def forward(tokens):
        x = p["tok"][r][tokens] + p["pos"][r]
        for b in blocks:
            x = b(x)
        x = x[:, -1]
        if cfg.norm != "none":
            x = nn.functional.layer_norm(x, (d,), p["ln_f.g"][r], p["ln_f.b"][r])
        return x @ p["unembed.w"][r] + p["unembed.b"][r]

    return forward


def stacked_init(cfg, task, seeds):
    per_run = [models.init(cfg, task, run_generator(s, 1))[0] for s in seeds]
    return {k: torch.stack([p[k] for p in per_run]) for k in per_run[0]}


@pytest.mark.parametrize("norm", ["post", "pre", "none"])
@pytest.mark.parametrize("layers", [1, 2])
def test_transformer_equals_reference_modules(norm, layers):
    """Our batched transformer (which computes the last block only at the '=' position) gives the
    logits of a plain nn.MultiheadAttention transformer with the same weights, for every run."""
    task = make_task(TaskConfig(modulus=23))
    cfg = ModelConfig(layers=layers, width=32, heads=4, norm=norm)
    p = stacked_init(cfg, task, [0, 1, 2])
    tokens = task.inputs[:50]
    logits = models.forward(p, tokens.expand(3, -1, -1), cfg, task)[:, :, 0]
    for r in range(3):
        ref = load_reference(p, r, cfg, task)(tokens)
        torch.testing.assert_close(logits[r], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("act", ["relu", "gelu", "quadratic"])
def test_mlp_equals_reference(act):
    task = make_task(TaskConfig(modulus=23))
    cfg = ModelConfig(kind="mlp", layers=2, width=16, activation=act)
    p = stacked_init(cfg, task, [0, 1])
    tokens = task.inputs[:40]
    f = {"relu": torch.relu, "gelu": nn.functional.gelu, "quadratic": torch.square}[act]
    logits = models.forward(p, tokens.expand(2, -1, -1), cfg, task)[:, :, 0]
    for r in range(2):
        x = torch.cat([p["tok"][r][tokens[:, 0]], p["tok"][r][tokens[:, 2]]], dim=-1)
        for i in range(2):
            x = f(x @ p[f"{i}.w"][r] + p[f"{i}.b"][r])
        torch.testing.assert_close(logits[r], x @ p["out.w"][r] + p["out.b"][r], rtol=1e-5, atol=1e-5)


def test_init_is_per_seed_and_matches_torch_default_scales():
    task = make_task(TaskConfig(modulus=97))
    cfg = ModelConfig(width=128)
    a, scaled, _ = models.init(cfg, task, run_generator(0, 1))
    b, _, _ = models.init(cfg, task, run_generator(0, 1))
    c, _, _ = models.init(cfg, task, run_generator(1, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["tok"], c["tok"])
    assert abs(a["tok"].std().item() - 1.0) < 0.05  # nn.Embedding: N(0, 1)
    assert a["0.fc1.w"].abs().max() <= 1 / 128**0.5  # nn.Linear: U(-1/sqrt(fan_in), ..)
    assert "tok" in scaled and "0.fc1.w" in scaled and "0.ln1.g" not in scaled
