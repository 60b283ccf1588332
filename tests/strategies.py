"""Hypothesis strategies: random tiny configurations drawn from the whole knob space.

`configs()` draws valid configurations (tasks × K-fold splits × augmentation × models (cnn on digits, rnn on token
tasks) × norms × optimizers × decays × filters × losses × batch tools × gradual exposure × precision), small enough
to train a few steps in well under a second.
`per_run()` draws the hyperparameters that may differ between runs of one pack. `overrides()` draws
key=value lists that may well be invalid, for the "refused, never a crash" property.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from groklab.config import MODULAR_OPS, NORMS, S5_OPS


@st.composite
def tasks(draw: st.DrawFn) -> dict[str, Any]:
    task = draw(_tasks())
    # K-fold split instead of train_frac / train_size; not on s5 or digits, whose folds would be thousands of
    # examples (full-batch steps on them would multiply the suite's time)
    if task["name"] in ("modular", "parity", "sequence") and draw(st.integers(0, 3)) == 0:
        task.pop("train_frac", None), task.pop("train_size", None)
        task["folds"] = draw(st.integers(2, 5))
        task["fold"] = draw(st.integers(0, task["folds"] - 1))
    if task["name"] == "digits" and draw(st.booleans()):
        task["augment"] = {"shift": draw(st.integers(0, 2)), "noise": draw(st.sampled_from([0.0, 0.1]))}
    return task


@st.composite
def _tasks(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(["modular", "modular", "s5", "parity", "sequence", "digits"]))
    if name == "modular":
        return {"name": name, "op": draw(st.sampled_from(MODULAR_OPS)), "modulus": draw(st.sampled_from([5, 7, 11])),
                "train_frac": draw(st.sampled_from([0.3, 0.5, 0.8]))}
    if name == "s5":
        return {"name": name, "op": draw(st.sampled_from(S5_OPS)), "train_size": draw(st.integers(16, 64))}
    if name == "parity":
        bits = draw(st.integers(3, 6))
        return {"name": name, "bits": bits, "k": draw(st.integers(1, bits)), "train_frac": 0.5}
    if name == "sequence":
        return {"name": name, "op": draw(st.sampled_from(["sort", "reverse", "copy"])),
                "symbols": draw(st.integers(2, 3)), "length": draw(st.integers(2, 3)), "train_frac": 0.6}
    return {"name": "digits", "train_size": draw(st.integers(20, 120))}


@st.composite
def models(draw: st.DrawFn, task: str) -> dict[str, Any]:
    kind = draw(st.sampled_from(["mlp", "resmlp", "cnn"] if task == "digits" else ["transformer", "mlp", "resmlp", "rnn"]))
    m: dict[str, Any] = {"kind": kind, "norm": draw(st.sampled_from(NORMS[kind])),
                         "dropout": draw(st.sampled_from([0.0, 0.0, 0.2])),
                         "init_scale": draw(st.sampled_from([0.5, 1.0, 2.0]))}
    if kind != "rnn":  # the cells have their own activations
        m["activation"] = draw(st.sampled_from(["relu", "gelu", "quadratic"]))
    if kind == "cnn":  # no layers or width: one conv layer per entry of channels
        m["channels"] = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
        m["kernel_size"] = draw(st.sampled_from([1, 3, 5]))
        m["pool"] = draw(st.sampled_from(["max", "avg", "none"]))
        return m
    m["layers"] = draw(st.integers(1, 2))
    if kind == "rnn":
        m["cell"] = draw(st.sampled_from(["gru", "lstm"]))
        m["width"] = draw(st.sampled_from([4, 8]))
    elif kind == "transformer":
        m["heads"] = draw(st.sampled_from([1, 2, 4]))
        m["width"] = m["heads"] * draw(st.sampled_from([2, 4]))
    else:
        m["width"] = draw(st.sampled_from([4, 8, 16]))
    if kind in ("transformer", "resmlp"):
        m["mlp_ratio"] = draw(st.integers(1, 2))
    return m


@st.composite
def optims(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(["adamw", "adam", "sgd"]))
    o: dict[str, Any] = {"name": name, "lr": draw(st.sampled_from([1e-3, 1e-2])),
                         "weight_decay": draw(st.sampled_from([0.0, 0.1, 1.0])),
                         "decay": draw(st.sampled_from(["decoupled", "coupled", "l1", "to_init"])),
                         "decay_on": draw(st.sampled_from(["all", "matrices"])),
                         "warmup_steps": draw(st.integers(0, 3)),
                         "schedule": draw(st.sampled_from(["constant", "cosine", "exponential", "cyclic", "step"]))}
    if name == "sgd":
        o["momentum"] = draw(st.sampled_from([0.0, 0.9]))
        o["nesterov"] = o["momentum"] > 0 and draw(st.booleans())
    if o["schedule"] in ("cosine", "cyclic"):
        o["min_lr_ratio"] = draw(st.sampled_from([0.0, 0.1]))
    if o["schedule"] == "cyclic":
        o["cycle_steps"] = draw(st.integers(2, 6))
    if o["schedule"] == "step":
        o["step_size"] = draw(st.integers(1, 4))
    if o["schedule"] in ("exponential", "step"):
        o["gamma"] = draw(st.sampled_from([0.5, 0.9]))
    gf = draw(st.sampled_from([None, "ema", "ma"]))
    if gf == "ema":
        o["grokfast"] = {"kind": "ema", "alpha": draw(st.sampled_from([0.8, 0.98])), "lamb": 2.0}
    elif gf == "ma":
        o["grokfast"] = {"kind": "ma", "window": draw(st.integers(1, 3)), "lamb": 1.0}
    o["orthograd"] = draw(st.booleans())
    o["fixed_norm"] = draw(st.sampled_from([None, None, 20.0]))
    o["lr_scaling"] = draw(st.sampled_from(["none", "linear", "sqrt"]))
    if o["lr_scaling"] != "none":
        o["base_batch_size"] = draw(st.sampled_from([8, 32]))
    return o


@st.composite
def trains(draw: st.DrawFn, precision: bool = True) -> dict[str, Any]:
    t: dict[str, Any] = {"steps": draw(st.integers(3, 8)), "eval_every": draw(st.integers(1, 4)),
                         "seed": draw(st.integers(0, 2**31 - 1)),
                         "loss": draw(st.sampled_from(["cross_entropy", "stablemax", "mse"])),
                         "loss_precision": draw(st.sampled_from(["float64", "float32"])),
                         "sampling": draw(st.sampled_from(["without_replacement", "with_replacement"])),
                         "precision": draw(st.sampled_from(["fp32", "bf16"])) if precision else "fp32",
                         "stop": {"after_grok": draw(st.sampled_from([0, 0, 1]))},
                         "checkpoint_every": 0, "save_weights": False}
    tool = draw(st.sampled_from(["batch", "batch", "accumulate", "ramp", "adaptive"]))
    if tool == "ramp":
        t["batch_schedule"] = {"kind": "ramp", "start": draw(st.integers(2, 8)), "end": draw(st.integers(2, 32)),
                               "steps": draw(st.integers(1, 6)), "shape": draw(st.sampled_from(["linear", "geometric"]))}
    elif tool == "adaptive":
        t["batch_schedule"] = {"kind": "adaptive", "start": draw(st.integers(2, 8)), "end": 32,
                               "check_every": draw(st.integers(1, 3))}
    else:
        # 100000 is full batch without replacement; with replacement it would be 100000 draws a step, whose
        # matmul rounding (not bit-equal across pack sizes) a chaotic lr amplifies past any tolerance
        full = [100_000] if t["sampling"] == "without_replacement" else []
        t["batch_size"] = draw(st.sampled_from([1, 4, 16, 64, *full]))
        if tool == "accumulate":
            t["accumulate"] = draw(st.integers(2, 3))
    if draw(st.integers(0, 3)) == 0:
        t["exposure"] = {"kind": "gradual", "start_frac": draw(st.sampled_from([0.05, 0.3, 1.0])),
                         "steps": draw(st.integers(1, 6)), "shape": draw(st.sampled_from(["linear", "geometric"]))}
    return t


@st.composite
def configs(draw: st.DrawFn, precision: bool = True) -> dict[str, Any]:
    """A valid tiny config as a plain dict (feed it to make_config)."""
    task = draw(tasks())
    return {"task": task, "model": draw(models(task["name"])), "optim": draw(optims()),
            "train": draw(trains(precision)), "metrics": draw(measures(task))}


@st.composite
def measures(draw: st.DrawFn, task: dict[str, Any]) -> dict[str, Any]:
    """The metrics section: threshold, hold and a subset of the measures with cheap settings."""
    names = ["norms", "stability", "sharpness", "noise_scale"]
    if task["name"] == "modular" and task["op"] == "x+y":
        names.append("fourier")
    on = draw(st.lists(st.sampled_from(names), unique=True, max_size=3))
    m: dict[str, Any] = {"threshold": draw(st.sampled_from([0.5, 0.99])), "hold": draw(st.integers(1, 3)),
                         "measures": on}
    if "sharpness" in on:
        m.update(sharpness_iters=draw(st.integers(1, 3)), trace_samples=draw(st.integers(0, 2)))
    if "noise_scale" in on:
        m["noise_batch"] = draw(st.sampled_from([2, 8, 16]))
    return m


@st.composite
def per_run(draw: st.DrawFn, cfg: dict[str, Any]) -> dict[str, Any]:
    """Dotted overrides of per-run hyperparameters that keep `cfg`'s pack key."""
    o, out = cfg["optim"], {}
    out["train.seed"] = draw(st.integers(0, 2**31 - 1))
    out["optim.lr"] = draw(st.sampled_from([3e-4, 3e-3, 3e-2]))
    out["optim.weight_decay"] = draw(st.sampled_from([0.0, 0.3, 2.0]))
    out["optim.warmup_steps"] = draw(st.integers(0, 4))
    out["model.init_scale"] = draw(st.sampled_from([0.7, 1.3]))
    out["model.dropout"] = draw(st.sampled_from([0.0, 0.1, 0.4]))
    out["train.steps"] = draw(st.integers(2, 9))
    out["metrics.threshold"] = draw(st.sampled_from([0.3, 0.9]))
    out["metrics.hold"] = draw(st.integers(1, 3))
    out["optim.fixed_norm"] = draw(st.sampled_from([None, 15.0]))
    if o["name"] != "sgd":
        out["optim.betas"] = [draw(st.sampled_from([0.8, 0.9])), draw(st.sampled_from([0.95, 0.999]))]
        out["optim.eps"] = draw(st.sampled_from([1e-8, 1e-6]))
    elif o.get("momentum", 0) > 0:
        out["optim.momentum"] = draw(st.sampled_from([0.5, 0.9]))
    if o.get("grokfast"):
        out["optim.grokfast.lamb"] = draw(st.sampled_from([0.5, 3.0]))
        if o["grokfast"]["kind"] == "ema":
            out["optim.grokfast.alpha"] = draw(st.sampled_from([0.5, 0.9]))
    if o["schedule"] in ("exponential", "step"):
        out["optim.gamma"] = draw(st.sampled_from([0.7, 0.95]))
    if cfg["task"]["name"] == "digits":
        out["task.augment.shift"] = draw(st.integers(0, 2))
        out["task.augment.noise"] = draw(st.sampled_from([0.0, 0.2]))
    return out


