import pytest
import torch
from torch import nn

from groklab import models
from groklab.config import ConfigError, ModelConfig, TaskConfig, make_config
from groklab.engine import Pack, run_generator, train
from groklab.measures import norms
from groklab.metrics import EVAL_METRICS
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


# ---- cnn and rnn: equal to nn.Conv2d / nn.GRU / nn.LSTM modules with the same weights ------------------
def cnn_reference(p, r, cfg):
    """A plain nn.Sequential CNN holding run r's weights, and [(groklab name, its parameter, view as groklab's)]."""
    layers, pairs, cin = [], [], 1
    for i, cout in enumerate(cfg.channels):
        conv = nn.Conv2d(cin, cout, cfg.kernel_size, padding="same", bias=cfg.norm == "none")
        layers.append(conv)
        pairs.append((f"conv{i}.w", conv.weight, lambda t: t))
        if conv.bias is not None:  # with batch norm the conv has no bias
            pairs.append((f"conv{i}.b", conv.bias, lambda t: t))
        if cfg.norm == "batch":
            bn = nn.BatchNorm2d(cout)
            layers.append(bn)
            pairs += [(f"conv{i}.norm.g", bn.weight, lambda t: t), (f"conv{i}.norm.b", bn.bias, lambda t: t)]
        layers.append(nn.ReLU() if cfg.activation == "relu" else nn.GELU())
        layers += {"max": [nn.MaxPool2d(2)], "avg": [nn.AvgPool2d(2)], "none": []}[cfg.pool]
        cin = cout
    head = nn.Linear(p["out.w"].shape[1], p["out.w"].shape[2])
    pairs += [("out.w", head.weight, lambda t: t.T), ("out.b", head.bias, lambda t: t)]
    module = nn.Sequential(*layers, nn.Flatten(), head)
    with torch.no_grad():
        for name, param, view in pairs:
            param.copy_(view(p[name][r]))
    return module, pairs


def rnn_reference(p, r, cfg):
    """nn.Embedding + nn.GRU / nn.LSTM (batch_first) + nn.Linear holding run r's weights, and the name pairs."""
    d = cfg.width
    emb = nn.Embedding(*p["tok"].shape[1:])
    rnn = (nn.GRU if cfg.cell == "gru" else nn.LSTM)(d, d, num_layers=cfg.layers, batch_first=True)
    head = nn.Linear(d, p["out.w"].shape[2])
    pairs = [("tok", emb.weight, lambda t: t), ("out.w", head.weight, lambda t: t.T), ("out.b", head.bias, lambda t: t)]
    for i in range(cfg.layers):
        pairs += [(f"rnn{i}.ih.w", getattr(rnn, f"weight_ih_l{i}"), lambda t: t.T),
                  (f"rnn{i}.hh.w", getattr(rnn, f"weight_hh_l{i}"), lambda t: t.T),
                  (f"rnn{i}.ih.b", getattr(rnn, f"bias_ih_l{i}"), lambda t: t),
                  (f"rnn{i}.hh.b", getattr(rnn, f"bias_hh_l{i}"), lambda t: t)]
    with torch.no_grad():
        for name, param, view in pairs:
            param.copy_(view(p[name][r]))
    return nn.ModuleList([emb, rnn, head]), pairs


def rnn_apply(module, tokens, n_out):
    emb, rnn, head = module
    return head(rnn(emb(tokens))[0][:, -n_out:])


CNN_CASES = [("none", "max", "relu", (6, 8), 3), ("batch", "avg", "gelu", (4, 4, 5), 3), ("batch", "none", "relu", (5,), 5)]


