"""Each regularizer, optimizer, schedule and batch-size knob does what its formula says."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import groklab
from groklab import models, optim
from groklab.config import make_config
from groklab.engine import BatchSampler, Pack, per_example_loss, run_generator, train
from groklab.metrics import EVAL_METRICS


def _step(cfg_overrides, w, g, steps=1, runs=1):
    """`steps` updates of flat parameters w [R, P] with the constant gradient g; returns w."""
    cfgs = [make_config(None, {"optim.warmup_steps": 0, **cfg_overrides}) for _ in range(runs)]
    hp = optim.Hyper.from_configs(cfgs, torch.device("cpu"))
    state = optim.OptimState(init=w.clone())
    for t in range(steps):
        optim.step(cfgs[0].optim, w, g, state, hp, optim.lr_at(hp, t), torch.ones(runs, dtype=torch.bool),
                   fixed_norm=cfgs[0].optim.fixed_norm is not None)
    return w


# ---- weight decay variants ---------------------------------------------------------------------
@pytest.mark.parametrize("name,decay,ref",
                         [("adam", "decoupled", torch.optim.AdamW), ("adamw", "coupled", torch.optim.Adam)])
def test_decoupled_and_coupled_are_adamw_and_adam(name, decay, ref):
    g = torch.Generator().manual_seed(0)
    w0, grads = torch.randn(1, 6, generator=g), [torch.randn(1, 6, generator=g) for _ in range(4)]
    p = w0.clone()
    cfg = make_config(None, {"optim.name": name, "optim.decay": decay, "optim.lr": 0.05, "optim.weight_decay": 0.3,
                             "optim.warmup_steps": 0})
    hp = optim.Hyper.from_configs([cfg], torch.device("cpu"))
    state = optim.OptimState()
    ref_p = w0[0].clone().requires_grad_()
    opt = ref([ref_p], lr=0.05, weight_decay=0.3, betas=(0.9, 0.98))
    for t, gr in enumerate(grads):
        optim.step(cfg.optim, p, gr, state, hp, optim.lr_at(hp, t), torch.ones(1, dtype=torch.bool))
        ref_p.grad = gr[0].clone()
        opt.step()
    torch.testing.assert_close(p[0], ref_p.detach(), rtol=1e-6, atol=1e-6)


def test_decoupled_vs_coupled_differ_exactly_as_the_formulas_say():
    """SGD, one step: decoupled w - lr*g - lr*wd*w equals coupled w - lr*(g + wd*w); with Adam they differ,
    because coupled decay goes through the adaptive denominator."""
    w, g = torch.tensor([[1.0, -2.0, 0.5]]), torch.tensor([[0.1, 0.2, -0.3]])
    lr, wd = 0.1, 0.5
    for decay in ("decoupled", "coupled"):
        p = _step({"optim.name": "sgd", "optim.decay": decay, "optim.lr": lr, "optim.weight_decay": wd},
                  w.clone(), g)
        torch.testing.assert_close(p, w - lr * g - lr * wd * w)
    dec = _step({"optim.decay": "decoupled", "optim.lr": lr, "optim.weight_decay": wd}, w.clone(), g)
    cou = _step({"optim.decay": "coupled", "optim.lr": lr, "optim.weight_decay": wd}, w.clone(), g)
    # first Adam step: direction = sign of the gradient (m/sqrt(v) = ±1)
    torch.testing.assert_close(dec, w * (1 - lr * wd) - lr * torch.sign(g), atol=1e-6, rtol=0)
    torch.testing.assert_close(cou, w - lr * torch.sign(g + wd * w), atol=1e-6, rtol=0)


def test_l1_drives_small_weights_exactly_to_zero():
    w = torch.tensor([[0.004, -0.015, 0.3, -1.0]])
    p = _step({"optim.decay": "l1", "optim.lr": 0.01, "optim.weight_decay": 1.0}, w.clone(), torch.zeros_like(w),
              steps=3)
    # each step moves every weight 0.01 toward 0, never past it
    torch.testing.assert_close(p, torch.tensor([[0.0, 0.0, 0.27, -0.97]]))
    assert (p[0, :2] == 0).all()


def test_to_init_returns_toward_the_initial_weights():
    g = torch.Generator().manual_seed(1)
    w0 = torch.randn(1, 8, generator=g)
    w = w0.clone()
    cfgs = [make_config(None, {"optim.decay": "to_init", "optim.lr": 0.1, "optim.weight_decay": 1.0,
                               "optim.warmup_steps": 0})]
    hp = optim.Hyper.from_configs(cfgs, torch.device("cpu"))
    state = optim.OptimState(init=w0.clone())
    w += 5.0  # moved away from init
    for t in range(5):
        optim.step(cfgs[0].optim, w, torch.zeros_like(w0), state, hp, optim.lr_at(hp, t), None)
    torch.testing.assert_close(w - w0, torch.full_like(w0, 5.0 * 0.9**5))


def test_decay_on_matrices_spares_embeddings_biases_and_gains(micro):
    micro["optim"] = {"weight_decay": 10.0, "lr": 0.1, "decay_on": "matrices", "warmup_steps": 0}
    pack = Pack([make_config(micro)])
    before = {k: v.detach().clone() for k, v in pack.params.items()}
    optim.step(pack.cfg.optim, pack.flat, torch.zeros_like(pack.flat), pack.opt_state, pack.hyper, pack.hyper.lr,
               None, decay_mask=pack.decay_mask)
    assert pack.decay_on == {k for k in before if k.endswith(".w")}
    for k, v in pack.params.items():
        if k.endswith(".w"):
            torch.testing.assert_close(v.detach(), before[k] * (1 - 0.1 * 10.0))
        else:
            assert torch.equal(v.detach(), before[k]), k


def test_fixed_norm_holds_each_runs_norm():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(3, 20, generator=g)
    cfgs = [make_config(None, {"optim.fixed_norm": r, "optim.warmup_steps": 0}) for r in (2.0, 7.0)]
    cfgs.append(make_config(None, {"optim.warmup_steps": 0}))
    hp = optim.Hyper.from_configs(cfgs, torch.device("cpu"))
    state = optim.OptimState()
    optim.step(cfgs[0].optim, w, torch.randn(3, 20, generator=g), state, hp, hp.lr, None, fixed_norm=True)
    norms = w.norm(dim=1)
    assert norms[0].item() == pytest.approx(2.0, rel=1e-5) and norms[1].item() == pytest.approx(7.0, rel=1e-5)
    assert norms[2].item() != pytest.approx(2.0, rel=1e-2)


# ---- gradient filters --------------------------------------------------------------------------
def test_grokfast_ema_matches_the_reference_filter():
    """Same arithmetic as ironjr/grokfast's gradfilter_ema, per run with its own alpha and lamb."""
    g = torch.Generator().manual_seed(3)
    gs = [torch.randn(2, 5, generator=g) for _ in range(6)]
    settings = ((0.9, 2.0), (0.5, 1.0))
    cfgs = [make_config(None, {"optim.grokfast": {"kind": "ema", "alpha": a, "lamb": lam}}) for a, lam in settings]
    hp = optim.Hyper.from_configs(cfgs, torch.device("cpu"))
    state = optim.OptimState()
    ema = [None, None]
    for gr in gs:
        ours = optim.grokfast(cfgs[0].optim, gr, state, hp)
        for r, (a, lam) in enumerate(settings):
            ema[r] = gr[r].clone() if ema[r] is None else ema[r] * a + gr[r] * (1 - a)
            torch.testing.assert_close(ours[r], gr[r] + lam * ema[r])


