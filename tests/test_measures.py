"""Measures recorded by runs: packed equals solo, the stability definitions, the hold rule."""

import math

import pytest

import groklab
from groklab import metrics
from groklab.config import make_config
from groklab.engine import train
from groklab.measures import stability
from groklab.measures.norms import group_of

ALL = ["norms", "stability", "sharpness", "noise_scale", "fourier"]


def _cfgs(micro, **extra):
    micro["metrics"] = {"measures": ALL, "sharpness_iters": 8, "trace_samples": 4, "noise_batch": 32, **extra}
    micro["train"].update(steps=40, eval_every=20, batch_size=32)
    a = make_config(micro, {"train.seed": 0, "optim.weight_decay": 0.3})
    b = make_config(micro, {"train.seed": 7, "optim.lr": 3e-3, "model.dropout": 0.1})
    return a, b


def test_every_measure_gives_the_same_values_packed_and_solo(micro):
    a, b = _cfgs(micro)
    packed = {r.run_id: r for r in train([a, b])}
    for cfg in (a, b):
        (solo,) = train([cfg])
        got = packed[cfg.run_id]
        names = [k for k in solo.curves if k.startswith(("norm.", "fourier.")) or k in (
            "softmax_collapse", "sharpness", "hessian_trace", "b_simple")]
        assert {"sharpness", "hessian_trace", "b_simple", "softmax_collapse", "norm.last"} <= set(names)
        assert any(k.startswith("fourier.") for k in names)
        for k in names:
            for x, y in zip(got.curves[k], solo.curves[k]):
                assert (x is None and y is None) or math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6), (k, x, y)
        assert got.stats == solo.stats


def test_measures_reach_the_store_show_and_export(micro, tmp_path, capsys):
    from groklab.cli import main

    a, _ = _cfgs(micro)
    db = tmp_path / "m.db"
    s = groklab.run(a, store=db)
    assert set(s["stats"]) >= {"loss_spikes", "fell_back", "last_norm_growth"}
    names = set(groklab.open_store(db).metrics()["name"])
    assert {"sharpness", "hessian_trace", "b_simple", "softmax_collapse", "norm.embed"} <= names
    assert main(["show", s["run_id"], "--store", str(db), "--curves"]) == 0
    assert "sharpness" in capsys.readouterr().out


def test_a_measure_period_skips_evaluations(micro):
    micro["metrics"] = {"measures": ["norms", "sharpness"], "periods": {"sharpness": 40}, "sharpness_iters": 3}
    micro["train"].update(steps=80, eval_every=20)
    (r,) = train([make_config(micro)])
    assert [s for s, v in zip(r.curves["step"], r.curves["sharpness"]) if v is not None] == [0, 40, 80]
    assert all(v is not None for v in r.curves["norm.last"])


def test_a_period_that_is_not_an_evaluation_is_refused(micro):
    with pytest.raises(groklab.ConfigError, match="metrics.periods.sharpness"):
        make_config(micro, {"metrics.measures": ["sharpness"], "metrics.periods": {"sharpness": 30}})


def test_parameter_groups():
    assert [group_of(n) for n in ("tok", "pos", "0.qkv.w", "0.out.b", "1.fc2.w", "1.ln2.g", "ln_f.b", "unembed.w",
                                  "out.w", "2.w", "3.norm.g", "in.w")] == [
        "embed", "embed", "block0.attn", "block0.attn", "block1.mlp", "block1.norm", "final_norm", "last", "last",
        "block2.mlp", "block3.norm", "in"]


# ---- stability --------------------------------------------------------------------------------------
def test_the_spike_detector_finds_planted_spikes_and_none_in_a_smooth_curve():
    smooth = [2.0 * math.exp(-i / 20) + 1e-7 for i in range(200)]
    assert stability.spikes(smooth, 10, 10, 0.01) == []
    spiky = list(smooth)
    for at in (60, 61, 120, 170):  # 60-61 is one spike of two evaluations
        spiky[at] = 1.5
    assert stability.spikes(spiky, 10, 10, 0.01) == [60, 120, 170]
    tiny = [1e-7] * 50
    tiny[30] = 1e-4  # 1000x its median, but below the floor: memorized-loss noise, not a spike
    assert stability.spikes(tiny, 10, 10, 0.01) == []


def test_stability_summary_after_grokking():
    curves = {"step": [0, 100, 200, 300, 400, 500], "train_loss": [4, 1, 0.1, 0.01, 0.01, 0.01],
              "val_acc": [0.0, 0.5, 0.995, 0.4, 0.999, 1.0], "norm.last": [1.0, 2.0, 2.5, 5.0, 4.0, 4.0]}
    s = stability.summary(curves, 200, 0.99, 10, 10, 0.01)
    assert s["fell_back"] is True and s["below_after_grok"] == pytest.approx(1 / 3)
    assert s["last_norm_growth"] == pytest.approx(2.0) and s["loss_spikes"] == 0


def test_softmax_collapse_is_exact_absorption_in_the_working_precision():
    import torch

    logits = torch.tensor([[[[0.0, 10.0]], [[0.0, 20.0]], [[0.0, 800.0]]]])  # [R=1, B=3, L=1, C=2]
    assert stability.softmax_collapsed(logits, "float32").tolist() == [[False, True, True]]
    assert stability.softmax_collapsed(logits, "float64").tolist() == [[False, False, True]]


# ---- when has a run grokked --------------------------------------------------------------------------
def test_hold_requires_consecutive_evaluations():
    curve = {"step": [0, 10, 20, 30, 40, 50], "train_acc": [0.1, 1, 1, 1, 1, 1],
             "val_acc": [0.0, 0.995, 0.3, 0.995, 0.999, 1.0]}
    assert metrics.replay(curve, 0.99, 1)[:2] == (10, 10)
    assert metrics.replay(curve, 0.99, 3)[:2] == (10, 30)
    assert metrics.replay(curve, 0.99, 4)[:2] == (10, None)


def test_early_stop_waits_for_the_hold(tiny):
    tiny["train"]["steps"] = 4000  # a budget to spare: both runs stop right after grokking
    (one,) = train([make_config(tiny)])
    tiny["metrics"] = {"hold": 3}
    (three,) = train([make_config(tiny)])
    assert one.grokked_step is not None and three.grokked_step is not None
    assert three.grokked_step >= one.grokked_step
    assert three.steps_run == three.grokked_step + 2 * tiny["train"]["eval_every"] + tiny["train"]["stop"]["after_grok"]
