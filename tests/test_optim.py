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
