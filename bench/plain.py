"""The loop users write themselves (danielmamay/grokking style): one nn.Module model, torch.optim.AdamW,
a Python step loop. The baseline every groklab benchmark compares against."""

from __future__ import annotations

import torch
from torch import nn

from groklab.config import Config
from groklab.tasks import make_task, split


class Block(nn.Module):
    def __init__(self, d: int, heads: int, ratio: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, ratio * d), nn.GELU(), nn.Linear(ratio * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        mask = torch.triu(torch.full((t, t), float("-inf"), device=x.device), diagonal=1)
        x = self.ln1(x + self.attn(x, x, x, attn_mask=mask, need_weights=False)[0])
        return self.ln2(x + self.ffn(x))


class Transformer(nn.Module):
    def __init__(self, cfg: Config, vocab: int, seq: int, classes: int):
        super().__init__()
        m = cfg.model
        self.tok, self.pos = nn.Embedding(vocab, m.width), nn.Embedding(seq, m.width)
        self.blocks = nn.Sequential(*[Block(m.width, m.heads, m.mlp_ratio) for _ in range(m.layers)])
        self.head = nn.Sequential(nn.LayerNorm(m.width), nn.Linear(m.width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok(x) + self.pos(torch.arange(x.shape[1], device=x.device))
        return self.head(self.blocks(h)[:, -1])


class MLP(nn.Module):
    def __init__(self, cfg: Config, vocab: int, classes: int):
        super().__init__()
        w = cfg.model.width
        self.emb = nn.Embedding(vocab, w)
        layers: list[nn.Module] = []
        din = 2 * w
        for _ in range(cfg.model.layers):
            layers += [nn.Linear(din, w), nn.ReLU()]
            din = w
        self.net = nn.Sequential(*layers, nn.Linear(din, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.emb(x[:, [0, 2]]).flatten(1))


class PlainRun:
    """One run: model, AdamW, warmup, epoch-shuffled batches, full-set evaluation. With `precision='bf16'` the
    forward runs under `torch.autocast` in bfloat16, as a user's own mixed-precision loop does (fp32 weights and
    optimizer)."""

    def __init__(self, cfg: Config, device: str = "cpu", precision: str = "fp32"):
        torch.manual_seed(cfg.train.seed)
        task = make_task(cfg.task)
        tr, va = split(task, cfg.task, torch.Generator().manual_seed(cfg.train.seed))
        self.x_tr, self.y_tr = task.inputs[tr].to(device), task.labels[tr].to(device)
        self.x_va, self.y_va = task.inputs[va].to(device), task.labels[va].to(device)
        if cfg.model.kind == "transformer":
            self.model = Transformer(cfg, task.vocab_size, task.seq_len, task.n_classes).to(device)
        else:
            self.model = MLP(cfg, task.vocab_size, task.n_classes).to(device)
        o = cfg.optim
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda t: min(1.0, (t + 1) / max(1, o.warmup_steps)))
        self.b = min(cfg.train.batch_size, len(self.y_tr))
        self.perm = torch.randperm(len(self.y_tr), device=device)
        self.pos = 0
        self.step = 0
        self.autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def train_step(self) -> None:
        if self.pos + self.b > len(self.perm):
            self.perm, self.pos = torch.randperm(len(self.y_tr), device=self.perm.device), 0
        idx = self.perm[self.pos : self.pos + self.b]
        self.pos += self.b
        with self.autocast:
            logits = self.model(self.x_tr[idx])
        loss = nn.functional.cross_entropy(logits.float(), self.y_tr[idx])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.step += 1

    @torch.no_grad()
    def accuracy(self) -> tuple[float, float]:
        acc = []
        for x, y in ((self.x_tr, self.y_tr), (self.x_va, self.y_va)):
            correct = sum((self.model(x[i : i + 8192]).argmax(-1) == y[i : i + 8192]).sum().item()
                          for i in range(0, len(y), 8192))
            acc.append(correct / len(y))
        return acc[0], acc[1]
