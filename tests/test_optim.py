import pytest
import torch

from groklab import optim
from groklab.config import make_config


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "sgd_nesterov"])
def test_batched_optimizer_equals_torch_per_run(name):
    """Each run's slice of the batched update equals torch.optim on that run alone."""
    opt_name = "sgd" if name.startswith("sgd") else name
    nesterov = name == "sgd_nesterov"
    cfgs = [
        make_config(None, {"optim.name": opt_name, "optim.lr": lr, "optim.weight_decay": wd, "optim.warmup_steps": 0,
                           # each optimizer takes only its own keys (the validator refuses the others)
                           **({"optim.momentum": mom, "optim.nesterov": nesterov} if opt_name == "sgd"
                              else {"optim.betas": [b1, b2]})})
        for lr, wd, b1, b2, mom in [(1e-3, 1.0, 0.9, 0.98, 0.9), (3e-2, 0.1, 0.8, 0.999, 0.5), (1e-1, 0.0, 0.95, 0.9, 0.7)]
    ]
    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(3, 4, 5, generator=g), "b": torch.randn(3, 5, generator=g)}
    refs = []
    for r, c in enumerate(cfgs):
        ps = [params["w"][r].clone().requires_grad_(), params["b"][r].clone().requires_grad_()]
        o = c.optim
        if opt_name == "adamw":
            opt = torch.optim.AdamW(ps, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        elif opt_name == "adam":
            opt = torch.optim.Adam(ps, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        else:
            opt = torch.optim.SGD(ps, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=nesterov)
        refs.append((ps, opt))
    hp = optim.Hyper.from_configs(cfgs, torch.device("cpu"))
    state = optim.OptimState()
    ok = torch.ones(3, dtype=torch.bool)
    layout = optim.Layout.of(params)
    flat = layout.flatten(params)
    params = layout.views(flat)
    for t in range(5):
        grads = {"w": torch.randn(3, 4, 5, generator=g), "b": torch.randn(3, 5, generator=g)}
        optim.step(cfgs[0].optim, flat, layout.flatten(grads), state, hp, optim.lr_at(hp, t), ok if t % 2 else None)
        for r, (ps, opt) in enumerate(refs):
            ps[0].grad, ps[1].grad = grads["w"][r].clone(), grads["b"][r].clone()
            opt.step()
    for r, (ps, _) in enumerate(refs):
        torch.testing.assert_close(params["w"][r], ps[0].detach(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(params["b"][r], ps[1].detach(), rtol=1e-6, atol=1e-6)


def test_frozen_runs_are_untouched():
    cfgs = [make_config(None, {"optim.lr": 0.1}) for _ in range(2)]
    hp = optim.Hyper.from_configs(cfgs, torch.device("cpu"))
    w = torch.ones(2, 3)
    state = optim.OptimState()
    optim.step(cfgs[0].optim, w, torch.ones(2, 3), state, hp, hp.lr, torch.tensor([True, False]))
    assert not torch.equal(w[0], torch.ones(3))
    assert torch.equal(w[1], torch.ones(3))
    assert torch.equal(state.exp_avg[1], torch.zeros(3)) and not torch.equal(state.exp_avg[0], torch.zeros(3))


def test_layout_views_share_the_flat_buffer():
    g = torch.Generator().manual_seed(1)
    params = {"a": torch.randn(2, 3, 4, generator=g), "b": torch.randn(2, 5, generator=g)}
    layout = optim.Layout.of(params)
    flat = layout.flatten(params)
    assert flat.shape == (2, 17) and layout.size == 17
    views = layout.views(flat)
    assert all(torch.equal(views[k], params[k]) for k in params)
    flat.mul_(2)
    assert torch.equal(views["a"], 2 * params["a"]) and torch.equal(views["b"], 2 * params["b"])
    assert layout.mask({"b"}).tolist() == [[0.0] * 12 + [1.0] * 5]


def test_warmup_matches_reference_schedule():
    """warmup_steps=10 is LinearLR(start_factor=0.1, total_iters=9), the reference repos' schedule."""
    hp = optim.Hyper.from_configs([make_config(None, {"optim.lr": 1e-3})], torch.device("cpu"))
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=9)
    for t in range(15):
        assert optim.lr_at(hp, t).item() == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6)
        opt.step()
        sched.step()


@pytest.mark.parametrize("decay", ["decoupled", "coupled"])
@pytest.mark.parametrize("decay_on", ["all", "matrices"])
def test_fused_adam_equals_the_elementwise_update(monkeypatch, decay, decay_on):
    """The fused CPU kernel path gives the elementwise path's numbers, with per-run hyperparameters, a frozen
    run, decay on matrices only and a fixed norm; and a run's numbers do not depend on its neighbours."""
    cfgs = [make_config(None, {"optim.name": "adamw" if decay == "decoupled" else "adam", "optim.lr": lr,
                               "optim.weight_decay": wd, "optim.warmup_steps": 3, "optim.decay_on": decay_on,
                               "optim.fixed_norm": norm})
            for lr, wd, norm in [(1e-3, 1.0, None), (3e-2, 0.1, 9.0), (1e-3, 1.0, None), (1e-2, 0.0, None)]]
    g = torch.Generator().manual_seed(1)
    params = {"tok": torch.randn(4, 6, 5, generator=g), "0.w": torch.randn(4, 5, 5, generator=g),
              "0.b": torch.randn(4, 5, generator=g)}
    layout = optim.Layout.of(params)
    mask = None if decay_on == "all" else layout.mask({"0.w"})
    grads = [layout.flatten({k: torch.randn(v.shape, generator=g) for k, v in params.items()}) for _ in range(6)]
    hp = optim.Hyper.from_configs(cfgs, torch.device("cpu"))

    def train(fused: bool, rows: list[int]) -> tuple[torch.Tensor, optim.OptimState]:
        monkeypatch.setattr(optim, "_fusable", (lambda *a: True) if fused else (lambda *a: False))
        flat, state, h = layout.flatten(params)[rows].clone(), optim.OptimState(), hp.select(torch.tensor(rows))
        for t, gr in enumerate(grads):
            ok = torch.tensor([not (r == 2 and t >= 3) for r in rows])  # run 2 diverges at step 3
            optim.step(cfgs[0].optim, flat, gr[rows], state, h, optim.lr_at(h, t), ok, layout=layout,
                       decay_mask=mask, fixed_norm=any(cfgs[r].optim.fixed_norm for r in rows))
        return flat, state

    every = [0, 1, 2, 3]
    fused, f_state = train(True, every)
    plain, p_state = train(False, every)
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(f_state.exp_avg_sq, p_state.exp_avg_sq, rtol=1e-6, atol=1e-12)
    assert fused[1].norm().item() == pytest.approx(9.0, rel=1e-5)
    for r in every:  # bit for bit alone
        alone, _ = train(True, [r])
        assert torch.equal(alone[0], fused[r]), r


def test_non_contiguous_parameters_are_updated_where_they_are():
    """torch's fused kernel reads memory as if contiguous; strided views must take the elementwise path."""
    cfg = make_config(None, {"optim.warmup_steps": 0})
    hp = optim.Hyper.from_configs([cfg] * 2, torch.device("cpu"))
    g = torch.Generator().manual_seed(3)
    base, grad = torch.randn(2, 12, generator=g), torch.randn(2, 6, generator=g)
    strided = base.clone()
    view = strided[:, ::2]  # every other column
    dense = base[:, ::2].contiguous()
    for p in (view, dense):
        optim.step(cfg.optim, p, grad, optim.OptimState(), hp, hp.lr, None)
    torch.testing.assert_close(view, dense)
    assert torch.equal(strided[:, 1::2], base[:, 1::2])  # the columns between are untouched