@pytest.mark.parametrize("norm,pool,act,channels,k", CNN_CASES)
def test_cnn_equals_reference_modules(norm, pool, act, channels, k):
    """Forward logits (batch norm in training mode, then its running statistics) equal nn.Conv2d / nn.BatchNorm2d /
    nn.MaxPool2d / nn.Linear with the same weights, for every run of a pack."""
    task = make_task(TaskConfig(name="digits"))
    cfg = ModelConfig(kind="cnn", channels=channels, kernel_size=k, pool=pool, norm=norm, activation=act)
    per_run = [models.init(cfg, task, run_generator(s, 1)) for s in (0, 1, 2)]
    p = {k: torch.stack([q[0][k] for q in per_run]) for k in per_run[0][0]}
    buffers = {k: torch.stack([q[2][k] for q in per_run]) for k in per_run[0][2]}
    x = task.inputs[:40]
    logits = models.forward(p, x.expand(3, -1, -1), cfg, task, buffers=buffers, train=True)[:, :, 0]
    for r in range(3):
        ref, _ = cnn_reference(p, r, cfg)
        torch.testing.assert_close(logits[r], ref.train()(x.view(-1, 1, 8, 8)), rtol=1e-5, atol=1e-5)
        for i, bn in enumerate(m for m in ref if isinstance(m, nn.BatchNorm2d)):
            torch.testing.assert_close(buffers[f"conv{i}.norm.running_mean"][r], bn.running_mean)
            torch.testing.assert_close(buffers[f"conv{i}.norm.running_var"][r], bn.running_var)
        if norm == "batch":  # evaluation reads the running statistics
            torch.testing.assert_close(models.forward(p, x.expand(3, -1, -1), cfg, task, buffers=buffers)[r, :, 0],
                                       ref.eval()(x.view(-1, 1, 8, 8)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("task_cfg", [TaskConfig(modulus=23), TaskConfig(name="sequence", symbols=3, length=3)])
def test_rnn_equals_torch_gru_and_lstm(cell, task_cfg):
    """Logits at the answer positions (the last one, or the last L of a sequence answer) equal nn.GRU / nn.LSTM's."""
    task = make_task(task_cfg)
    cfg = ModelConfig(kind="rnn", cell=cell, layers=2, width=12)
    p = stacked_init(cfg, task, [0, 1])
    tokens = task.inputs[:30]
    logits = models.forward(p, tokens.expand(2, -1, -1), cfg, task)
    for r in range(2):
        ref, _ = rnn_reference(p, r, cfg)
        torch.testing.assert_close(logits[r], rnn_apply(ref, tokens, task.n_outputs), rtol=1e-5, atol=1e-5)


def _one_step_equals_adamw(raw, reference, apply):
    """Two runs (different seeds, lr, decay) take one full-batch step in a Pack; each run's parameters then equal
    torch.optim.AdamW's after one step of the reference module with the same starting weights."""
    cfgs = [make_config(raw, {"train.seed": s, "optim.lr": lr, "optim.weight_decay": wd})
            for s, lr, wd in [(0, 1e-2, 1.0), (1, 3e-3, 0.1)]]
    pack = Pack(cfgs)
    start = {k: v.detach().clone() for k, v in pack.params.items()}
    refs = [reference(start, r, cfgs[r].model) for r in range(2)]
    pack.train_step()
    for r, (module, pairs) in enumerate(refs):
        o = cfgs[r].optim
        opt = torch.optim.AdamW(module.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        idx = pack.train_idx[r]
        logits = apply(module.train(), pack.inputs[idx])
        nn.functional.cross_entropy(logits.double().flatten(0, -2), pack.labels[idx].flatten()).backward()
        opt.step()
        for name, param, view in pairs:
            torch.testing.assert_close(pack.params[name][r], view(param.detach()), rtol=1e-5, atol=1e-5, msg=name)


def test_cnn_one_adamw_step_equals_the_reference():
    raw = {"task": {"name": "digits", "train_size": 64}, "model": {"kind": "cnn", "channels": [4, 6], "norm": "batch"},
           "optim": {"warmup_steps": 0}, "train": {"batch_size": 64, "steps": 1, "checkpoint_every": 0}}
    _one_step_equals_adamw(raw, cnn_reference, lambda m, x: m(x.view(-1, 1, 8, 8)))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_rnn_one_adamw_step_equals_the_reference(cell):
    raw = {"task": {"modulus": 11}, "model": {"kind": "rnn", "cell": cell, "layers": 2, "width": 8},
           "optim": {"warmup_steps": 0}, "train": {"batch_size": 1000, "steps": 1, "checkpoint_every": 0}}
    _one_step_equals_adamw(raw, rnn_reference, lambda m, x: rnn_apply(m, x, 1)[:, 0])


@pytest.mark.parametrize("model,task", [({"kind": "cnn", "channels": [3, 5], "norm": "batch"}, {"name": "digits"}),
                                        ({"kind": "rnn", "cell": "gru", "width": 8}, {"modulus": 11}),
                                        ({"kind": "rnn", "cell": "lstm", "width": 8, "layers": 1},
                                         {"name": "sequence", "symbols": 3, "length": 3}),
                                        # the reproduction presets' models (Nanda et al., Grokfast, Doshi et al.)
                                        ({"layers": 1, "width": 16, "norm": "none", "bias": ["mlp"],
                                          "activation": "relu"}, {"modulus": 11, "op_token": False}),
                                        ({"layers": 2, "width": 16, "norm": "pre_replace", "bias": ["attn", "mlp"]},
                                         {"modulus": 11, "op": "x*y", "skip_zero": True}),
                                        ({"kind": "mlp", "layers": 1, "width": 16, "activation": "quadratic",
                                          "input": "onehot", "bias": [], "init": "normal", "init_std": 0.05},
                                         {"modulus": 11})])
def test_pack_equals_solo_for_cnn_and_rnn(model, task):
    """Three runs with different seeds, lr, decay, init scale and dropout in one pack give, bit for bit, the
    curves each gives alone: the convolution and the cells never mix runs."""
    raw = {"task": {**task, "train_frac": 0.3}, "model": model,
           "train": {"steps": 30, "eval_every": 10, "batch_size": 32, "checkpoint_every": 0, "save_weights": False}}
    cfgs = [make_config(raw, {"train.seed": s, "optim.lr": lr, "optim.weight_decay": wd, "model.init_scale": a,
                              "model.dropout": q})
            for s, lr, wd, a, q in [(0, 3e-3, 1.0, 1.0, 0.0), (1, 1e-2, 0.1, 2.0, 0.2), (2, 1e-3, 3.0, 0.5, 0.1)]]
    pack = {r.run_id: r for r in train(cfgs)}
    for c in cfgs:
        (solo,) = train([c])
        for k in EVAL_METRICS:
            assert pack[c.run_id].curves[k] == solo.curves[k], k


@pytest.mark.parametrize("raw,steps", [
    # ~1 s here: memorizes 256 digits at step ~100
    ({"task": {"name": "digits", "train_size": 256}, "model": {"kind": "cnn", "channels": [8, 16]},
      "optim": {"lr": 1e-2, "weight_decay": 0.0}, "train": {"batch_size": 64}}, 150),
    # ~0.5 s here: memorizes x+y mod 23 (264 train pairs) at step ~50
    ({"task": {"modulus": 23}, "model": {"kind": "rnn", "cell": "gru", "layers": 1, "width": 64},
      "optim": {"lr": 1e-2, "weight_decay": 0.0}, "train": {"batch_size": 128}}, 100),
])
def test_small_cnn_and_gru_fit_their_train_sets(raw, steps):
    raw["train"].update(steps=steps, eval_every=steps, checkpoint_every=0, save_weights=False)
    (r,) = train([make_config(raw)])
    assert r.curves["train_acc"][-1] >= 0.99


def test_cnn_and_rnn_init_as_torch_and_name_their_norm_groups():
    digits, mod = make_task(TaskConfig(name="digits")), make_task(TaskConfig(modulus=23))
    cnn = ModelConfig(kind="cnn", channels=[16, 32], kernel_size=5, norm="batch")
    p, scaled, buffers = models.init(cnn, digits, run_generator(0, 1))
    assert p["conv1.w"].shape == (32, 16, 5, 5) and p["out.w"].shape == (32 * 2 * 2, 10)
    assert p["conv1.w"].abs().max() <= 1 / (16 * 25) ** 0.5 and p["conv1.w"].abs().max() > 0.9 / (16 * 25) ** 0.5
    assert scaled == {"conv0.w", "conv1.w", "out.w"} and set(buffers) == {
        f"conv{i}.norm.running_{s}" for i in (0, 1) for s in ("mean", "var")}
    q, scaled, _ = models.init(ModelConfig(kind="rnn", cell="lstm", layers=2, width=16), mod, run_generator(0, 1))
    assert q["rnn1.hh.w"].shape == (16, 64) and q["rnn0.ih.b"].abs().max() <= 0.25 and abs(q["tok"].std() - 1) < 0.1
    assert scaled == {"tok", "out.w", "rnn0.ih.w", "rnn0.hh.w", "rnn1.ih.w", "rnn1.hh.w"}
    assert {norms.group_of(k) for k in p} == {"conv0", "conv1", "last"}
    assert {norms.group_of(k) for k in q} == {"embed", "rnn0", "rnn1", "last"}


@pytest.mark.parametrize("overrides,message", [
    ({"model.kind": "cnn"}, "model.kind: the cnn needs an image task (digits) and task.name=modular is not one; "
                            "allowed for modular: transformer, mlp, resmlp, rnn"),
    ({"model.kind": "rnn", "task.name": "digits"}, "model.kind: the rnn needs a token task and task.name=digits "
                                                   "is a feature task; allowed for digits: mlp, resmlp, cnn"),
    ({"model.kind": "cnn", "task.name": "digits", "model.channels": [4] * 4}, "at most 3 layers, or model.pool=none"),
    ({"model.kind": "cnn", "task.name": "digits", "model.kernel_size": 4}, "model.kernel_size: must be odd"),
    ({"model.kind": "rnn", "model.norm": "batch"}, "model.norm: 'batch' is not available for model.kind=rnn"),
    ({"model.cell": "lstm"}, "model.cell: applies only to model.kind=rnn"),
    ({"model.kind": "mlp", "model.channels": [8]}, "model.channels: applies only to model.kind=cnn"),
    ({"model.kind": "rnn", "model.activation": "relu"}, "model.activation: applies only to model.kind other than rnn"),
    ({"model.kind": "rnn", "model.heads": 2}, "model.heads: applies only to model.kind=transformer"),
    ({"model.kind": "cnn", "task.name": "digits", "model.width": 64}, "model.width: applies only to model.kind other"),
])
def test_cnn_and_rnn_keys_are_refused_where_they_do_not_apply(overrides, message):
    with pytest.raises(ConfigError) as e:
        make_config(None, overrides)
    assert message in str(e.value)


def test_cnn_and_rnn_keys_stay_out_of_other_models_run_ids():
    """The resolved form of a transformer / MLP has no cnn or rnn keys, so adding those models kept earlier run ids."""
    assert not {"channels", "kernel_size", "pool", "cell"} & set(make_config({}).resolved()["model"])
    assert make_config(None, {"model.kind": "rnn"}).resolved()["model"]["cell"] == "gru"
    cnn = make_config(None, {"model.kind": "cnn", "task.name": "digits", "model.channels": [8]})
    assert cnn.resolved()["model"]["channels"] == [8] and make_config(cnn).run_id == cnn.run_id


def test_bias_free_onehot_mlp_is_doshi_et_al_s_network():
    """Linear(2p -> w, no bias) -> x² -> Linear(w -> p, no bias) on one-hot a ⊕ b, weights N(0, 0.05²)."""
    task = make_task(TaskConfig(modulus=11))
    cfg = ModelConfig(kind="mlp", layers=1, width=64, activation="quadratic", input="onehot", bias=[], init="normal",
                      init_std=0.05)
    p = stacked_init(cfg, task, [0, 1])
    assert sorted(k for k in p) == ["0.w", "out.w"]  # no biases, no embedding table
    assert p["0.w"].std().item() == pytest.approx(0.05, rel=0.1)
    tokens = task.inputs[:30]
    logits = models.forward(p, tokens.expand(2, -1, -1), cfg, task)[:, :, 0]
    x = torch.cat([nn.functional.one_hot(tokens[:, 0], task.vocab_size),
                   nn.functional.one_hot(tokens[:, 2], task.vocab_size)], dim=-1).float()
    for r in range(2):
        torch.testing.assert_close(logits[r], (x @ p["0.w"][r]).square() @ p["out.w"][r])


def test_nanda_input_format_and_bias_parts():
    task = make_task(TaskConfig(modulus=11, op_token=False))
    assert task.inputs.shape[1] == 3 and task.vocab_size == 12 and (task.inputs[:, 2] == 11).all()
    assert task.operands == (0, 1)
    cfg = ModelConfig(layers=1, width=16, norm="none", bias=["mlp"])
    p, _, _ = models.init(cfg, task, run_generator(0, 1))
    assert {k for k in p if k.endswith(".b")} == {"0.fc1.b", "0.fc2.b"}
    grokfast = make_task(TaskConfig(modulus=11, op="x*y", skip_zero=True))
    assert len(grokfast) == 110 and (grokfast.inputs[:, 2] > 0).all()


def test_pre_replace_block_is_grokfast_s():
    """x = LN1(x); x = x + attn(x); x = x + mlp(LN2(x)), as ironjr/grokfast's Block: equal to the pre-norm block
    applied to LN1(x) with an identity first norm."""
    task = make_task(TaskConfig(modulus=11))
    cfg = ModelConfig(layers=1, width=16, heads=4, norm="pre_replace")
    p = stacked_init(cfg, task, [0])
    tokens = task.inputs[:20].expand(1, -1, -1)
    got = models.forward(p, tokens, cfg, task)
    x = models.embed(p["tok"], tokens) + p["pos"].unsqueeze(1)
    x = models.layer_norm(x, p["0.ln1.g"], p["0.ln1.b"])
    from groklab.models.transformer import attention

    x = x[:, :, -1:] + attention(p, 0, x, 4, last=1)
    h = models.layer_norm(x, p["0.ln2.g"], p["0.ln2.b"])
    h = models.linear(nn.functional.gelu(models.linear(h, p["0.fc1.w"], p["0.fc1.b"])), p["0.fc2.w"], p["0.fc2.b"])
    x = models.layer_norm(x + h, p["ln_f.g"], p["ln_f.b"])
    torch.testing.assert_close(got, models.linear(x, p["unembed.w"], p["unembed.b"]).view_as(got))
