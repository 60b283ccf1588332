"""The foundation pass: valid input trains, bad input is refused, a sweep means one set of runs,
a longer budget continues stored runs, the config documents itself, the CLI behaves like a CLI."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from storeutil import rows_hash

import groklab
from groklab import reference
from groklab.cli import main
from groklab.config import ConfigError, make_config
from groklab.engine import Pack, train
from groklab.store import SCHEMA_VERSION
from groklab.sweep import expand, load_spec

ROOT = Path(__file__).resolve().parents[1]


# ---- 1. valid input trains; what cannot run is refused with the key named ---------------------------
def test_transformer_without_norm_has_no_layer_norm_parameters_and_trains(micro):
    """Nanda et al.'s setup (no layer norm, full batch) crashed on its first step: dead parameters."""
    cfg = make_config(micro, {"model.norm": "none", "train.batch_size": 100_000, "train.steps": 20})
    pack = Pack([cfg])
    assert not [k for k in pack.params if ".ln" in k or k.startswith("ln_")]
    (r,) = train([cfg])
    assert r.curves["batch_size"][-1] == pack.train_idx.shape[1]  # full batch: the batch really taken
    assert r.curves["train_loss"][-1] < r.curves["train_loss"][0]


def test_a_transformer_without_layer_norm_starts_as_nanda_et_al():
    """Nothing rescales its residual stream, so the init scale sets the dynamics: N(0, 1/width) (measured: with
    N(0, 1) embeddings Nanda et al.'s setup did not grok in 30,000 steps, with N(0, 1/width) it did at 9,100)."""
    nanda = make_config({"task": {"modulus": 113, "train_frac": 0.3}, "model": {"layers": 1, "norm": "none"}})
    assert nanda.model.init == "normal" and make_config({}).model.init == "pytorch"
    assert make_config({"model": {"kind": "mlp"}}).model.init == "pytorch"
    tok = Pack([nanda]).params["tok"]
    assert tok.std().item() == pytest.approx(128**-0.5, rel=0.05)
    with pytest.raises(ConfigError, match="model.init"):
        make_config({"task": {"name": "digits"}, "model": {"kind": "cnn", "init": "normal"}})


@pytest.mark.parametrize("args,key", [
    (["train.device=cuda"], "train.device"),
    (["train.device=cuda:3"], "train.device"),
    (["task.name=digits"], "model.kind"),
    (["task.bits=12"], "task.bits"),
    (["model.kind=mlp", "model.heads=8"], "model.heads"),
    (["optim.name=sgd", "optim.betas=[0.8, 0.9]"], "optim.betas"),
    (["optim.gamma=0.5"], "optim.gamma"),
    (["train.batch_schedule={kind: ramp, start: 2, end: 8}", "train.batch_size=64"], "train.batch_size"),
    (["task.name=digits", "model.kind=mlp", "task.train_size=5000"], "task.train_size"),
])
def test_user_mistakes_exit_2_naming_the_key(args, key, capsys, tmp_path):
    if "cuda" in args[0] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    db = tmp_path / "s.db"
    assert main(["run", *args, "train.steps=2", "--store", str(db), "-q"]) == 2
    err = capsys.readouterr().err
    assert key in err and "internal error" not in err
    assert not db.exists()  # refused before the store is touched


def test_report_into_an_existing_file_and_store_in_a_missing_folder_exit_2(tmp_path, capsys, micro):
    db = tmp_path / "s.db"
    groklab.run(micro, overrides={"train.steps": 5}, store=db)
    before = rows_hash(db)
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    assert main(["report", "--store", str(db), "-o", str(afile)]) == 2
    assert "existing file" in capsys.readouterr().err and afile.read_text() == "keep me"
    assert main(["run", "train.steps=2", "--store", str(tmp_path / "nope" / "x.db"), "-q"]) == 2
    assert "folder" in capsys.readouterr().err and "not a groklab" not in capsys.readouterr().err
    assert rows_hash(db) == before


def test_a_base_key_that_does_not_apply_to_a_grid_cell_is_left_out_of_that_cell(micro):
    spec = load_spec({"name": "kinds", "base": {**micro, "model": {**micro["model"], "heads": 2}},
                      "grid": {"model.kind": ["transformer", "mlp"]}})
    cfgs = {c.model.kind: c for c in expand(spec)}
    assert cfgs["transformer"].model.heads == 2 and cfgs["mlp"].model.heads == 4  # the default: not in the id
    assert cfgs["mlp"].run_id == make_config(micro, {"model.kind": "mlp"}).run_id
    with pytest.raises(ConfigError, match="model.heads"):  # asked for in the grid itself: refused
        expand(load_spec({"name": "x", "base": {**micro, "model": {"kind": "mlp", "width": 8}},
                          "grid": {"model.heads": [2, 4]}}))


