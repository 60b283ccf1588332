"""Sweeps survive SIGKILL, Ctrl-C, corrupt checkpoints, concurrent sweeps; workers and Ray agree."""

import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml
from storeutil import make_newer_store, rows_hash

import groklab
from groklab.cli import main
from groklab.store import SCHEMA_VERSION

SPEC = {
    "name": "res",
    "base": {
        "task": {"modulus": 23, "train_frac": 0.7},
        "model": {"layers": 1, "width": 32, "heads": 4},
        "train": {"steps": 300, "eval_every": 20, "batch_size": 64, "checkpoint_every": 20},
    },
    "grid": {"optim.weight_decay": [0.1, 1.0, 3.0], "train.steps": [200, 300]},
    "seeds": [0],
}


def dump(db):
    """Every stored metric row and every run's events, in a canonical order."""
    con = sqlite3.connect(db)
    metrics = con.execute("SELECT run_id, step, name, value FROM metrics ORDER BY run_id, name, step").fetchall()
    runs = con.execute("SELECT run_id, status, memorized_step, grokked_step, steps_run, final FROM runs "
                       "ORDER BY run_id").fetchall()
    con.close()
    return metrics, runs


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    db = tmp_path_factory.mktemp("base") / "base.db"
    groklab.sweep(SPEC, store=db, pack_size=3)
    return dump(db)


def cli(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "groklab", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture
def spec_file(tmp_path):
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(SPEC))
    return p


def newest_checkpoint(db):
    """mtime of the newest checkpoint file of `db` (0 if none); files may be renamed under our feet."""
    times = [0.0]
    for c in db.parent.glob(f"{db.name}.ckpt/*.pt"):
        try:
            times.append(c.stat().st_mtime)
        except FileNotFoundError:
            pass
    return max(times)


def test_sigkill_and_resume_equals_uninterrupted(tmp_path, spec_file, baseline):
    db = tmp_path / "k.db"
    rng = random.Random(0)
    kills = 0
    for _ in range(3):
        started = time.time()
        p = cli(["sweep", str(spec_file), "--store", str(db), "--pack-size", "3", "-q"])
        # wait until this process has written a checkpoint (it is training), then kill at a random moment
        while p.poll() is None and newest_checkpoint(db) < started:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
    assert kills >= 2
    p = cli(["sweep", str(spec_file), "--store", str(db), "--pack-size", "3", "--resume", "-q"])
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert dump(db) == baseline  # every metric row identical, none missing, none duplicated


def interrupt_after_first_checkpoint(spec_file, db):
    """Start a sweep, send SIGINT as soon as its first pack checkpoint exists (training is under way);
    return (returncode, stderr)."""
    p = cli(["sweep", str(spec_file), "--store", str(db), "--pack-size", "3"])
    deadline = time.monotonic() + 120
    while not list(db.parent.glob(f"{db.name}.ckpt/*.pt")):
        assert p.poll() is None, "the sweep ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    return p.returncode, err


def test_sigint_checkpoints_and_says_how_to_resume(tmp_path, spec_file, baseline):
    db = tmp_path / "i.db"
    code, err = interrupt_after_first_checkpoint(spec_file, db)
    assert code == 130, err
    assert "checkpoint saved" in err and "re-run the same command" in err
    assert list((tmp_path / "i.db.ckpt").glob("*.pt"))
    assert main(["sweep", str(spec_file), "--store", str(db), "--pack-size", "3", "-q"]) == 0
    assert dump(db) == baseline


def test_corrupt_checkpoint_falls_back_with_a_warning(tmp_path, spec_file, baseline):
    db = tmp_path / "c.db"
    assert interrupt_after_first_checkpoint(spec_file, db)[0] == 130
    ckpts = list((tmp_path / "c.db.ckpt").glob("*.pt"))
    assert ckpts
    for c in ckpts:
        data = c.read_bytes()
        c.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.warns(UserWarning, match="checksum mismatch|not a groklab checkpoint"):
        groklab.sweep(SPEC, store=db, pack_size=3)
    assert dump(db) == baseline


