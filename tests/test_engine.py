import numpy as np
import pytest
import torch

import groklab
from groklab.config import make_config
from groklab.engine import Pack, train
from groklab.metrics import EVAL_METRICS, status


def test_tiny_run_groks_and_summary_says_so(tiny):
    s = groklab.run(tiny, store=None)
    assert s["status"] == "grokked"
    assert s["memorized_step"] is not None and s["grokked_step"] is not None
    assert s["memorized_step"] <= s["grokked_step"] <= 800
    assert s["grok_delay"] == s["grokked_step"] - s["memorized_step"]
    assert s["final"]["val_acc"] >= 0.99 and s["final"]["train_acc"] >= 0.99
    # after_grok: 1 stops one step after the grok evaluation
    assert s["steps_run"] == s["grokked_step"] + 1
    assert set(s) >= {"run_id", "status", "memorized_step", "grokked_step", "steps_run", "wall_seconds", "final", "config"}
    assert s["config"] == make_config(tiny).resolved()


def _three(micro):
    return [
        make_config(micro, {"optim.lr": 3e-3, "optim.weight_decay": 1.0, "train.seed": 0}),
        make_config(micro, {"optim.lr": 1e-2, "optim.weight_decay": 0.1, "train.seed": 1, "optim.betas": [0.8, 0.99]}),
        make_config(micro, {"optim.lr": 1e-3, "optim.weight_decay": 3.0, "train.seed": 2, "model.init_scale": 2.0}),
    ]


def _assert_same_curves(a, b, tol):
    assert a.curves["step"] == b.curves["step"]
    for k in EVAL_METRICS:
        x, y = np.array(a.curves[k], dtype=float), np.array(b.curves[k], dtype=float)
        np.testing.assert_allclose(x, y, rtol=0, atol=tol, err_msg=k)
    assert (a.status, a.memorized_step, a.grokked_step) == (b.status, b.memorized_step, b.grokked_step)


def test_pack_equals_solo(micro):
    configs = _three(micro)
    pack = {r.run_id: r for r in train(configs)}
    for c in configs:
        (solo,) = train([c])
        _assert_same_curves(pack[c.run_id], solo, 1e-5)


def test_pack_equals_solo_for_mlp_full_batch(micro):
    micro["model"] = {"kind": "mlp", "layers": 2, "width": 32}
    micro["train"]["batch_size"] = 10_000  # full batch
    configs = _three(micro)
    pack = {r.run_id: r for r in train(configs)}
    for c in configs:
        _assert_same_curves(pack[c.run_id], train([c])[0], 1e-5)


def test_diverging_run_does_not_touch_the_others(micro):
    good = _three(micro)
    bad = make_config(micro, {"optim.lr": 1e30, "optim.warmup_steps": 0, "train.seed": 7})
    clean = {r.run_id: r for r in train(good)}
    mixed = {r.run_id: r for r in train([good[0], bad, good[1], good[2]])}
    assert mixed[bad.run_id].status == "diverged"
    assert mixed[bad.run_id].diverged_step is not None
    assert mixed[bad.run_id].steps_run == mixed[bad.run_id].diverged_step
    for c in good:
        _assert_same_curves(mixed[c.run_id], clean[c.run_id], 0.0)  # bit-identical


def test_runs_with_different_budgets_leave_the_pack(micro):
    a = make_config(micro, {"train.steps": 50, "train.seed": 0})
    b = make_config(micro, {"train.steps": 120, "train.seed": 1})
    res = {r.run_id: r for r in train([a, b])}
    assert res[a.run_id].steps_run == 50 and res[a.run_id].curves["step"] == [0, 20, 40, 50]
    assert res[b.run_id].steps_run == 120 and res[b.run_id].curves["step"][-1] == 120
    _assert_same_curves(res[a.run_id], train([a])[0], 1e-5)
    _assert_same_curves(res[b.run_id], train([b])[0], 1e-5)