def test_float32_loss_is_a_choice_and_changes_the_run_id(micro):
    a, b = make_config(micro), make_config(micro, {"train.loss_precision": "float32"})
    assert a.train.loss_precision == "float64" and a.run_id != b.run_id
    ra, rb = train([a])[0], train([b])[0]
    assert ra.curves["train_loss"][0] == pytest.approx(rb.curves["train_loss"][0], rel=1e-5)


# ---- 3. a sweep means its latest expansion; a longer budget continues stored runs -------------------
def _spec(micro, **train):
    return {"name": "budget", "base": {**micro, "optim": {"lr": 1e-2}, "train": {**micro["train"], **train}},
            "grid": {"optim.weight_decay": [0.5, 1.0]}, "seeds": [0]}


def test_extending_train_steps_continues_stored_runs_exactly(micro, tmp_path, capsys):
    db = tmp_path / "s.db"
    short = groklab.sweep(_spec(micro, steps=50, eval_every=20), store=db)
    long = groklab.sweep(_spec(micro, steps=50, eval_every=20), overrides=["train.steps=130"], store=db)
    assert set(short["run_id"]).isdisjoint(long["run_id"]) and len(long) == 2
    change = long.attrs["change"]
    assert change.changed == ["base.train.steps: 50 -> 130"] and (change.added, change.removed) == (2, 2)
    assert "left it" in capsys.readouterr().err
    st = groklab.open_store(db)
    assert len(st.runs()) == 4 and set(st.runs(sweep="budget")["run_id"]) == set(long["run_id"])
    for rid, cfg in zip(long["run_id"], long["config"]):
        (fresh,) = train([make_config(cfg)])
        got = st.curves([rid])
        assert got["step"].tolist() == fresh.curves["step"] == [0, 20, 40, 60, 80, 100, 120, 130]  # 50 dropped
        for k in ("train_loss", "val_loss", "val_acc", "param_norm"):
            assert np.array_equal(got[k].to_numpy(), np.array(fresh.curves[k], dtype=float)), k
        assert st.summary(rid)["grokked_step"] == fresh.grokked_step


def test_a_run_that_grokked_and_stopped_is_not_trained_again(tiny, tmp_path):
    db = tmp_path / "s.db"
    first = groklab.run(tiny, store=db)
    assert first["status"] == "grokked" and first["steps_run"] < tiny["train"]["steps"]
    longer = groklab.run(tiny, overrides={"train.steps": 5000}, store=db)
    assert longer["run_id"] != first["run_id"]
    assert (longer["grokked_step"], longer["steps_run"], longer["final"]) == (
        first["grokked_step"], first["steps_run"], first["final"])
    assert longer["wall_seconds"] == pytest.approx(first["wall_seconds"], abs=0.5)  # no training happened
    st = groklab.open_store(db)
    a, b = st.curves([first["run_id"]]), st.curves([longer["run_id"]])
    assert a.drop(columns="run_id").equals(b.drop(columns="run_id"))


def test_a_budget_dependent_schedule_is_not_continued(micro, tmp_path):
    db = tmp_path / "s.db"
    micro["optim"] = {"schedule": "cosine"}
    groklab.run(micro, overrides={"train.steps": 30}, store=db)
    st = groklab.open_store(db)
    assert st.shorter_runs([make_config(micro, {"train.steps": 60})]) == {}


def test_ls_and_export_say_which_sweep_holds_a_run(micro, tmp_path, capsys):
    db = tmp_path / "s.db"
    groklab.sweep(_spec(micro, steps=10, eval_every=5), store=db)
    groklab.run(micro, overrides={"train.steps": 7}, store=db)
    assert main(["ls", "--store", str(db)]) == 0
    out = capsys.readouterr().out
    assert "sweeps" in out and "budget" in out
    assert main(["export", "--store", str(db), "-o", str(tmp_path / "ex")]) == 0
    import pandas as pd

    runs = pd.read_csv(tmp_path / "ex" / "runs.csv")
    assert sorted(runs["sweeps"].fillna("-")) == ["-", "budget", "budget"]


# ---- 5. the config documents itself; the CLI behaves like a CLI ----------------------------------------
def test_every_config_key_is_documented_and_the_readme_holds_the_generated_reference(capsys):
    entries = reference.entries()
    assert all(e.description for e in entries), [e.key for e in entries if not e.description]
    flat = groklab.config.flatten(make_config({}).resolved())
    assert set(flat) <= {e.key for e in entries}
    readme = (ROOT / "README.md").read_text()
    begin, end = readme.index(reference.README_BEGIN), readme.index(reference.README_END)
    assert readme[begin : end + len(reference.README_END)] + "\n" == reference.markdown(), (
        "README config reference is stale: regenerate it with `groklab config --markdown`")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert all(e.key in out for e in entries) and "allowed: adamw, adam, sgd" in out


def test_overrides_and_flags_mix_in_any_order(micro, capsys, monkeypatch):
    from groklab import threads

    monkeypatch.setattr(threads, "_chosen", None)
    before = torch.get_num_threads()
    try:
        assert main(["run", "task.modulus=23", "train.steps=4", "-q", "model.width=16", "--no-store",
                     "model.layers=1", "--json", "--threads", "1"]) == 0
        s = json.loads(capsys.readouterr().out)
        assert (s["config"]["model"]["width"], s["steps_run"]) == (16, 4)
        assert torch.get_num_threads() == 1
    finally:  # the rest of the suite runs on the threads it had (curves depend on the thread count)
        torch.set_num_threads(before)