def test_grokfast_ma_waits_for_a_full_window():
    cfg = make_config(None, {"optim.grokfast": {"kind": "ma", "window": 3, "lamb": 5.0}})
    hp = optim.Hyper.from_configs([cfg], torch.device("cpu"))
    state = optim.OptimState()
    gs = [torch.full((1, 2), float(i)) for i in range(1, 6)]
    outs = [optim.grokfast(cfg.optim, gr, state, hp) for gr in gs]
    torch.testing.assert_close(outs[0], gs[0])
    torch.testing.assert_close(outs[1], gs[1])
    torch.testing.assert_close(outs[2], gs[2] + 5.0 * 2.0)  # mean(1, 2, 3) = 2
    torch.testing.assert_close(outs[4], gs[4] + 5.0 * 4.0)  # mean(3, 4, 5) = 4


def test_orthograd_removes_the_radial_component_and_keeps_the_norm():
    g = torch.Generator().manual_seed(4)
    layout = optim.Layout({"a": (4, 5), "b": (7,)})
    w, gr = torch.randn(3, 27, generator=g), torch.randn(3, 27, generator=g)
    o = optim.orthogonalize(w, gr, layout)
    for a, b in layout.spans.values():  # per run and per parameter tensor
        for r in range(3):
            assert (o[r, a:b] * w[r, a:b]).sum().abs().item() < 1e-5
            assert o[r, a:b].norm().item() == pytest.approx(gr[r, a:b].norm().item(), rel=1e-5)