def test_same_seed_same_run_different_seed_different_run(micro):
    a1, = train([make_config(micro)])
    a2, = train([make_config(micro)])
    b, = train([make_config(micro, {"train.seed": 1})])
    assert a1.curves["train_loss"] == a2.curves["train_loss"]
    assert a1.curves["train_loss"] != b.curves["train_loss"]


def test_dropout_is_per_run_and_reproducible(micro):
    c0 = make_config(micro, {"model.dropout": 0.2, "train.seed": 0})
    c1 = make_config(micro, {"model.dropout": 0.0, "train.seed": 1})
    pack = {r.run_id: r for r in train([c0, c1])}
    _assert_same_curves(pack[c0.run_id], train([c0])[0], 1e-5)
    _assert_same_curves(pack[c1.run_id], train([c1])[0], 1e-5)
    nodrop, = train([make_config(micro, {"train.seed": 0})])
    assert nodrop.curves["train_loss"] != pack[c0.run_id].curves["train_loss"]


def test_status_rules():
    assert status([0.1, 1.0], 10, 20, False) == "grokked"
    assert status([0.1, 1.0], 10, None, False) == "memorized"
    assert status([0.1, 1.0], 10, 20, True) == "diverged"
    assert status([0.1, 0.2, 0.3, 0.5], None, None, False) == "budget"
    assert status([0.3, 0.3, 0.3, 0.3], None, None, False) == "failed_to_fit"


@pytest.mark.parametrize("op", ["x-y", "x/y"])
def test_other_ops_train(micro, op):
    micro["task"]["op"] = op
    micro["train"]["steps"] = 20
    (r,) = train([make_config(micro)])
    assert r.curves["train_loss"][-1] < r.curves["train_loss"][0]


@pytest.mark.parametrize("model", [{"kind": "transformer", "layers": 1, "width": 32, "dropout": 0.1},
                                   {"kind": "mlp", "layers": 2, "width": 32, "norm": "batch"}])
def test_chunked_pack_equals_one_chunk(micro, monkeypatch, model):
    """Training a big CPU pack in chunks of runs, and updating it in blocks of runs, changes nothing:
    dropout masks, batch-norm statistics and optimizer state stay each run's own."""
    micro["model"] = model
    configs = _three(micro)
    whole = {r.run_id: r for r in train(configs)}
    monkeypatch.setattr("groklab.memory.CPU_CHUNK_BYTES", 1)  # one run per forward/backward
    monkeypatch.setattr("groklab.optim.BLOCK_ELEMENTS", 1)  # one run per optimizer block
    assert len(Pack(configs).chunks) == 3
    for r in train(configs):
        _assert_same_curves(r, whole[r.run_id], 0.0)


@pytest.mark.parametrize("warmup, from_zero, schedule", [(0, True, "constant"), (0, False, "constant"),
                                                         (10, True, "constant"), (3, False, "cosine")])
def test_the_lr_of_every_step_equals_lr_at(micro, warmup, from_zero, schedule):
    """Pack._lr computes a constant schedule's lr once warmup is over; it must be lr_at's at every step, for every
    batch size and after runs leave the pack."""
    from groklab import optim

    cfgs = [make_config(micro, {"optim.warmup_steps": w, "optim.warmup_from_zero": from_zero,
                                "optim.schedule": schedule, "optim.lr": lr, "train.seed": s,
                                "optim.lr_scaling": "sqrt"})
            for s, (w, lr) in enumerate([(warmup, 1e-3), (max(warmup - 2, 0), 3e-3)])]
    for batches in ([64] * 16, [64] * 6 + [32] * 10):  # a batch-size schedule changes the lr under lr_scaling
        pack = Pack(cfgs)
        for step, batch in enumerate(batches):
            pack.step = step
            if step == 12:
                pack.compact([1])
            want = optim.lr_at(pack.hyper, step, schedule, optim.batch_scale(pack.cfg.optim, batch))
            assert torch.equal(pack._lr(batch), want), (step, batch)
