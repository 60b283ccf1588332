"""`groklab` command line: run, sweep, report, verify, repro, ls, show, export.

Exit codes: 0 ok, 2 bad input (the message names the key and what is allowed), 1 internal error.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from groklab.config import ConfigError
from groklab.store import DEFAULT_PATH, StoreError

EPILOG = "Overrides are dotted keys with YAML values, e.g. optim.weight_decay=0.1 train.steps=5000."


def _split_config(items: list[str]) -> tuple[str | None, list[str]]:
    """First positional is the config file unless it looks like key=value."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def cmd_run(a: argparse.Namespace) -> int:
    from groklab.api import run
    from groklab.config import make_config

    path, overrides = _split_config(a.args)
    cfg = make_config(path, overrides)  # validate before the store is touched
    _threads(a)
    summary = run(cfg, store=None if a.no_store else a.store, force=a.force, progress=not a.quiet)
    if a.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)
    return 0


def cmd_sweep(a: argparse.Namespace) -> int:
    from groklab.api import sweep

    _threads(a)
    options = {}
    if a.backend == "ray":
        options = {"address": a.ray_address, "gpus_per_pack": a.gpus_per_pack, "cpus_per_pack": a.cpus_per_pack}
    df = sweep(a.spec, a.overrides, store=a.store, pack_size=a.pack_size, progress=not a.quiet,
               workers=a.workers, backend=a.backend, **options)
    if a.json:
        print(f"trained {df.attrs.get('trained', 0)} runs", file=sys.stderr)
        from groklab.store import Store

        with Store(a.store) as st:
            for rid in df["run_id"]:
                print(json.dumps(st.summary(rid)))
    else:
        counts = df["status"].value_counts().to_dict()
        print(f"sweep done: {len(df)} runs in {a.store} ({df.attrs.get('trained', 0)} trained by this command): "
              + ", ".join(f"{k} {v}" for k, v in counts.items()))
        print(f"next: groklab report --store {a.store} --sweep {df.attrs.get('sweep', '')}".rstrip())
    return 0