# Keys and values a user might type, many of them wrong: for "bad input is refused, never a crash".
_VALUES = st.one_of(st.integers(-3, 40), st.floats(-2, 2, allow_nan=False), st.booleans(), st.none(),
                    st.sampled_from(["x", "none", "batch", "ema", "cuda", "cpu", "digits", "sgd", "[1, 2]", "{}",
                                     "{kind: ramp, start: 2, end: 8}", "{kind: ma}", 97, 100_000, "cnn", "rnn",
                                     "lstm", "avg", "images", "{kind: gradual}", "{shift: 1}"]))
_KEYS = ["task.name", "task.op", "task.modulus", "task.train_frac", "task.train_size", "task.bits", "task.k",
         "model.kind", "model.layers", "model.width", "model.heads", "model.norm", "model.activation", "model.dropout",
         "model.mlp_ratio", "model.channels", "model.kernel_size", "model.pool", "model.cell", "optim.name",
         "optim.lr", "optim.betas", "optim.momentum", "optim.nesterov",
         "optim.decay", "optim.gamma", "optim.schedule", "optim.grokfast", "optim.grokfast.kind", "optim.fixed_norm",
         "train.batch_size", "train.accumulate", "train.batch_schedule", "train.batch_schedule.kind", "train.device",
         "train.loss", "train.precision", "metrics.threshold", "model.nonsense", "nonsense", "task.folds", "task.fold",
         "task.augment", "task.augment.shift", "task.augment.noise", "task.path", "train.exposure",
         "train.exposure.kind", "train.exposure.start_frac", "train.exposure.shape"]


def overrides() -> st.SearchStrategy[list[str]]:
    pair = st.tuples(st.sampled_from(_KEYS), _VALUES).map(lambda kv: f"{kv[0]}={kv[1]}")
    return st.lists(pair, min_size=1, max_size=4)
