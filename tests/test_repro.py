"""Reproduction presets (`groklab repro`): every preset expands, each is the source's documented setup, and the
agreement table is computed from the runs."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from groklab import reproduce as repro
from groklab.cli import main
from groklab.config import ConfigError, make_config
from groklab.config import flatten as _flat
from groklab.store import Store
from groklab.sweep import expand, load_spec

SHIPPED = ["brief", "doshi2024", "grokfast2024", "liu2022", "nanda2023", "omnigrok2022", "power2022", "prieto2025"]


def test_every_named_preset_ships():
    assert repro.names() == SHIPPED


@pytest.mark.parametrize("name", [n for n in SHIPPED if n != "brief"])
@pytest.mark.parametrize("scale", ["small", "paper"])
def test_every_preset_expands_and_validates(name, scale):
    preset = repro.load(name)
    specs = repro.specs(preset, scale)
    assert [s["name"] for s in specs] == [f"{s.name}.{scale}" for s in preset.sweeps]
    assert all(len(expand(load_spec(s))) >= 1 for s in specs)
    assert preset.scales["small"] and preset.scales["paper"] and preset.numbers


def test_the_brief_preset_is_the_hypotheses_file_verify_uses():
    from groklab.analysis import hypotheses

    preset = repro.load("brief")
    hf = hypotheses.load(repro.PRESETS / preset.hypotheses)
    assert hf.name == "brief" and len(hf.claims) == 37


def _config(name: str, sweep: str, where: dict | None = None):
    """The paper-scale config of a preset sweep's first run (matching `where`)."""
    preset = repro.load(name)
    (spec,) = [repro.sweep_spec(preset, s, "paper") for s in preset.sweeps if s.name == sweep]
    runs = expand(load_spec(spec))
    for cfg in runs:
        flat = _flat(cfg.resolved())
        if all(flat.get(k) == v for k, v in (where or {}).items()):
            return cfg
    raise AssertionError(f"no run of {sweep} with {where}")


# (preset, sweep, which run, {key: the source's documented value}) from the research notes on each source.
SOURCE_SETTINGS = [
    ("nanda2023", "nanda2023", None, {
        "task.op": "x+y", "task.modulus": 113, "task.train_frac": 0.3, "task.op_token": False,
        "model.layers": 1, "model.width": 128, "model.heads": 4, "model.mlp_ratio": 4, "model.norm": "none",
        "model.activation": "relu", "model.bias": ["mlp"], "model.init": "normal", "optim.name": "adamw",
        "optim.lr": 1e-3, "optim.weight_decay": 1.0, "optim.betas": [0.9, 0.98], "optim.warmup_steps": 10,
        "optim.warmup_from_zero": True, "train.loss_precision": "float64", "train.steps": 40000}),
    ("grokfast2024", "grokfast2024-baseline", None, {
        "task.op": "x*y", "task.modulus": 97, "task.skip_zero": True, "task.train_frac": 0.5, "model.layers": 2,
        "model.width": 128, "model.heads": 4, "model.norm": "pre_replace", "model.activation": "gelu",
        "model.bias": ["attn", "mlp"], "optim.name": "adam", "optim.decay": "coupled", "optim.lr": 1e-3,
        "optim.betas": [0.9, 0.98], "optim.weight_decay": 0.0, "optim.warmup_steps": 10,
        "optim.warmup_from_zero": True, "train.batch_size": 512, "train.steps": 300000, "metrics.threshold": 0.95}),
    ("grokfast2024", "grokfast2024-ema", None, {
        "optim.weight_decay": 0.005, "optim.grokfast.kind": "ema", "optim.grokfast.alpha": 0.98,
        "optim.grokfast.lamb": 2.0, "optim.name": "adam", "train.eval_every": 10}),
    ("grokfast2024", "grokfast2024-ma", None, {
        "optim.weight_decay": 0.01, "optim.grokfast.kind": "ma", "optim.grokfast.window": 100,
        "optim.grokfast.lamb": 5.0, "optim.name": "adam"}),
    ("power2022", "power2022", {"task.train_frac": 0.5, "optim.weight_decay": 1.0}, {
        "task.op": "x/y", "task.modulus": 97, "model.layers": 2, "model.width": 128, "model.heads": 4,
        "optim.name": "adamw", "optim.lr": 1e-3, "optim.betas": [0.9, 0.98], "optim.warmup_steps": 10,
        "train.batch_size": 512, "train.batch_frac": 0.5, "train.steps": 100000, "metrics.threshold": 0.99}),
    ("omnigrok2022", "omnigrok2022", None, {
        "task.name": "digits", "task.train_size": 1000, "model.kind": "mlp", "model.layers": 2, "model.width": 200,
        "model.activation": "relu", "model.init_scale": 8.0, "train.loss": "mse", "optim.name": "adamw",
        "optim.lr": 1e-3, "optim.weight_decay": 0.01, "train.batch_size": 200, "train.steps": 100000}),
    ("liu2022", "liu2022", {"optim.lr": 1e-3, "optim.weight_decay": 5.0}, {
        "train.steps": 100000, "train.batch_size": 100000}),
    ("doshi2024", "doshi2024-batch8", {"task.train_frac": 0.5}, {
        "task.op": "x+y", "task.modulus": 97, "model.kind": "mlp", "model.layers": 1, "model.width": 500,
        "model.activation": "quadratic", "model.input": "onehot", "model.bias": [], "model.init": "normal",
        "model.init_std": 0.05, "train.loss": "mse", "optim.lr": 0.01, "optim.betas": [0.9, 0.98],
        "optim.lr_scaling": "sqrt", "optim.base_batch_size": 256, "train.batch_size": 8, "train.steps": 64000}),
    ("doshi2024", "doshi2024-batch256", {"task.train_frac": 0.5}, {"train.batch_size": 256, "train.steps": 2000}),
    ("prieto2025", "prieto2025-stablemax", None, {
        "task.op": "x+y", "task.modulus": 113, "task.train_frac": 0.4, "model.layers": 2, "model.width": 200,
        "model.input": "onehot", "model.bias": [], "model.activation": "relu", "optim.weight_decay": 0.0,
        "train.loss": "stablemax", "optim.lr": 0.01, "train.steps": 80000, "train.seed": 42}),
    ("prieto2025", "prieto2025-orthograd", None, {"optim.orthograd": True, "train.steps": 300, "optim.lr": 0.01}),
]


