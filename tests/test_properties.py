"""Property-based tests: random tiny configurations from the whole knob space.

The CI profile (default) draws a fixed, small set of examples so the suite stays under a minute here;
`python -m pytest tests/test_properties.py --hypothesis-profile=long` draws hundreds of new ones
(profiles are registered in conftest.py).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math

import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import configs, overrides, per_run

from groklab import models
from groklab.cli import main
from groklab.config import make_config
from groklab.engine import Pack, RunResult, train


def _close(a: list, b: list, tol: float) -> bool:
    return len(a) == len(b) and all(
        (x is None and y is None) or (x is not None and y is not None and math.isclose(x, y, rel_tol=tol, abs_tol=tol))
        for x, y in zip(a, b))


def _same_run(a: RunResult, b: RunResult, tol: float) -> None:
    assert a.curves["step"] == b.curves["step"] and set(a.curves) == set(b.curves)
    for k in set(a.curves) - {"step", "seconds"}:  # losses, accuracies, counters and every measure
        assert _close(a.curves[k], b.curves[k], tol), (k, a.curves[k], b.curves[k])
    assert a.stats == b.stats
    assert (a.status, a.memorized_step, a.grokked_step, a.diverged_step) == (
        b.status, b.memorized_step, b.grokked_step, b.diverged_step)


@given(configs())
def test_any_valid_config_trains_evaluates_and_every_parameter_gets_a_gradient(raw):
    cfg = make_config(raw)
    pack = Pack([cfg])
    pack._refresh_compute()
    idx = pack.train_idx[:, : min(8, pack.train_idx.shape[1])]
    inputs, labels = pack.inputs[idx], pack.labels[idx].view(*idx.shape, -1)
    drop = pack._dropout(slice(None)) if pack.use_dropout else models.no_dropout
    loss = pack._train_loss(pack.compute_params, dict(pack.buffers), inputs, labels, drop)
    grads = torch.autograd.grad(loss.sum(), list(pack.compute_params.values()), allow_unused=True)
    unused = [k for k, g in zip(pack.compute_params, grads) if g is None]
    assert not unused, f"parameters the forward pass never reads: {unused}"
    (res,) = pack.run()
    assert res.curves["step"][0] == 0 and res.curves["step"][-1] == (res.diverged_step or res.steps_run)
    assert res.status in ("grokked", "memorized", "budget", "failed_to_fit", "diverged")
    if res.status != "diverged":  # a non-finite evaluation marks a run diverged
        assert all(v is not None for v in res.curves["train_loss"] + res.curves["val_loss"])


@given(st.data())
def test_two_runs_packed_give_the_curves_they_give_alone(data):
    raw = data.draw(configs(precision=False))
    a = make_config(raw, data.draw(per_run(raw)))
    b = make_config(raw, data.draw(per_run(raw)))
    if a.run_id == b.run_id or (a.train.batch_schedule is not None and a.train.batch_schedule.kind == "adaptive"):
        return  # adaptive runs train one per pack by design
    packed = {r.run_id: r for r in train([a, b])}
    for cfg in (a, b):
        (solo,) = train([cfg])
        _same_run(packed[cfg.run_id], solo, 1e-5)


@given(configs(), st.integers(1, 7))
def test_a_checkpoint_loaded_into_a_fresh_pack_continues_the_run_exactly(raw, stop_at):
    cfg = make_config(raw)
    (whole,) = train([cfg])
    first = Pack([cfg])
    saved = {}

    def save(p: Pack) -> None:
        buf = io.BytesIO()
        torch.save(p.state_dict(), buf)
        saved["sd"] = buf.getvalue()

    try:
        first.run(checkpoint=save, should_stop=lambda: first.step >= stop_at)
    except Exception as e:  # Interrupted: the pack checkpointed at step `stop_at`
        assert type(e).__name__ == "Interrupted"
    if "sd" not in saved:
        return  # the run finished before `stop_at`
    fresh = Pack([cfg])
    fresh.load_state_dict(torch.load(io.BytesIO(saved["sd"]), weights_only=False))
    (resumed,) = fresh.run(resumed=True)
    _same_run(resumed, whole, 0.0)


BASE = ["task.modulus=7", "task.train_frac=0.5", "model.layers=1", "model.width=8", "model.heads=2",
        "train.steps=2", "train.eval_every=1", "train.batch_size=16", "train.checkpoint_every=0"]


@given(overrides())
def test_bad_input_is_refused_with_the_key_named_never_a_crash(extra):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["run", *copy.copy(BASE), *extra, "--no-store", "-q", "--threads", "1"])
    assert rc in (0, 2), err.getvalue()[-3000:]
    if rc == 2:
        message = err.getvalue()
        assert any(key.split("=")[0].split(".")[0] in message for key in extra) or "--" in message, message