def cmd_config(a: argparse.Namespace) -> int:
    from groklab import reference

    print(reference.markdown() if a.markdown else reference.text(), end="")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from pathlib import Path

    from groklab.analysis import verdicts
    from groklab.analysis.report import report
    from groklab.store import open_store

    out = Path(a.output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o/--output: {str(out)!r} is an existing file; name a folder (new or existing)")
    with open_store(a.store) as st:
        # Claims verified on this sweep (groklab verify) are shown with their verdicts, from the store.
        tested = [v for v in st.verdicts() if a.sweep is not None and v.get("sweep") == a.sweep]
        sections = [verdicts.section(tested, None, "Verdicts of claims tested on this sweep")] if tested else []
        out = report(st, sweep=a.sweep, out=a.output, sections=sections)
    print(f"report written to {out}/index.html")
    return 0


def cmd_repro(a: argparse.Namespace) -> int:
    from groklab import reproduce as repro

    if a.list:
        for name, line in repro.listing():
            print(f"{name:<14}{line}")
        return 0
    if a.preset is None:
        raise ConfigError(f"repro: name a preset (allowed: {', '.join(repro.names())}) or give --list")
    _threads(a)
    result = repro.repro(a.preset, scale=a.scale, store=a.store, out=a.output, train=not a.no_train,
                         progress=not a.quiet, markdown=a.markdown, overrides=a.overrides, workers=a.workers)
    if a.json:
        print(json.dumps(result, indent=1, default=str))
        return 0
    print(f"{result['preset']} ({result['scale']}): {result['verdict']}")
    for sweep, n in result.get("missing_runs", {}).items():
        print(f"  {n} of sweep {sweep}'s runs are not in the store; its numbers come from the runs that are")
    if "numbers" in result:
        import pandas as pd

        shown = repro.display(pd.DataFrame(result["numbers"])).drop(columns=["source"])
        print(shown.to_string(index=False))
    else:
        for r in result["claims"]:
            print(f"  {r['id']:<28}{r['verdict']}")
    if a.output:
        print(f"report written to {a.output}/index.html")
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    from groklab.analysis import page
    from groklab.verify import verify

    _threads(a)
    rows = verify(a.hypotheses, scale=a.scale, store=a.store, out=a.output, train=not a.no_train,
                  progress=not a.quiet, workers=a.workers, markdown=a.markdown)
    if a.json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    width = max(len(r["id"]) for r in rows)
    for r in rows:
        line = f"{r['id']:<{width}}  {r['verdict']:<12}  "
        if r["verdict"] == "untestable":
            line += r["reason"]
        else:
            line += f"{r['effect']}; p(Holm) {page.fmt(r.get('p_holm'), 'p')}"
            if r.get("seeds_needed"):
                line += f"; ~{r['seeds_needed']} seeds/condition would decide it"
            if a.output:
                line += f"; figure {a.output}/claims/claim_{r['id']}.png"
        print(line)
    if a.output:
        print(f"report written to {a.output}/index.html")
    return 0


def cmd_ls(a: argparse.Namespace) -> int:
    from groklab.store import open_store

    with open_store(a.store) as st:
        df = st.runs(sweep=a.sweep)
    if df.empty:
        print("no runs")
        return 0
    df["sweeps"] = df["sweeps"].fillna("-")
    cols = ["run_id", "sweeps", "status", "memorized_step", "grokked_step", "steps_run", "final_val_acc",
            "task.op", "task.modulus", "model.kind", "optim.lr", "optim.weight_decay", "train.batch_size", "train.seed"]
    print(df[cols].to_string(index=False))
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    from groklab.store import open_store

    with open_store(a.store) as st:
        summary = st.summary(a.run_id)
        if a.curves:
            print(st.curves([summary["run_id"]]).drop(columns="run_id").to_string(index=False))
            return 0
    print(json.dumps(summary, indent=2))
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from groklab.analysis.export import export
    from groklab.store import open_store

    with open_store(a.store) as st:
        n = export(st, a.output, sweep=a.sweep, formats=tuple(a.format), tensorboard=a.tensorboard)
    print(f"exported {n['runs']} runs and {n['metrics']} metric rows to {a.output}/ ({', '.join(a.format)})"
          + (f"; TensorBoard logs in {a.tensorboard}" if a.tensorboard else ""))
    return 0


def _threads(a: argparse.Namespace) -> None:
    from groklab import threads

    n = threads.configure(a.threads)
    if not a.quiet and a.threads is None and n < threads.available_cores():
        print(f"groklab: {threads.available_cores() - n} of {threads.available_cores()} cores are busy with other "
              f"work: training on {n} thread(s) (set --threads or ${threads.ENV} to choose)", file=sys.stderr)


def _print_summary(s: dict) -> None:
    f = s["final"]
    print(
        f"run {s['run_id']}: {s['status']}  memorized_step={s['memorized_step']}  grokked_step={s['grokked_step']}  "
        f"steps_run={s['steps_run']}  final train_acc={_fmt(f['train_acc'])} val_acc={_fmt(f['val_acc'])}  "
        f"({s['wall_seconds']:.1f}s)"
    )


def _fmt(v: float | None) -> str:
    return "nan" if v is None else f"{v:.4f}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="groklab", description="A laboratory for grokking.", epilog=EPILOG)
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def store_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--store", default=DEFAULT_PATH, help=f"SQLite store (default: ./{DEFAULT_PATH})")

    def threads_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for training (default: $GROKLAB_THREADS, else the cores not busy with "
                             "other work)")

    r = sub.add_parser("run", help="train one run", epilog=EPILOG,
                       description="Train one run from CONFIG.yaml (optional) plus key=value overrides.")
    r.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value ...]")
    store_arg(r)
    r.add_argument("--json", action="store_true", help="print the JSON summary on stdout")
    r.add_argument("--force", action="store_true", help="train again even if the run is already stored")
    r.add_argument("--no-store", action="store_true", help="keep nothing on disk")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    threads_arg(r)
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("sweep", help="run a grid of runs x seeds", epilog=EPILOG,
                       description="Run every run of SWEEP.yaml not yet in the store; overrides apply to its base.")
    s.add_argument("spec", metavar="SWEEP.yaml")
    s.add_argument("overrides", nargs="*", metavar="key=value")
    store_arg(s)
    s.add_argument("--backend", default="local", choices=["local", "ray"],
                   help="local processes (default) or Ray tasks (pip install 'groklab[ray]')")
    s.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: one per CUDA device, or one on CPU)")
    s.add_argument("--ray-address", default=None,
                   help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray is started)")
    s.add_argument("--gpus-per-pack", type=float, default=0.0, help="Ray resources per pack (e.g. 0.25)")
    s.add_argument("--cpus-per-pack", type=float, default=1.0, help="Ray resources per pack (default 1)")
    s.add_argument("--resume", action="store_true",
                   help="continue a sweep (the default anyway): stored runs are skipped, unfinished packs "
                        "continue from their last checkpoint")
    s.add_argument("--pack-size", type=int, default=None,
                   help="max runs trained together in one pack (default 64; 1 = one at a time)")
    s.add_argument("--json", action="store_true", help="print one JSON summary per run on stdout")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    threads_arg(s)
    s.set_defaults(func=cmd_sweep)

    rp = sub.add_parser("report", help="figures and tables for a sweep or the whole store")
    store_arg(rp)
    rp.add_argument("--sweep", default=None, help="report one sweep (default: every run in the store)")
    rp.add_argument("-o", "--output", default="report", help="output folder (default: ./report)")
    rp.set_defaults(func=cmd_report)

    vf = sub.add_parser("verify", help="decide the claims of a hypotheses file: run its sweeps, print verdicts",
                        description="Run the sweeps HYPOTHESES.yaml needs (stored runs are reused), decide every "
                                    "claim (supported / contradicted / inconclusive) and store the verdicts.")
    vf.add_argument("hypotheses", metavar="HYPOTHESES.yaml")
    store_arg(vf)
    vf.add_argument("--scale", default="small", choices=["small", "full"],
                    help="the sweep sizes each sweep declares (default: small)")
    vf.add_argument("-o", "--output", default=None, help="also write the report (verdicts, figures) to this folder")
    vf.add_argument("--json", action="store_true", help="print the verdicts as JSON on stdout")
    vf.add_argument("--markdown", default=None, metavar="FILE",
                    help="also write the verdicts as Markdown (claim figures in FILE's folder, <name>_figures/)")
    vf.add_argument("--no-train", action="store_true",
                    help="decide from stored runs only; an error names any sweep with runs missing")
    vf.add_argument("--workers", type=int, default=None, help="local worker processes (as in `sweep`)")
    vf.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    threads_arg(vf)
    vf.set_defaults(func=cmd_verify)

    rr = sub.add_parser("repro", help="reproduce a published grokking setup: run it, compare with the paper",
                        description="Run preset NAME end to end (stored runs are reused) and compare groklab's "
                                    "numbers with the published ones (docs/reproductions.md).")
    rr.add_argument("preset", metavar="NAME", nargs="?", help="a preset (see --list) or a preset file")
    rr.add_argument("overrides", metavar="key=value", nargs="*", help="applied to every sweep's base config, e.g. "
                    "task.name=images task.path=DIR (Omnigrok on local MNIST files)")
    rr.add_argument("--list", action="store_true", help="list the presets, one line each")
    store_arg(rr)
    rr.add_argument("--scale", default="small", choices=["small", "paper"],
                    help="small: minutes on a laptop CPU (default); paper: the published size")
    rr.add_argument("-o", "--output", default=None, help="also write the report to this folder")
    rr.add_argument("--markdown", default=None, metavar="FILE", help="also write the agreement table as Markdown")
    rr.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    rr.add_argument("--no-train", action="store_true", help="read stored runs only; the output says how many of "
                    "each sweep's runs are missing and marks the verdict provisional (brief: as verify --no-train)")
    rr.add_argument("--workers", type=int, default=None, help="local worker processes (as in `sweep`)")
    rr.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    threads_arg(rr)
    rr.set_defaults(func=cmd_repro)

    ls = sub.add_parser("ls", help="list stored runs")
    store_arg(ls)
    ls.add_argument("--sweep", default=None)
    ls.set_defaults(func=cmd_ls)

    sh = sub.add_parser("show", help="print one run's summary (or its curves)")
    sh.add_argument("run_id", metavar="RUN_ID", help="run id or a unique prefix of it")
    store_arg(sh)
    sh.add_argument("--curves", action="store_true", help="print the evaluation curves as a table")
    sh.set_defaults(func=cmd_show)

    ex = sub.add_parser("export", help="write the runs and metrics (long format) tables, optionally TensorBoard logs")
    store_arg(ex)
    ex.add_argument("--sweep", default=None)
    ex.add_argument("-o", "--output", default="export", help="output folder (default: ./export)")
    ex.add_argument("--format", nargs="+", default=["csv"], choices=["csv", "parquet"],
                    help="table formats (default csv; parquet needs pyarrow)")
    ex.add_argument("--tensorboard", default=None, metavar="DIR",
                    help="also write TensorBoard event files, one folder per run (needs tensorboardX)")
    ex.set_defaults(func=cmd_export)

    cf = sub.add_parser("config", help="print the config reference: every key, its type, default, allowed values, "
                        "meaning")
    cf.add_argument("--markdown", action="store_true", help="as the Markdown tables of the README")
    cf.set_defaults(func=cmd_config)
    return p


def _version() -> str:
    from groklab import __version__

    return f"groklab {__version__}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse a command line; a command's positionals (config, overrides) and flags mix in any order.

    argparse cannot intermix arguments across sub-commands, so the command's own parser parses the rest."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    subs = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices
    if argv and argv[0] in subs:
        a = subs[argv[0]].parse_intermixed_args(argv[1:])
        a.command = argv[0]
        return a
    return p.parse_args(argv)  # --help, --version, or an unknown command: argparse says what to do


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        return a.func(a)
    except (ConfigError, StoreError) as e:
        print(f"groklab {a.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are in the store and unfinished packs are checkpointed; "
              "re-run the same command (or add --resume) to continue", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("groklab: internal error (a bug: please report it with the traceback above)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