def test_two_concurrent_sweeps_train_every_run_once(tmp_path, baseline):
    db = tmp_path / "two.db"
    a, b = dict(SPEC), {**SPEC, "name": "res-b", "grid": {"optim.weight_decay": [1.0, 3.0, 10.0],
                                                          "train.steps": [200, 300]}}
    pa, pb = tmp_path / "a.yaml", tmp_path / "b.yaml"
    pa.write_text(yaml.safe_dump(a))
    pb.write_text(yaml.safe_dump(b))
    procs = [cli(["sweep", str(p), "--store", str(db), "--pack-size", "3", "--json", "-q"]) for p in (pa, pb)]
    reads = 0
    while any(p.poll() is None for p in procs):  # readers work while both write
        if db.exists():
            with groklab.open_store(db) as st:
                st.runs()
                st.curves()
            reads += 1
        time.sleep(0.3)
    outs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    trained = [int(err.split("trained ")[1].split()[0]) for _, err in outs]
    con = sqlite3.connect(db)
    n_runs = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    assert n_runs == 8  # 6 + 6 with 4 shared
    assert sum(trained) == n_runs  # nothing trained twice
    assert con.execute("SELECT COUNT(*) FROM (SELECT run_id, step, name FROM metrics GROUP BY 1, 2, 3 "
                       "HAVING COUNT(*) > 1)").fetchone()[0] == 0
    assert all(len(out.strip().splitlines()) == 6 for out, _ in outs)  # each sweep reports all its runs
    metrics, _ = dump(db)
    base_ids = {r[0] for r in baseline[1]}
    assert [m for m in metrics if m[0] in base_ids] == baseline[0]
    assert reads > 0


def test_local_workers_equal_one_process(tmp_path, baseline, capsys):
    db = tmp_path / "w.db"
    df = groklab.sweep(SPEC, store=db, pack_size=3, workers=2, progress=True)
    assert df.attrs["trained"] == 6
    assert dump(db) == baseline
    # each worker's pack is followed step by step, named as in one process (worker 2 starts at pack 2, whichever
    # worker ends up training it)
    err = capsys.readouterr().err
    assert re.search(r"worker [12]: pack 1/2", err) and re.search(r"worker [12]: pack 2/2", err)


