"""`groklab verify HYPOTHESES.yaml`: run the sweeps a hypotheses file needs (reusing every stored run),
decide each claim (groklab.analysis.hypotheses), store the verdicts and write the report."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from groklab import api
from groklab.analysis import hypotheses, page, report, verdicts
from groklab.store import DEFAULT_PATH, Store, StoreError
from groklab.sweep import expand, load_spec


def verify(
    path: str | Path | dict[str, Any],
    scale: str = "small",
    store: Store | str | Path = DEFAULT_PATH,
    out: str | Path | None = None,
    train: bool = True,
    progress: bool = False,
    n_threads: int | None = None,
    workers: int | None = None,
    markdown: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Verdicts of every claim of the file at `scale` ('small' or 'full'), stored in the store.

    `train=False` decides from stored runs only (an error names a sweep with runs missing), so a stored
    verdict can be reproduced without training. `out`: a folder for the report (verdicts first, then one
    report per sweep, linked). `markdown`: also write the verdicts as a Markdown file, with each claim's figure
    (PNG) in a folder beside it (<name>_figures)."""
    hf = hypotheses.load(path)
    st = store if isinstance(store, Store) else Store(store)
    keys = list(dict.fromkeys(c.sweep for c in hf.claims if c.sweep is not None))
    for key in keys:
        spec = hypotheses.sweep_spec(hf, key, scale)
        if train:
            if progress:
                print(f"verify {hf.name}: sweep {spec['name']}", file=sys.stderr)
            api.sweep(spec, store=st, progress=progress, n_threads=n_threads, workers=workers)
        else:
            _check_stored(st, spec)
    rows, data = hypotheses.evaluate(hf, scale, lambda name: st.runs(sweep=name), st.curves)
    st.write_verdicts(hf.name, scale, rows)
    if out is not None:
        write_report(hf, scale, rows, data, st, Path(out))
    if markdown is not None:
        write_markdown(hf, scale, rows, data, Path(markdown))
    return rows


def write_markdown(hf: hypotheses.HypothesesFile, scale: str, rows: list[dict], data: dict, path: Path) -> Path:
    """The verdicts as Markdown at `path`, claim figures in <stem>_figures/ beside it."""
    figs = path.parent / f"{path.stem}_figures"
    path.parent.mkdir(parents=True, exist_ok=True)
    for row in rows:
        if row["verdict"] != "untestable":
            verdicts.claim_figure(row, data[row["id"]], figs / f"claim_{row['id']}", formats=("png",))
    source = "HYPOTHESES.yaml"
    if hf.path is not None:  # as the user would type it here: relative to the working folder when inside it
        rel = os.path.relpath(hf.path)
        source = hf.path if rel.startswith("..") else rel
    command = f"groklab verify {source} --scale {scale}"
    path.write_text(verdicts.markdown(rows, figs.name, command))
    return path


def _check_stored(st: Store, spec: dict[str, Any]) -> None:
    ids = {c.run_id for c in expand(load_spec(spec))}
    missing = ids - st.existing(sorted(ids))
    if missing:
        raise StoreError(f"--no-train: sweep {spec['name']} has {len(missing)} of {len(ids)} runs missing from "
                         f"{st.path}; run `groklab verify` without --no-train to train them")
    st.add_sweep(spec["name"], load_spec(spec).model_dump(mode="json"), sorted(ids))


def write_report(hf: hypotheses.HypothesesFile, scale: str, rows: list[dict], data: dict, st: Store, out: Path) -> Path:
    """out/index.html: the verdicts with a figure per claim; out/<sweep>/index.html: each sweep's report."""
    out.mkdir(parents=True, exist_ok=True)
    figs = out / "claims"
    figs.mkdir(exist_ok=True)
    for row in rows:
        if row["verdict"] != "untestable":
            verdicts.claim_figure(row, data[row["id"]], figs / f"claim_{row['id']}")
    sweeps = sorted({r["sweep"] for r in rows if r.get("sweep")})
    for name in sweeps:
        report.report(st, sweep=name, out=out / name)
    links = "".join(f'<li><a href="{name}/index.html">{name}</a></li>' for name in sweeps)
    counts = {v: sum(r["verdict"] == v for r in rows) for v in hypotheses.VERDICTS}
    intro = page.Section("Overview", (
        f"<p>Hypotheses file <code>{hf.name}</code> at scale <b>{scale}</b>: {len(rows)} claims — "
        + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + ". Each verdict applies the decision rule fixed "
        "in the file before the data were seen; p-values are Holm-adjusted across the file.</p>"
        f"<p>Each sweep's own report (curves, phases, survival curves, scaling fits): <ul>{links}</ul></p>"))
    html = page.page(f"groklab verdicts: {hf.name} ({scale})", [intro, verdicts.section(rows, figs, "Verdicts")])
    (out / "index.html").write_text(html)
    return out
