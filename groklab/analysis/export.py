"""`groklab export`: the store as files other tools read.

runs.{csv,parquet}: one row per run, config flattened into columns; metrics.{csv,parquet}: long
format (run_id, step, name, value); optionally TensorBoard event files, one folder per run.
"""

from __future__ import annotations

from pathlib import Path

from groklab.config import ConfigError
from groklab.store import Store


def export(store: Store, out: str | Path, sweep: str | None = None, formats: tuple[str, ...] = ("csv",),
           tensorboard: str | Path | None = None) -> dict[str, int]:
    """Write the runs and metrics tables in each of `formats` ('csv', 'parquet') to `out`."""
    bad = set(formats) - {"csv", "parquet"}
    if bad:
        raise ConfigError(f"--format: got {sorted(bad)}; allowed: csv, parquet")
    if "parquet" in formats:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError("--format: parquet needs pyarrow; pip install 'groklab[parquet]'") from None
    if tensorboard is not None:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            raise ConfigError("--tensorboard: needs tensorboardX; pip install 'groklab[tensorboard]'") from None
    runs = store.runs(sweep=sweep)
    metrics = store.metrics(runs["run_id"] if not runs.empty else [])
    runs = runs.drop(columns=["config"], errors="ignore")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        if fmt == "csv":
            runs.to_csv(out / "runs.csv", index=False)
            metrics.to_csv(out / "metrics.csv", index=False)
        else:
            # betas and other list values become strings: Parquet columns need one type
            runs.astype({c: str for c in runs.columns if runs[c].map(type).eq(list).any()}).to_parquet(
                out / "runs.parquet", index=False)
            metrics.to_parquet(out / "metrics.parquet", index=False)
    if tensorboard is not None:
        write_tensorboard(metrics, Path(tensorboard))
    return {"runs": len(runs), "metrics": len(metrics)}


def write_tensorboard(metrics, folder: Path) -> None:  # noqa: ANN001 - a long-format DataFrame
    """One event-file folder per run (`folder/<run_id>`), one scalar series per metric."""
    from tensorboardX import SummaryWriter

    for run_id, rows in metrics.groupby("run_id"):
        with SummaryWriter(logdir=str(folder / run_id)) as w:
            for row in rows.itertuples(index=False):
                if row.value == row.value:  # skip NaN / missing
                    w.add_scalar(row.name, row.value, global_step=int(row.step))
