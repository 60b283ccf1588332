"""SQLite store (WAL): runs, their metric curves in long format, and sweeps.

A run's row and all its metric rows are written in one transaction, so a run is either fully in the
store or not at all. Readers see pandas DataFrames.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from groklab import __version__
from groklab.config import budget_id, flatten
from groklab.engine import RunResult
from groklab.metrics import EVAL_METRICS

SCHEMA_VERSION = 4
DEFAULT_PATH = "groklab.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    memorized_step INTEGER,
    grokked_step INTEGER,
    grok_delay INTEGER,
    grokked_samples INTEGER,
    grokked_seconds REAL,
    diverged_step INTEGER,
    steps_run INTEGER NOT NULL,
    wall_seconds REAL NOT NULL,
    final TEXT NOT NULL,
    groklab_version TEXT NOT NULL,
    torch_version TEXT NOT NULL,
    device TEXT NOT NULL,
    finished_at REAL NOT NULL,
    budget_id TEXT,
    stats TEXT
);
CREATE INDEX IF NOT EXISTS runs_budget ON runs(budget_id);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, name, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sweeps (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    run_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    heartbeat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS verdicts (
    file TEXT NOT NULL,
    scale TEXT NOT NULL,
    claim TEXT NOT NULL,
    verdict TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (file, scale, claim)
);
CREATE TABLE IF NOT EXISTS sweep_runs (
    sweep TEXT NOT NULL REFERENCES sweeps(name) ON DELETE CASCADE,
    run_id TEXT NOT NULL,
    PRIMARY KEY (sweep, run_id)
);
"""


def _fill_budget_ids(conn: sqlite3.Connection) -> None:
    rows = conn.execute("SELECT run_id, config FROM runs").fetchall()
    conn.executemany("UPDATE runs SET budget_id = ? WHERE run_id = ?",
                     [(budget_id(json.loads(config)), rid) for rid, config in rows])


# Statements (or functions of the connection) that take a store from version v to v + 1.
MIGRATIONS: dict[int, list[Any]] = {
    1: [
        "ALTER TABLE runs ADD COLUMN grokked_samples INTEGER",
        "ALTER TABLE runs ADD COLUMN grokked_seconds REAL",
        "CREATE TABLE IF NOT EXISTS claims (run_id TEXT PRIMARY KEY, owner TEXT NOT NULL, host TEXT NOT NULL, "
        "pid INTEGER NOT NULL, heartbeat REAL NOT NULL)",
    ],
    2: [
        "ALTER TABLE claims RENAME TO leases",  # leases on runs being trained; 'claims' are about grokking now
        "ALTER TABLE runs ADD COLUMN budget_id TEXT",
        "ALTER TABLE runs ADD COLUMN stats TEXT",
        "CREATE INDEX IF NOT EXISTS runs_budget ON runs(budget_id)",
        _fill_budget_ids,
    ],
    3: [
        "CREATE TABLE IF NOT EXISTS verdicts (file TEXT NOT NULL, scale TEXT NOT NULL, claim TEXT NOT NULL, "
        "verdict TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (file, scale, claim))",
    ],
}


@dataclass(frozen=True)
class SweepChange:
    """What storing a sweep's expansion changed: keys whose value changed, runs that joined / left it."""

    name: str
    new: bool
    changed: list[str]
    added: int
    removed: int

    def message(self) -> str:
        if self.new or not (self.changed or self.added or self.removed):
            return ""
        what = "; ".join(self.changed) or "same spec"
        return (f"sweep {self.name} changed ({what}): {self.added} run(s) joined it, {self.removed} earlier run(s) "
                "left it (they stay in the store, reachable by id)")