@pytest.mark.parametrize("how", ["ctrl-c to the group", "SIGINT to the parent", "SIGTERM to the parent"])
def test_interrupting_a_sweep_with_workers_stops_them_at_a_checkpoint(tmp_path, spec_file, baseline, how):
    """A terminal's Ctrl-C reaches every process of the group; `kill` reaches the parent alone. Either way the
    workers checkpoint and stop (not after the whole sweep), the command exits 130, and the same command finishes
    the sweep as if uninterrupted."""
    db = tmp_path / "g.db"
    p = cli(["sweep", str(spec_file), "--store", str(db), "--pack-size", "3", "--workers", "2", "--threads", "2"],
            start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(db.parent.glob(f"{db.name}.ckpt/*.pt")):
        assert p.poll() is None, "the sweep ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    if how == "ctrl-c to the group":
        os.killpg(p.pid, signal.SIGINT)
    else:
        p.send_signal(signal.SIGINT if how == "SIGINT to the parent" else signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "workers are checkpointing" in err
    assert len(dump(db)[1]) < 6  # stopped before the end
    p = cli(["sweep", str(spec_file), "--store", str(db), "--pack-size", "3", "--workers", "2", "-q"])
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert dump(db) == baseline


def test_ray_backend_equals_local(tmp_path, baseline):
    pytest.importorskip("ray")
    db = tmp_path / "ray.db"
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        df = groklab.sweep(SPEC, store=db, pack_size=3, backend="ray")
    finally:
        ray.shutdown()
    assert len(df) == 6 and df.attrs["trained"] == 6
    assert dump(db) == baseline


def test_absurd_size_is_refused_before_training(tmp_path, capsys):
    db = tmp_path / "a.db"
    groklab.run({"task": {"modulus": 23}, "model": {"layers": 1, "width": 32}, "train": {"steps": 10}}, store=db)
    before = rows_hash(db)
    assert main(["run", "model.width=65536", "model.layers=64", "--store", str(db)]) == 2
    assert "one run needs about" in capsys.readouterr().err
    assert rows_hash(db) == before


def test_v1_store_is_migrated_in_place(tmp_path):
    db = tmp_path / "v1.db"
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, config TEXT NOT NULL, status TEXT NOT NULL,
            memorized_step INTEGER, grokked_step INTEGER, grok_delay INTEGER, diverged_step INTEGER,
            steps_run INTEGER NOT NULL, wall_seconds REAL NOT NULL, final TEXT NOT NULL,
            groklab_version TEXT NOT NULL, torch_version TEXT NOT NULL, device TEXT NOT NULL, finished_at REAL NOT NULL);
        CREATE TABLE metrics (run_id TEXT NOT NULL, step INTEGER NOT NULL, name TEXT NOT NULL, value REAL,
            PRIMARY KEY (run_id, name, step)) WITHOUT ROWID;
        CREATE TABLE sweeps (name TEXT PRIMARY KEY, spec TEXT NOT NULL, created_at REAL NOT NULL);
        CREATE TABLE sweep_runs (sweep TEXT NOT NULL, run_id TEXT NOT NULL, PRIMARY KEY (sweep, run_id));
        INSERT INTO runs VALUES ('abc', '{"train": {"steps": 10}}', 'grokked', 5, 10, 5, NULL, 10, 1.5,
            '{"val_acc": 1.0}', '0.1.0', '2.13.0', 'cpu', 0);
        INSERT INTO metrics VALUES ('abc', 10, 'val_acc', 1.0);
    """)
    con.close()
    st = groklab.open_store(db)
    assert st.conn.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)
    s = st.summary("abc")
    assert s["grokked_step"] == 10 and s["grokked_samples"] is None
    assert st.metrics()["value"].tolist() == [1.0]


def test_export_csv_parquet_and_tensorboard(tmp_path):
    pytest.importorskip("pyarrow")
    pytest.importorskip("tensorboardX")
    import pandas as pd

    db = tmp_path / "e.db"
    groklab.sweep({**SPEC, "grid": {"optim.weight_decay": [0.1, 1.0]}, "base": {**SPEC["base"],
                   "train": {"steps": 40, "eval_every": 20, "batch_size": 64}}}, store=db)
    out = tmp_path / "out"
    assert main(["export", "--store", str(db), "-o", str(out), "--format", "csv", "parquet",
                 "--tensorboard", str(tmp_path / "tb")]) == 0
    assert pd.read_parquet(out / "metrics.parquet").equals(pd.read_csv(out / "metrics.csv"))
    runs = pd.read_parquet(out / "runs.parquet")
    assert len(runs) == 2 and "optim.weight_decay" in runs.columns
    events = list((tmp_path / "tb").rglob("events.out.tfevents*"))
    assert len(events) == 2


def test_hostile_stores_exit_2_and_are_left_untouched(tmp_path, capsys):
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE precious (x)")
    con.execute("INSERT INTO precious VALUES (42)")
    con.commit()
    con.close()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 50)
    newer = make_newer_store(tmp_path / "newer.db", 7)
    for path, message in ((other, "not a groklab store"), (junk, "not a groklab"), (newer, "schema version 7")):
        before = path.read_bytes()
        for args in (["ls"], ["report", "-o", str(tmp_path / "r")], ["run", "train.steps=1"]):
            assert main([*args, "--store", str(path)]) == 2, (path, args)
            assert message in capsys.readouterr().err
        assert path.read_bytes() == before


def test_checkpoint_of_another_format_version_is_skipped_with_a_warning(tmp_path):
    from groklab import checkpoint

    path = tmp_path / "old.pt"
    path.write_bytes(b"GROKLAB-CKPT-1\n" + b"0" * 64 + b"\npayload")
    with pytest.warns(UserWarning, match="another groklab version"):
        assert checkpoint.load(path) is None