@pytest.mark.parametrize("name,sweep,where,settings", SOURCE_SETTINGS, ids=[f"{s[1]}" for s in SOURCE_SETTINGS])
def test_a_preset_is_its_sources_documented_setup(name, sweep, where, settings):
    flat = _flat(_config(name, sweep, where).resolved())
    got = {k: flat.get(k) for k in settings}
    assert got == pytest.approx(settings) if all(isinstance(v, float) for v in settings.values()) else got == settings


def test_full_batch_and_the_batch_rule_of_openai_grok():
    nanda = _config("nanda2023", "nanda2023")
    assert nanda.train.batch_size >= nanda.task.n_examples  # full batch
    liu = repro.load("liu2022")
    grid = repro.sweep_spec(liu, liu.sweeps[0], "paper")["grid"]
    assert len(grid["optim.lr"]) == 10 and min(grid["optim.lr"]) == 1e-5 and max(grid["optim.lr"]) == 1e-2
    assert grid["optim.weight_decay"] == [float(w) for w in range(11)]
    assert repro.sweep_spec(liu, liu.sweeps[0], "paper")["analysis"]["phases"]["delay"] == 1000


def test_agreement_is_an_overlap_of_the_seed_range_with_the_published_range():
    assert repro.agrees(1300, 1500, 0.0, repro.published_range(1400))
    assert not repro.agrees(2000, 2100, 0.25, repro.published_range(1400))
    assert repro.agrees(1800, 1800, 0.25, repro.published_range(1400))  # 1800 × 0.75 = 1350 ≤ 1400
    assert repro.agrees(math.inf, math.inf, 0.0, repro.published_range([100000, None]))  # never within the budget
    assert not repro.agrees(0.3, 0.6, 0.0, repro.published_range([None, 0.25]))
    assert repro.agrees(math.nan, math.nan, 0.0, (1.0, 1.0)) is None
    assert repro.agrees(1, 2, 0.0, None) is None


