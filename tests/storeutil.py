"""Test helper: a fingerprint of a store's rows, for 'the store is unchanged' assertions."""

import hashlib
import sqlite3


def rows_hash(path, skip=("leases",)):
    """Hash of every row of every table (leases are bookkeeping, left out); None if no store."""
    if not path.exists():
        return None
    con = sqlite3.connect(path)
    h = hashlib.sha256()
    for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"):
        if t in skip:
            continue
        for row in con.execute(f"SELECT * FROM {t} ORDER BY 1, 2"):
            h.update(repr(row).encode())
    con.close()
    return h.hexdigest()


def make_newer_store(path, version):
    """A groklab store that claims a schema version this groklab does not know."""
    from groklab.store import Store

    Store(path).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(version),))
    con.commit()
    con.close()
    return path
