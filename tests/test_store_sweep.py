import json
import sqlite3

import pytest
from storeutil import make_newer_store, rows_hash

import groklab
from groklab import engine
from groklab.cli import main
from groklab.config import make_config
from groklab.store import Store, StoreError


def spec(micro, name="wd"):
    return {"name": name, "base": micro, "grid": {"optim.weight_decay": [0.1, 1.0]}, "seeds": [0, 1]}


def test_sweep_stores_everything_and_rerun_trains_nothing(micro, tmp_path, monkeypatch):
    db = tmp_path / "s.db"
    df = groklab.sweep(spec(micro), store=db)
    assert len(df) == 4 and set(df["optim.weight_decay"]) == {0.1, 1.0} and set(df["train.seed"]) == {0, 1}
    st = groklab.open_store(db)
    n_metrics = len(st.metrics())
    # runs x evals (0..120 by 20) x (9 metrics and counters, train_size among them, + the default measures:
    # 6 norm groups and softmax collapse)
    assert n_metrics == 4 * 7 * 16
    before = rows_hash(db)

    def boom(*a, **k):
        raise AssertionError("re-running a finished sweep must not train")

    monkeypatch.setattr(engine, "train", boom)
    df2 = groklab.sweep(spec(micro), store=db)
    assert sorted(df2["run_id"]) == sorted(df["run_id"])
    assert rows_hash(db) == before


def test_store_round_trips_configs_exactly(micro, tmp_path):
    db = tmp_path / "s.db"
    df = groklab.sweep(spec(micro), store=db)
    st = groklab.open_store(db)
    for _, row in df.iterrows():
        cfg = make_config(row["config"])
        assert cfg.run_id == row["run_id"]
        assert cfg.resolved() == row["config"]
        assert st.summary(row["run_id"])["config"] == row["config"]
    curves = st.curves(df["run_id"])
    assert set(curves.columns) >= {"run_id", "step", "train_acc", "val_acc", "train_loss", "val_loss", "param_norm", "lr"}


def test_store_matches_in_memory_run(micro, tmp_path):
    db = tmp_path / "s.db"
    s = groklab.run(micro, store=db)
    (r,) = engine.train([make_config(micro)])
    st = groklab.open_store(db)
    c = st.curves([s["run_id"]])
    assert c["step"].tolist() == r.curves["step"]
    assert c["val_loss"].tolist() == pytest.approx(r.curves["val_loss"], abs=0)
    # a second run() returns the stored summary instead of training
    assert groklab.run(micro, store=db) == st.summary(s["run_id"])


def test_pack_size_one_gives_the_same_results(micro, tmp_path):
    a = groklab.sweep(spec(micro), store=tmp_path / "a.db").set_index("run_id")
    b = groklab.sweep(spec(micro), store=tmp_path / "b.db", pack_size=1).set_index("run_id")
    assert sorted(a.index) == sorted(b.index)
    for col in ("final_val_loss", "final_train_loss"):
        assert a.loc[b.index, col].tolist() == pytest.approx(b[col].tolist(), abs=1e-5)


def test_not_a_groklab_store_is_refused(tmp_path):
    p = tmp_path / "other.db"
    con = sqlite3.connect(p)
    con.execute("CREATE TABLE x (a)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="not a groklab store"):
        Store(p)
    (tmp_path / "junk.db").write_bytes(b"hello, not sqlite" * 100)
    with pytest.raises(StoreError, match="not a groklab"):
        Store(tmp_path / "junk.db")


def test_newer_schema_is_refused(tmp_path):
    p = make_newer_store(tmp_path / "s.db", 99)
    with pytest.raises(StoreError, match="schema version 99"):
        Store(p)


# ---- CLI -------------------------------------------------------------------------------------
def test_cli_run_json_and_show(tiny, tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(tiny))
    db = tmp_path / "g.db"
    assert main(["run", str(cfg), "train.seed=1", "--store", str(db), "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["status"] == "grokked" and out["config"]["train"]["seed"] == 1
    assert main(["show", out["run_id"][:8], "--store", str(db)]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == out["run_id"]
    assert main(["ls", "--store", str(db)]) == 0
    assert out["run_id"] in capsys.readouterr().out


BAD = [
    (["optim.foo=1"], "optim.foo: unknown key; allowed: name, lr"),
    (["train.steps=abc"], "train.steps"),
    (["task.modulus=24"], "task.modulus: must be a prime"),
    (["task.train_frac=0"], "task.train_frac: must lie strictly between 0 and 1"),
    (["task.train_frac=1.5"], "task.train_frac"),
    (["task.op=x**y"], "task.op: 'x**y' is not an operation of task 'modular'; allowed: x+y"),
    (["model.kind=vit"], "model.kind: got 'vit'; allowed: 'transformer', 'mlp', 'resmlp', 'cnn' or 'rnn'"),
    (["model.norm=batch"], "model.norm"),
    (["optim.name=rmsprop"], "optim.name"),
    (["train.steps=5", "nonsense"], "must look like key=value"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args, message, micro):
    db = tmp_path / "g.db"
    assert main(["run", *args, "--store", str(db)]) == 2
    assert message in capsys.readouterr().err
    assert not db.exists()
    groklab.run(micro, store=db)  # an existing store stays unchanged too
    before = rows_hash(db)
    assert main(["run", *args, "--store", str(db)]) == 2
    assert rows_hash(db) == before


def test_cli_bad_sweeps_exit_2_and_leave_store_unchanged(micro, tmp_path, capsys):
    import yaml

    db = tmp_path / "g.db"
    groklab.run(micro, store=db)
    before = rows_hash(db)
    cases = {
        "empty_grid": ({**spec(micro), "grid": {"optim.weight_decay": []}}, "grid.optim.weight_decay: empty list"),
        "bad_key": ({**spec(micro), "grid": {"optim.wd": [1]}}, "optim.wd: unknown key"),
        "bad_value": ({**spec(micro), "grid": {"task.modulus": [23, 25]}}, "task.modulus: must be a prime"),
        "no_seeds": ({**spec(micro), "seeds": []}, "seeds"),
        "extra": ({**spec(micro), "grids": {}}, "sweep grids: unknown key"),
    }
    for name, (s, message) in cases.items():
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump(s))
        assert main(["sweep", str(p), "--store", str(db), "-q"]) == 2, name
        assert message in capsys.readouterr().err, name
        assert rows_hash(db) == before, name
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed\n")
    assert main(["sweep", str(p), "--store", str(db)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "missing.yaml"), "--store", str(db)]) == 2
    assert main(["report", "--store", str(tmp_path / "none.db")]) == 2
    assert rows_hash(db) == before


def test_cli_sweep_report_export(micro, tmp_path, capsys):
    import yaml

    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(spec(micro)))
    db = tmp_path / "g.db"
    assert main(["sweep", str(p), "--store", str(db), "--json", "-q"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 4 and all("status" in x for x in lines)
    out = tmp_path / "rep"
    assert main(["report", "--store", str(db), "--sweep", "wd", "-o", str(out)]) == 0
    for f in ("index.html", "curves_acc.png", "curves_loss.png", "grok_vs_optim_weight_decay.png",
              "events.csv", "events.md", "cells.csv", "cells.md"):
        assert (out / f).stat().st_size > 0, f
    import pandas as pd

    cells = pd.read_csv(out / "cells.csv")
    assert len(cells) == 2 and cells["seeds"].tolist() == [2, 2]
    assert main(["export", "--store", str(db), "-o", str(tmp_path / "exp")]) == 0
    assert len(pd.read_csv(tmp_path / "exp" / "metrics.csv")) == 4 * 7 * 16