def test_unknown_preset_and_bad_scale_are_refused_naming_the_allowed(tmp_path):
    with pytest.raises(ConfigError, match="allowed: brief, doshi2024"):
        repro.load("nanda2022")
    with pytest.raises(ConfigError, match="allowed: small, paper"):
        repro.repro("nanda2023", scale="full", store=tmp_path / "x.db")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntitle: t\nsource: s\nsummary: s\nscales: {small: a, paper: b}\nsweeps: [{name: a}]\n"
                   "numbers: [{id: r, what: w, ratio: [a, nope]}]\n")
    with pytest.raises(ConfigError, match="ratio: 'a' is not a number of the preset"):
        repro.load(bad)
    assert main(["repro", "nanda2022"]) == 2


def test_new_keys_leave_earlier_run_ids_unchanged():
    # defaults of the keys added for the presets stay out of the resolved form, so no stored run changes id
    cfg = make_config({})
    flat = _flat(cfg.resolved())
    for key in ("task.op_token", "task.skip_zero", "model.bias", "model.input", "model.init_std",
                "optim.warmup_from_zero", "train.batch_frac"):
        assert key not in flat
    assert make_config({"model": {"bias": ["attn", "mlp", "unembed"]}}).run_id == cfg.run_id


def test_repro_list_names_every_preset(capsys):
    assert main(["repro", "--list"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.strip().splitlines()] == SHIPPED


def test_repro_doshi2024_small_runs_end_to_end_and_its_table_is_computed(tmp_path, capsys):
    """The cheapest preset through the CLI: trains, writes the report, and every `ours` is the stored runs'."""
    db, out, md = tmp_path / "r.db", tmp_path / "out", tmp_path / "doshi.md"
    assert main(["repro", "doshi2024", "--store", str(db), "-o", str(out), "--markdown", str(md), "-q",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["preset"] == "doshi2024" and result["scale"] == "small"
    assert (out / "index.html").is_file() and (out / "agreement.csv").is_file() and (out / "agreement.png").is_file()
    assert all((out / f"{s}" / "index.html").is_file() for s in result["sweeps"])
    assert "| number |" in md.read_text()
    rows = {r["id"]: r for r in result["numbers"]}
    st = Store(db)
    runs = st.runs(sweep="doshi2024-clean.small")
    assert rows["clean_val"]["ours"] == pytest.approx(float(np.median(runs["final_val_acc"])))
    full = st.runs(sweep="doshi2024-full.small")
    assert rows["bfull"]["ours"] == pytest.approx(float(full["final_val_acc"].iloc[0]))
    assert full["steps_run"].iloc[0] == 97  # the source's full-batch column ran no steps; groklab's does
    # The worked example is compared at small scale; its verdict follows from the computed agreement.
    assert rows["clean_val"]["agrees"] == (rows["clean_val"]["low"] >= 1.0)
    assert result["verdict"] == repro.verdict(pd.DataFrame(result["numbers"]))
    # A second call reuses every stored run, and --no-train reads the same table from the store.
    assert main(["repro", "doshi2024", "--store", str(db), "--no-train", "--json", "-q"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [r["ours"] for r in again["numbers"]] == [r["ours"] for r in result["numbers"]]


def test_warmup_from_zero_and_the_batch_fraction():
    from groklab.engine import Pack
    from groklab.optim import Hyper, lr_at

    cfgs = [make_config({"optim": {"warmup_from_zero": z}}) for z in (True, False)]
    hp = Hyper.from_configs(cfgs, "cpu")
    assert lr_at(hp, 0).tolist() == pytest.approx([0.0, 1e-4])  # LambdaLR(min(t/10, 1)) vs LinearLR(0.1)
    assert lr_at(hp, 10).tolist() == pytest.approx([1e-3, 1e-3])
    cfg = make_config({"task": {"modulus": 23, "train_frac": 0.3}, "model": {"layers": 1, "width": 16},
                       "train": {"batch_size": 512, "batch_frac": 0.5, "steps": 1}})
    assert Pack([cfg]).batch_size == math.ceil(0.5 * round(0.3 * 529))  # min(512, ceil(N/2))


def test_overrides_reach_every_sweep_of_a_preset(tmp_path, capsys):
    """Omnigrok on local MNIST files: `groklab repro omnigrok2022 task.name=images task.path=DIR`."""
    npz = tmp_path / "imgs.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, x=rng.integers(0, 256, (1200, 4, 4), dtype=np.uint8), y=rng.integers(0, 10, 1200))
    preset = repro.load("omnigrok2022")
    (spec,) = repro.specs(preset, "small", ["task.name=images", f"task.path={npz}"])
    cfg = expand(load_spec(spec))[0]
    assert cfg.task.name == "images" and cfg.task.train_size == 1000 and cfg.model.init_scale == 8.0
    assert main(["repro", "omnigrok2022", "task.name=images", "--store", str(tmp_path / "x.db")]) == 2
    assert "task.path" in capsys.readouterr().err
    assert not (tmp_path / "x.db").exists() or Store(tmp_path / "x.db").runs().empty


def test_phases_follow_the_sweeps_own_thresholds():
    """Liu et al.'s delay threshold (1,000 steps) from the sweep's analysis section, not the default 10 % of the
    budget: a run fitting at 100 and generalizing at 900 is comprehension under it, grokking under 500."""
    runs = pd.DataFrame({"run_id": ["a", "b"], "train.steps": [10000, 10000], "optim.lr": [1e-3, 1e-2]})
    steps = np.arange(0, 2001, 100)
    curves = pd.concat([pd.DataFrame({"run_id": rid, "step": steps, "train_acc": (steps >= 100).astype(float),
                                      "val_acc": (steps >= t_val).astype(float)}) for rid, t_val in (("a", 900),
                                                                                                    ("b", 2000))])
    spec = {"name": "s", "grid": {"optim.lr": [1e-3, 1e-2]}, "analysis": {"phases": {"delay": 1000}}}
    assert repro.per_run(runs, curves, "phase_count", spec).tolist() == [2.0]  # comprehension, grokking
    assert repro.per_run(runs, curves, "phase=grokking", spec).tolist() == [0.0, 1.0]
    spec["analysis"]["phases"]["delay"] = 500
    assert repro.per_run(runs, curves, "phase=grokking", spec).tolist() == [1.0, 1.0]
    assert repro.per_run(runs, curves, "phase_count", spec).tolist() == [1.0]


def test_no_train_on_a_partly_trained_preset_says_its_verdict_is_provisional(tmp_path, capsys):
    """A verdict read off some of a preset's runs can change when the rest arrive: it says how many are missing."""
    from groklab import api

    db, over = tmp_path / "p.db", ["train.steps=30"]
    specs = repro.specs(repro.load("doshi2024"), "small", over)
    api.sweep(specs[0], store=db)  # one sweep of six, one run of eight
    total = sum(len(expand(load_spec(s))) for s in specs)
    result = repro.repro("doshi2024", store=db, train=False, overrides=over)
    assert result["verdict"].endswith(f"; provisional, {total - 1} of {total} runs not in the store")
    assert result["missing_runs"] == {s["name"]: len(expand(load_spec(s))) for s in specs[1:]}
    assert main(["repro", "doshi2024", *over, "--store", str(db), "--no-train", "-q"]) == 0
    out = capsys.readouterr().out
    assert f"provisional, {total - 1} of {total} runs" in out
    assert "1 of sweep doshi2024-batch8.small's runs are not in the store" in out


def test_repro_workers_reach_every_sweep(tmp_path, monkeypatch, capsys):
    """`groklab repro NAME --workers N` trains each sweep's packs in N processes, as `groklab sweep --workers N`."""
    from groklab import api

    seen = []

    def fake_sweep(spec, store, **kw):  # records the call and the (empty) sweep, trains nothing
        seen.append((spec["name"], kw["workers"]))
        store.add_sweep(spec["name"], load_spec(spec).model_dump(mode="json"), [])

    monkeypatch.setattr(api, "sweep", fake_sweep)
    assert main(["repro", "doshi2024", "--workers", "2", "--store", str(tmp_path / "w.db"), "-q"]) == 0
    names = [s["name"] for s in repro.specs(repro.load("doshi2024"), "small")]
    assert seen == [(n, 2) for n in names]
    assert "not compared" in capsys.readouterr().out  # nothing trained: the table says so rather than guessing