# ---- losses ------------------------------------------------------------------------------------
def test_stablemax_and_mse_losses():
    logits = torch.tensor([0.0, 1.0, -1.0]).view(1, 1, 1, 3)
    label = torch.tensor([1]).view(1, 1, 1)
    # s = [1, 2, 1/2]: p(1) = 2 / 3.5
    assert per_example_loss("stablemax", logits, label).item() == pytest.approx(-math.log(2 / 3.5), rel=1e-6)
    onehot = torch.tensor([0.0, 1.0, 0.0]).view(1, 1, 1, 3)
    assert per_example_loss("mse", onehot, label).item() == 0.0
    assert per_example_loss("mse", logits, label).item() == pytest.approx((0 + 0 + 1) / 3)
    assert per_example_loss("cross_entropy", logits, label).item() == pytest.approx(
        nn.functional.cross_entropy(logits.view(1, 3), torch.tensor([1])).item())


@pytest.mark.parametrize("loss", ["stablemax", "mse"])
def test_other_losses_train(micro, loss):
    micro["train"].update(loss=loss, steps=40)
    (r,) = train([make_config(micro)])
    assert r.curves["train_loss"][-1] < r.curves["train_loss"][0]


# ---- schedules ---------------------------------------------------------------------------------
def test_schedules_hit_their_values_at_known_steps():
    def lr(sched, t, **kw):
        cfg = make_config(None, {"optim.lr": 1.0, "optim.warmup_steps": 10, "optim.schedule": sched,
                                 "train.steps": 110, **{f"optim.{k}": v for k, v in kw.items()}})
        hp = optim.Hyper.from_configs([cfg], torch.device("cpu"))
        return optim.lr_at(hp, t, sched).item()

    assert lr("constant", 0) == pytest.approx(0.1) and lr("constant", 9) == pytest.approx(1.0)
    assert lr("cosine", 10, min_lr_ratio=0.1) == pytest.approx(1.0)
    assert lr("cosine", 60, min_lr_ratio=0.1) == pytest.approx(0.55)
    assert lr("cosine", 110, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr("exponential", 15, gamma=0.9) == pytest.approx(0.9**5)
    assert lr("step", 29, gamma=0.5, step_size=10) == pytest.approx(0.5)
    assert lr("step", 30, gamma=0.5, step_size=10) == pytest.approx(0.25)
    assert lr("cyclic", 10, min_lr_ratio=0.2, cycle_steps=20) == pytest.approx(0.2)
    assert lr("cyclic", 20, min_lr_ratio=0.2, cycle_steps=20) == pytest.approx(1.0)
    assert lr("cyclic", 30, min_lr_ratio=0.2, cycle_steps=20) == pytest.approx(0.2)


def test_logged_lr_follows_the_schedule_per_run_in_a_pack(micro):
    micro["optim"] = {"schedule": "cosine", "warmup_steps": 0, "min_lr_ratio": 0.0}
    a = make_config(micro, {"optim.lr": 1e-3})
    b = make_config(micro, {"optim.lr": 3e-3, "optim.min_lr_ratio": 0.5, "train.seed": 1})
    res = {r.run_id: r for r in train([a, b])}
    for c in (a, b):
        r = res[c.run_id]
        hp = optim.Hyper.from_configs([c], torch.device("cpu"))
        want = [optim.lr_at(hp, max(s - 1, 0), "cosine").item() for s in r.curves["step"]]
        assert r.curves["lr"] == pytest.approx(want, rel=1e-6)
        _same(r, train([c])[0])


def test_lr_scaling_with_batch_size(micro):
    micro["optim"] = {"lr_scaling": "linear", "base_batch_size": 32, "lr": 1e-3, "warmup_steps": 0}
    (r,) = train([make_config(micro)])  # batch 64 = 2 x base
    assert r.curves["lr"][-1] == pytest.approx(2e-3)
    micro["optim"]["lr_scaling"] = "sqrt"
    (r,) = train([make_config(micro)])
    assert r.curves["lr"][-1] == pytest.approx(1e-3 * math.sqrt(2))


# ---- batch-size tools --------------------------------------------------------------------------
def _same(a, b, tol=1e-5):
    assert a.curves["step"] == b.curves["step"]
    for k in EVAL_METRICS:
        np.testing.assert_allclose(np.array(a.curves[k], float), np.array(b.curves[k], float), atol=tol, rtol=0, err_msg=k)


def test_accumulation_equals_the_big_batch(micro):
    micro["train"].update(steps=60)
    big = make_config(micro, {"train.batch_size": 64})
    acc = make_config(micro, {"train.batch_size": 16, "train.accumulate": 4})
    rb, ra = train([big])[0], train([acc])[0]
    _same(ra, rb, 1e-5)
    assert ra.curves["samples"] == rb.curves["samples"]
    assert ra.curves["batch_size"][-1] == 64


def test_sampling_with_replacement_is_seeded_and_repeats():
    s1 = BatchSampler([run_generator(0, 2)], 50, replacement=True)
    s2 = BatchSampler([run_generator(0, 2)], 50, replacement=True)
    a, b = s1.next(200), s2.next(200)
    assert torch.equal(a, b) and len(set(a[0].tolist())) < 50 + 1 and a.max() < 50
    s3 = BatchSampler([run_generator(0, 2)], 50)
    epoch = s3.next(50)[0].tolist()
    assert sorted(epoch) == list(range(50))  # without replacement: one epoch is a permutation


def test_batch_ramp_logs_the_batch_size_in_use(micro):
    del micro["train"]["batch_size"]  # a schedule replaces it (the validator refuses both)
    micro["train"].update(steps=100, batch_schedule={"kind": "ramp", "start": 8, "end": 128, "steps": 80,
                                                     "shape": "geometric"})
    (r,) = train([make_config(micro)])
    sched = make_config(micro).train.batch_schedule
    assert r.curves["batch_size"][0] == 8 and r.curves["batch_size"][-1] == 128
    assert r.curves["batch_size"][2] == sched.at(39)  # step 40: the batch of update 39
    assert r.curves["samples"][-1] == sum(sched.at(t) for t in range(100))


def test_adaptive_batch_grows_with_the_noise_scale(micro):
    del micro["train"]["batch_size"]
    micro["train"].update(steps=200, eval_every=50,
                          batch_schedule={"kind": "adaptive", "start": 2, "end": 64, "check_every": 20})
    (r,) = train([make_config(micro)])
    assert r.curves["batch_size"][-1] > 2
    # B_simple is logged (None where the |G|^2 estimate is not positive: noise dominates the signal)
    assert any(v is not None and v > 0 for v in r.curves["noise_scale"][1:])
    assert r.curves["batch_size"] == sorted(r.curves["batch_size"])  # it only grows


def test_adaptive_runs_get_packs_of_their_own(micro):
    del micro["train"]["batch_size"]
    micro["train"]["batch_schedule"] = {"kind": "adaptive", "start": 2, "end": 64}
    from groklab.sweep import group

    packs = group([make_config(micro, {"train.seed": s}) for s in range(3)])
    assert [len(p) for p in packs] == [1, 1, 1]


# ---- normalisation, architectures ---------------------------------------------------------------
def test_batch_norm_matches_nn_batchnorm1d_per_run():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 16, 6, generator=g)
    gain, bias = torch.rand(2, 6, generator=g) + 0.5, torch.randn(2, 6, generator=g)
    buffers = {"n.running_mean": torch.zeros(2, 6), "n.running_var": torch.ones(2, 6)}
    y = models.batch_norm(x, gain, bias, buffers, "n", train=True)
    for r in range(2):
        bn = nn.BatchNorm1d(6)
        with torch.no_grad():
            bn.weight.copy_(gain[r])
            bn.bias.copy_(bias[r])
        torch.testing.assert_close(y[r], bn(x[r]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(buffers["n.running_mean"][r], bn.running_mean)
        torch.testing.assert_close(buffers["n.running_var"][r], bn.running_var)
        bn.eval()
        torch.testing.assert_close(models.batch_norm(x, gain, bias, buffers, "n", train=False)[r], bn(x[r]),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,norm", [("mlp", "batch"), ("mlp", "layer"), ("resmlp", "batch"), ("resmlp", "none")])
def test_mlp_norms_and_resmlp_train_and_pack_equals_solo(micro, kind, norm):
    micro["model"] = {"kind": kind, "layers": 2, "width": 32, "norm": norm}
    micro["train"]["steps"] = 60
    cs = [make_config(micro, {"train.seed": s, "optim.lr": lr}) for s, lr in ((0, 1e-3), (1, 3e-3))]
    res = {r.run_id: r for r in train(cs)}
    for c in cs:
        r = res[c.run_id]
        assert r.curves["train_loss"][-1] < r.curves["train_loss"][0]
        _same(r, train([c])[0])


def test_per_run_values_inside_a_pack_equal_solo(micro):
    """Knobs with per-run tensors give in a pack exactly what they give alone."""
    micro["optim"] = {"grokfast": {"kind": "ema"}, "schedule": "exponential"}
    micro["train"]["steps"] = 60
    cs = [
        make_config(micro, {"optim.grokfast.alpha": 0.9, "optim.grokfast.lamb": 1.0, "optim.fixed_norm": 30.0}),
        make_config(micro, {"optim.grokfast.alpha": 0.98, "optim.grokfast.lamb": 3.0, "optim.gamma": 0.99, "train.seed": 1}),
        make_config(micro, {"model.dropout": 0.1, "model.init_scale": 0.5, "optim.weight_decay": 0.0, "train.seed": 2}),
    ]
    res = {r.run_id: r for r in train(cs)}
    for c in cs:
        _same(res[c.run_id], train([c])[0])
    assert res[cs[0].run_id].curves["param_norm"][-1] == pytest.approx(30.0, rel=1e-4)


def test_orthograd_and_decays_train(micro):
    micro["train"]["steps"] = 40
    for extra in ({"optim.orthograd": True}, {"optim.decay": "l1"}, {"optim.decay": "to_init"},
                  {"optim.name": "sgd", "optim.lr": 0.1, "optim.momentum": 0.9, "optim.nesterov": True}):
        (r,) = train([make_config(micro, extra)])
        assert r.curves["train_loss"][-1] < r.curves["train_loss"][0], extra


# ---- tasks -------------------------------------------------------------------------------------
def test_parity_sequence_and_digits_tasks():
    from groklab.config import TaskConfig
    from groklab.tasks import make_task

    t = make_task(TaskConfig(name="parity", bits=6, k=3))
    assert len(t) == 64 and t.n_classes == 2
    assert (t.labels == t.inputs[:, :3].sum(1) % 2).all()
    s = make_task(TaskConfig(name="sequence", op="sort", symbols=3, length=4))
    assert len(s) == 81 and s.n_outputs == 4
    assert (s.labels == s.inputs[:, :4].sort(1).values).all()
    rv = make_task(TaskConfig(name="sequence", op="reverse", symbols=3, length=4))
    assert (rv.labels == rv.inputs[:, :4].flip(1)).all()
    d = make_task(TaskConfig(name="digits", op="classify"))
    assert d.inputs.shape == (1797, 64) and d.features and float(d.inputs.max()) == 1.0


@pytest.mark.parametrize("task,model", [
    ({"name": "parity", "bits": 6, "k": 2, "train_frac": 0.8}, {"kind": "mlp", "width": 32, "layers": 2}),
    ({"name": "sequence", "op": "reverse", "symbols": 3, "length": 4, "train_frac": 0.8},
     {"kind": "transformer", "layers": 1, "width": 32}),
    ({"name": "sequence", "op": "sort", "symbols": 3, "length": 4, "train_frac": 0.8}, {"kind": "mlp", "width": 32}),
    ({"name": "digits", "train_size": 200}, {"kind": "resmlp", "width": 32, "layers": 1}),
])
def test_new_tasks_train(task, model):
    cfg = make_config({"task": task, "model": model, "train": {"steps": 60, "eval_every": 30, "batch_size": 64},
                       "optim": {"lr": 3e-3}})
    (r,) = train([cfg])
    assert r.curves["train_loss"][-1] < r.curves["train_loss"][0]
    if task["name"] == "digits":
        assert Pack([cfg]).train_idx.shape[1] == 200


def test_transformer_refuses_feature_tasks():
    with pytest.raises(ValueError, match="transformer needs a token task"):
        Pack([make_config({"task": {"name": "digits", "train_size": 100}})])


# ---- fine-tuning -------------------------------------------------------------------------------
def test_init_from_starts_at_the_source_runs_final_weights(micro, tmp_path):
    db = tmp_path / "ft.db"
    src = groklab.run(micro, store=db)
    ft = groklab.run(micro, overrides={"task.op": "x-y", "train.init_from": src["run_id"]}, store=db)
    st = groklab.open_store(db)
    c_src, c_ft = st.curves([src["run_id"]]), st.curves([ft["run_id"]])
    # step 0 of the fine-tuned run has the source's final weights
    assert c_ft["param_norm"].iloc[0] == pytest.approx(c_src["param_norm"].iloc[-1], rel=1e-6)
    same_task = groklab.run(micro, overrides={"train.init_from": src["run_id"], "train.seed": 0,
                                              "optim.lr": 1e-4}, store=db)
    c_same = st.curves([same_task["run_id"]])
    assert c_same["val_loss"].iloc[0] == pytest.approx(c_src["val_loss"].iloc[-1], rel=1e-6)


def test_init_from_unknown_run_is_refused_with_exit_2(micro, tmp_path, capsys):
    import yaml

    from groklab.cli import main

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(micro))
    assert main(["run", str(p), "train.init_from=deadbeef", "--store", str(tmp_path / "x.db")]) == 2
    assert "train.init_from" in capsys.readouterr().err


def test_small_decay_sweep_end_to_end(micro, tmp_path):
    spec = {"name": "decays", "base": micro, "grid": {"optim.decay": ["decoupled", "coupled", "l1", "to_init"],
                                                      "optim.weight_decay": [0.1, 1.0]}, "seeds": [0]}
    df = groklab.sweep(spec, store=tmp_path / "d.db")
    assert len(df) == 8 and set(df["optim.decay"]) == {"decoupled", "coupled", "l1", "to_init"}
    out = groklab.report(tmp_path / "d.db", sweep="decays", out=str(tmp_path / "rep"))
    assert (tmp_path / "rep" / "grok_vs_optim_decay.png").exists() and out


# ---- precision and compilation -----------------------------------------------------------------
def test_bf16_trains_close_to_fp32_and_groks(tiny):
    fp32 = groklab.run(tiny, store=None)
    bf16 = groklab.run(tiny, overrides={"train.precision": "bf16"}, store=None)
    assert fp32["status"] == bf16["status"] == "grokked"
    assert abs(bf16["grokked_step"] - fp32["grokked_step"]) <= 200


def test_compile_gives_the_eager_result(micro):
    micro["train"]["steps"] = 40
    eager, = train([make_config(micro)])
    compiled, = train([make_config(micro, {"train.compile": True})])
    _same(compiled, eager, 1e-5)