def test_threads_from_the_environment_and_bad_values(monkeypatch, capsys):
    from groklab import threads

    monkeypatch.setenv("GROKLAB_THREADS", "1")
    assert threads.resolve() == 1
    monkeypatch.setenv("GROKLAB_THREADS", "many")
    with pytest.raises(ConfigError, match="GROKLAB_THREADS"):
        threads.resolve()
    assert main(["run", "train.steps=2", "--no-store", "-q", "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err
    monkeypatch.delenv("GROKLAB_THREADS")
    assert 1 <= threads.default_threads() <= threads.available_cores()



def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_denormals_are_flushed_while_training_on_every_thread_unless_kept(micro):
    """Late-training float32 values go denormal, which x86 computes many times slower (groklab.denormals)."""
    check = ("import sys, torch; from groklab import threads, denormals; threads.configure(2); "
             "print(denormals.flushed_everywhere(), denormals.flushing_here(), sys.float_info.min / 2 > 0)\n"
             "with denormals.flushed(): print(float(torch.tensor(1e-40) * 0.5))")
    flushed = _python(check)
    # worker threads flush; the caller's own arithmetic keeps IEEE denormals outside training
    assert flushed.stdout.split() == ["True", "False", "True", "0.0"], flushed.stderr
    kept = _python(check, GROKLAB_DENORMALS="keep")
    out = kept.stdout.split()
    assert out[:3] == ["False", "False", "True"] and float(out[3]) > 0, kept.stderr
    bad = subprocess.run([sys.executable, "-m", "groklab", "run", "train.steps=2", "--no-store", "-q"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "GROKLAB_DENORMALS": "sometimes"})
    assert bad.returncode == 2 and "GROKLAB_DENORMALS" in bad.stderr and "flush, keep" in bad.stderr
    # threads started before groklab could set the flag keep denormals: said, not silently slow
    late = _python("import torch; torch.set_num_threads(2); a = torch.randn(512, 512); a @ a\n"
                   "from groklab import threads; threads.configure(2)")
    assert "started before groklab" in late.stderr
    # the training loop flushes on the calling thread and gives the flag back as it was
    from groklab import denormals

    seen = []
    train([make_config(micro)], on_finish=lambda r: seen.append(denormals.flushing_here()))
    assert seen == [True] and not denormals.flushing_here()

V2_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '2');
CREATE TABLE runs (run_id TEXT PRIMARY KEY, config TEXT NOT NULL, status TEXT NOT NULL, memorized_step INTEGER,
    grokked_step INTEGER, grok_delay INTEGER, grokked_samples INTEGER, grokked_seconds REAL, diverged_step INTEGER,
    steps_run INTEGER NOT NULL, wall_seconds REAL NOT NULL, final TEXT NOT NULL, groklab_version TEXT NOT NULL,
    torch_version TEXT NOT NULL, device TEXT NOT NULL, finished_at REAL NOT NULL);
CREATE TABLE metrics (run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, step INTEGER NOT NULL,
    name TEXT NOT NULL, value REAL, PRIMARY KEY (run_id, name, step)) WITHOUT ROWID;
CREATE TABLE sweeps (name TEXT PRIMARY KEY, spec TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE claims (run_id TEXT PRIMARY KEY, owner TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
    heartbeat REAL NOT NULL);
CREATE TABLE sweep_runs (sweep TEXT NOT NULL REFERENCES sweeps(name) ON DELETE CASCADE, run_id TEXT NOT NULL,
    PRIMARY KEY (sweep, run_id));
"""


def test_a_version_2_store_is_migrated_claims_become_leases(tmp_path, micro):
    db = tmp_path / "v2.db"
    cfg = make_config(micro, {"train.steps": 40})
    con = sqlite3.connect(db)
    con.executescript(V2_SCHEMA)
    con.execute("INSERT INTO runs VALUES (?, ?, 'budget', NULL, NULL, NULL, NULL, NULL, NULL, 40, 1.0, '{}', "
                "'0.1.0', '2.13.0', 'cpu', 0)", ("old", json.dumps(cfg.resolved())))
    con.execute("INSERT INTO claims VALUES ('x', 'someone', 'host', 1, 0)")
    con.commit()
    con.close()
    st = groklab.open_store(db)
    tables = {r[0] for r in st.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "leases" in tables and "claims" not in tables and "verdicts" in tables
    assert st.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert st.conn.execute("SELECT owner FROM leases").fetchone()[0] == "someone"
    assert st.shorter_runs([make_config(micro, {"train.steps": 80})]) == {make_config(micro, {"train.steps": 80}).run_id:
                                                                           "old"}
    assert st.runs()["run_id"].tolist() == ["old"]
