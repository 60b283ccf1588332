"""groklab: a laboratory for grokking.

    import groklab
    summary = groklab.run({"task": {"modulus": 23}}, overrides=["optim.weight_decay=1.0"])
    runs = groklab.sweep("examples/wd_sweep.yaml")          # pandas DataFrame, one row per run
    store = groklab.open_store("groklab.db"); store.curves()  # every stored curve
    verdicts = groklab.verify("hypotheses/brief.yaml")       # claims decided: supported / contradicted / ...
    result = groklab.repro("nanda2023")                       # a published setup, ours beside the paper's numbers
"""

__version__ = "0.2.0"

from groklab.api import run, sweep  # noqa: E402
from groklab.config import Config, ConfigError, make_config  # noqa: E402
from groklab.store import Store, StoreError, open_store  # noqa: E402
from groklab.sweep import SweepSpec, load_spec  # noqa: E402


def report(store: "Store | str" = "groklab.db", sweep: str | None = None, out: str = "report") -> str:
    """Write figures and tables for a sweep (or every run) to `out`; return the folder."""
    from groklab.analysis.report import report as _report

    st = store if isinstance(store, Store) else open_store(store)
    return str(_report(st, sweep=sweep, out=out))


def verify(hypotheses: str, scale: str = "small", store: "Store | str" = "groklab.db", out: str | None = None,
           train: bool = True, progress: bool = False) -> list[dict]:
    """Decide every claim of a hypotheses file: run the sweeps it needs (stored runs are reused), store and
    return the verdicts (one dict per claim); `out` also writes the report. See docs/hypotheses.md."""
    from groklab.verify import verify as _verify

    return _verify(hypotheses, scale=scale, store=store, out=out, train=train, progress=progress)


def repro(name: str, scale: str = "small", store: "Store | str" = "groklab.db", out: str | None = None,
          train: bool = True, progress: bool = False) -> dict:
    """Run a published setup (a preset: `groklab repro --list`) at scale 'small' or 'paper', reusing stored runs;
    return its agreement table (`numbers`) and `verdict`; `out` also writes the page. See docs/reproductions.md."""
    from groklab.reproduce import repro as _repro

    return _repro(name, scale=scale, store=store, out=out, train=train, progress=progress)


def export(store: "Store | str" = "groklab.db", out: str = "export", sweep: str | None = None,
           formats: tuple[str, ...] = ("csv",), tensorboard: str | None = None) -> dict[str, int]:
    """Write runs and metrics tables (csv / parquet) and optionally TensorBoard logs; return row counts."""
    from groklab.analysis.export import export as _export

    st = store if isinstance(store, Store) else open_store(store)
    return _export(st, out, sweep=sweep, formats=formats, tensorboard=tensorboard)


__all__ = [
    "Config", "ConfigError", "Store", "export", "StoreError", "SweepSpec", "load_spec", "make_config",
    "open_store", "repro", "report", "run", "sweep", "verify", "__version__",
]