def _spec_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = flatten(old), flatten(new)
    return [f"{k}: {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


class StoreError(ValueError):
    """The store file cannot be used (not a groklab database, newer schema...): exit code 2."""


class Store:
    """A groklab SQLite database. `Store(path)` creates it if missing."""

    def __init__(self, path: str | Path = DEFAULT_PATH, create: bool = True):
        self.path = Path(path)
        if not self.path.exists() and not create:
            raise StoreError(f"--store: {str(self.path)!r} does not exist (run a sweep or `groklab run` first)")
        if self.path.is_dir():
            raise StoreError(f"--store: {str(self.path)!r} is a folder; name the database file, e.g. "
                             f"{str(self.path / DEFAULT_PATH)!r}")
        if not self.path.parent.is_dir():
            raise StoreError(f"--store: the folder {str(self.path.parent)!r} does not exist; create it or name a "
                             "store in an existing folder")
        try:
            self.conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self.conn.execute("PRAGMA busy_timeout = 60000")
            self.conn.execute("PRAGMA foreign_keys = ON")
            self._check_and_migrate()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"--store: {str(self.path)!r} is not a groklab SQLite database ({e})") from None

    def _check_and_migrate(self) -> None:
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise StoreError(f"--store: {str(self.path)!r} is an SQLite database but not a groklab store")
        version = 0
        if "meta" in tables:
            row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"--store: {str(self.path)!r} has schema version {version}, newer than this groklab "
                    f"({__version__}) understands ({SCHEMA_VERSION}); upgrade groklab"
                )
            if version == SCHEMA_VERSION:
                return
        self.conn.execute("PRAGMA journal_mode = WAL")
        with self.transaction():
            if version == 0:
                for stmt in SCHEMA.split(";"):
                    if stmt.strip():
                        self.conn.execute(stmt)
            for v in range(version or SCHEMA_VERSION, SCHEMA_VERSION):  # a new store is created current
                for stmt in MIGRATIONS[v]:
                    stmt(self.conn) if callable(stmt) else self.conn.execute(stmt)
            self.conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )

    @property
    def weights_dir(self) -> Path:
        """Final weights of runs with train.save_weights, one file per run, beside the database."""
        return self.path.with_name(self.path.name + ".weights")

    def save_weights(self, run_id: str, weights: dict) -> None:
        self.weights_dir.mkdir(exist_ok=True)
        final = self.weights_dir / f"{run_id}.pt"
        tmp = final.with_suffix(f".tmp{os.getpid()}")
        torch.save(weights, tmp)
        os.replace(tmp, final)

    def load_weights(self, run_id: str) -> dict | None:
        """{"params", "buffers"} of a run's final weights, and "state" (its training state) where kept."""
        f = self.weights_dir / f"{run_id}.pt"
        return torch.load(f, weights_only=True) if f.exists() else None

    def shorter_runs(self, configs: list[Any]) -> dict[str, str]:
        """For each config, the stored run of the same experiment with the largest step budget below its
        own (they differ only in `train.steps`): {run_id: stored run_id}. Runs whose lr schedule depends on
        the budget (cosine) have none, since their first steps differ too."""
        want = {c.run_id: (budget_id(c.resolved()), c.train.steps) for c in configs if c.optim.schedule != "cosine"}
        if not want:
            return {}
        keys = sorted({b for b, _ in want.values()})
        rows = self.conn.execute(
            f"SELECT run_id, budget_id, config FROM runs WHERE budget_id IN ({','.join('?' * len(keys))})", keys
        ).fetchall()
        found: dict[str, tuple[int, str]] = {}
        for rid, bid, config in rows:
            steps = json.loads(config)["train"]["steps"]
            for new_id, (b, new_steps) in want.items():
                if b == bid and steps < new_steps and steps > found.get(new_id, (-1, ""))[0]:
                    found[new_id] = (steps, rid)
        return {k: rid for k, (_, rid) in found.items()}

    def transaction(self) -> _Transaction:
        return _Transaction(self.conn)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writes -------------------------------------------------------------------------------
    def write_run(self, res: RunResult, sweep: str | None = None, replace: bool = False) -> None:
        """Insert a finished run with all its metrics in one transaction."""
        rows = [
            (res.run_id, step, name, value)
            for name, values in res.curves.items()
            # wall time is not a result (it lives in the runs row); a counter never measured is no row
            if name not in ("step", "seconds") and any(v is not None for v in values)
            for step, value in zip(res.curves["step"], values)
            # a measure is a row where it was measured; a loss or accuracy is a row at every evaluation (NULL: NaN)
            if value is not None or name in EVAL_METRICS
        ]
        device = res.config.get("train", {}).get("device", "auto")
        if res.weights is not None:  # with the training state, so a longer budget can continue this run
            self.save_weights(res.run_id, {**res.weights, **({"state": res.state} if res.state is not None else {})})
        row = {
            "run_id": res.run_id, "config": json.dumps(res.config, sort_keys=True), "status": res.status,
            "memorized_step": res.memorized_step, "grokked_step": res.grokked_step, "grok_delay": res.grok_delay,
            "grokked_samples": res.grokked_samples, "grokked_seconds": res.grokked_seconds,
            "diverged_step": res.diverged_step, "steps_run": res.steps_run, "wall_seconds": res.wall_seconds,
            "final": json.dumps(res.final), "groklab_version": __version__, "torch_version": torch.__version__,
            "device": device, "finished_at": time.time(), "budget_id": budget_id(res.config),
            "stats": json.dumps(res.stats),
        }
        with self.transaction():
            if replace:
                self.conn.execute("DELETE FROM runs WHERE run_id = ?", (res.run_id,))
            cur = self.conn.execute(
                f"INSERT OR IGNORE INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                tuple(row.values()),
            )
            if cur.rowcount:  # another process may have stored the same run first: keep one copy
                self.conn.executemany("INSERT INTO metrics VALUES (?,?,?,?)", rows)
            if sweep:
                self.conn.execute("INSERT OR IGNORE INTO sweep_runs VALUES (?, ?)", (sweep, res.run_id))

    def add_sweep(self, name: str, spec: dict[str, Any], run_ids: Iterable[str]) -> SweepChange:
        """Make sweep `name` mean exactly `run_ids` (its latest expansion) and return what changed.

        Runs of an earlier expansion stay in the store, reachable by id; they just leave the sweep."""
        ids = list(dict.fromkeys(run_ids))
        with self.transaction():
            row = self.conn.execute("SELECT spec FROM sweeps WHERE name = ?", (name,)).fetchone()
            before = {r[0] for r in self.conn.execute("SELECT run_id FROM sweep_runs WHERE sweep = ?", (name,))}
            self.conn.execute(
                "INSERT INTO sweeps VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET spec = excluded.spec",
                (name, json.dumps(spec, sort_keys=True), time.time()),
            )
            self.conn.execute("DELETE FROM sweep_runs WHERE sweep = ?", (name,))
            self.conn.executemany("INSERT INTO sweep_runs VALUES (?, ?)", [(name, r) for r in ids])
        old = json.loads(row[0]) if row else None
        changed = [] if old is None else _spec_changes(old, spec)
        return SweepChange(name, old is None, changed, len(set(ids) - before), len(before - set(ids)))

    def write_verdicts(self, file: str, scale: str, verdicts: list[dict[str, Any]]) -> None:
        """Store the verdicts of a hypotheses file at a scale, replacing that file's earlier ones there."""
        now = time.time()
        with self.transaction():
            self.conn.execute("DELETE FROM verdicts WHERE file = ? AND scale = ?", (file, scale))
            self.conn.executemany("INSERT INTO verdicts VALUES (?, ?, ?, ?, ?)",
                                  [(file, scale, v["id"], json.dumps(v, sort_keys=True), now) for v in verdicts])

    def verdicts(self, file: str | None = None, scale: str | None = None) -> list[dict[str, Any]]:
        """Stored verdicts (in the order they were written), optionally of one file and scale."""
        q, args = "SELECT verdict FROM verdicts WHERE 1=1", []
        for col, val in (("file", file), ("scale", scale)):
            if val is not None:
                q += f" AND {col} = ?"
                args.append(val)
        return [json.loads(r[0]) for r in self.conn.execute(q + " ORDER BY created_at, rowid", args)]

    # ---- leases: which process trains which run ---------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.path.with_name(self.path.name + ".ckpt")

    def lease(self, run_ids: Iterable[str], owner: str) -> set[str]:
        """Lease the runs that are neither stored nor leased by a live process; return those won."""
        ids = list(run_ids)
        won = set()
        now = time.time()
        with self.transaction():
            stored = self.existing(ids)
            held = {r[0]: r[1:] for r in self.conn.execute(
                f"SELECT run_id, owner, host, pid, heartbeat FROM leases WHERE run_id IN ({','.join('?' * len(ids))})",
                ids)}
            for rid in ids:
                if rid in stored:
                    continue
                if rid in held and held[rid][0] != owner and not _stale(*held[rid][1:], now):
                    continue
                self.conn.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?)",
                                  (rid, owner, socket.gethostname(), os.getpid(), now))
                won.add(rid)
        return won

    def heartbeat(self, owner: str) -> None:
        with self.transaction():
            self.conn.execute("UPDATE leases SET heartbeat = ? WHERE owner = ?", (time.time(), owner))

    def release(self, owner: str, run_ids: Iterable[str] | None = None) -> None:
        with self.transaction():
            if run_ids is None:
                self.conn.execute("DELETE FROM leases WHERE owner = ?", (owner,))
            else:
                self.conn.executemany("DELETE FROM leases WHERE owner = ? AND run_id = ?",
                                      [(owner, r) for r in run_ids])

    def existing(self, ids: list[str], table: str = "runs") -> set[str]:
        """The ids among `ids` that `table` holds (stored runs by default)."""
        if not ids:
            return set()
        q = f"SELECT run_id FROM {table} WHERE run_id IN ({','.join('?' * len(ids))})"
        return {r[0] for r in self.conn.execute(q, ids)}

    # ---- reads --------------------------------------------------------------------------------
    def run_ids(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT run_id FROM runs")}

    def sweep_names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM sweeps ORDER BY created_at")]

    def sweep_spec(self, name: str) -> dict[str, Any]:
        row = self.conn.execute("SELECT spec FROM sweeps WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise StoreError(f"--sweep: no sweep named {name!r}; sweeps in the store: {self.sweep_names()}")
        return json.loads(row[0])

    def runs(self, sweep: str | None = None) -> pd.DataFrame:
        """One row per run: events, status, final metrics, and the config flattened as columns."""
        q = ("SELECT runs.*, (SELECT group_concat(sweep, ',') FROM (SELECT sweep FROM sweep_runs s "
             "WHERE s.run_id = runs.run_id ORDER BY sweep)) AS sweeps FROM runs")
        args: tuple[Any, ...] = ()
        if sweep is not None:
            self.sweep_spec(sweep)  # raises a clear error for an unknown sweep
            q += " WHERE run_id IN (SELECT run_id FROM sweep_runs WHERE sweep = ?)"
            args = (sweep,)
        df = pd.read_sql_query(q + " ORDER BY finished_at, run_id", self.conn, params=args)
        if df.empty:
            return df
        configs = [json.loads(c) for c in df["config"]]
        finals = [json.loads(f) for f in df["final"]]
        for k in ("train_acc", "val_acc", "train_loss", "val_loss"):
            df[f"final_{k}"] = [f.get(k) for f in finals]
        flat = pd.DataFrame([flatten(c) for c in configs], index=df.index)
        stats = pd.DataFrame([json.loads(x) if x else {} for x in df["stats"]], index=df.index)
        df = pd.concat([df.drop(columns=["final", "budget_id", "stats"]), stats, flat], axis=1)
        df["config"] = configs
        for col in ("memorized_step", "grokked_step", "grok_delay", "grokked_samples", "diverged_step"):
            df[col] = df[col].astype("Int64")
        return df

    def metrics(self, run_ids: Iterable[str] | None = None, names: Iterable[str] | None = None) -> pd.DataFrame:
        """Long format: run_id, step, name, value."""
        q, args = "SELECT run_id, step, name, value FROM metrics WHERE 1=1", []
        if run_ids is not None:
            ids = list(run_ids)
            q += f" AND run_id IN ({','.join('?' * len(ids))})"
            args += ids
        if names is not None:
            ns = list(names)
            q += f" AND name IN ({','.join('?' * len(ns))})"
            args += ns
        return pd.read_sql_query(q + " ORDER BY run_id, name, step", self.conn, params=args)

    def curves(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Wide format: one row per (run_id, step), one column per metric."""
        long = self.metrics(run_ids)
        if long.empty:
            return long
        return long.pivot_table(index=["run_id", "step"], columns="name", values="value", dropna=False).reset_index()

    def summary(self, run_id: str) -> dict[str, Any]:
        """The JSON summary of one stored run (as `groklab run --json` prints it)."""
        row = self.conn.execute(
            "SELECT run_id, status, memorized_step, grokked_step, grok_delay, grokked_samples, grokked_seconds, "
            "diverged_step, steps_run, wall_seconds, final, config, stats FROM runs WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        if row is None:
            matches = [r for r in self.run_ids() if r.startswith(run_id)] if run_id else []
            if len(matches) == 1:
                return self.summary(matches[0])
            raise StoreError(f"RUN_ID: no run {run_id!r} in {self.path}" + (f" (ambiguous: {matches})" if matches else ""))
        keys = ("run_id", "status", "memorized_step", "grokked_step", "grok_delay", "grokked_samples",
                "grokked_seconds", "diverged_step", "steps_run", "wall_seconds")
        out = dict(zip(keys, row[:10]))
        out["final"], out["stats"], out["config"] = json.loads(row[10]), json.loads(row[12] or "{}"), json.loads(row[11])
        if out["grokked_seconds"] is not None:
            out["grokked_seconds"] = round(out["grokked_seconds"], 3)
        out["wall_seconds"] = round(out["wall_seconds"], 3)
        return out


STALE_SECONDS = 900.0  # a lease whose owner has not beaten for this long is taken over


def _stale(host: str, pid: int, heartbeat: float, now: float) -> bool:
    """A lease is stale if its owner died (same host, pid gone) or stopped beating."""
    if now - heartbeat > STALE_SECONDS:
        return True
    if host == socket.gethostname():
        if pid == os.getpid():  # an earlier owner in this very process has ended
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error: short write transactions for WAL."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def open_store(path: str | Path = DEFAULT_PATH) -> Store:
    """Open an existing store for reading (raises StoreError if it does not exist)."""
    return Store(path, create=False)
