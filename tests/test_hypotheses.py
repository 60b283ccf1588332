"""Hypotheses files and verdicts: a planted effect is supported, its reverse contradicted, a null effect
inconclusive; verdicts are stored and reproduced from the store without training."""

import json

import numpy as np
import pandas as pd
import pytest

from groklab.analysis import hypotheses, phases, stats
from groklab.cli import main
from groklab.config import ConfigError
from groklab.store import Store
from groklab.verify import verify

BUDGET = 1000


def synthetic_runs(times: dict[float, list[float | None]]) -> pd.DataFrame:
    """Runs of one axis (optim.weight_decay) with given grok steps (None: never within BUDGET)."""
    rows = []
    for wd, ts in times.items():
        for seed, t in enumerate(ts):
            rows.append({"run_id": f"wd{wd}-s{seed}", "train.seed": seed, "optim.weight_decay": wd,
                         "train.steps": BUDGET, "steps_run": BUDGET if t is None else t + 100,
                         "wall_seconds": 1.0, "grokked_step": t, "memorized_step": 50, "status": "grokked",
                         "train.batch_size": 64, "final_train_acc": 1.0, "final_val_acc": 1.0 if t else 0.1})
    return pd.DataFrame(rows)


def decide(claim: dict, runs: pd.DataFrame) -> dict:
    hf = hypotheses.load({"name": "t", "sweeps": {"s": {"spec": {}}}, "claims": [{"id": "c", "claim": "c", "sweep": "s",
                                                                                  **claim}]})
    rows, _ = hypotheses.evaluate(hf, "small", lambda name: runs, lambda ids: pd.DataFrame())
    return rows[0]


rng = np.random.default_rng(0)
FAST = [int(t) for t in rng.normal(200, 20, 8)]
SLOW = [int(t) for t in rng.normal(600, 60, 8)]
DIFF = {"measure": "grokked_step", "statistic": "difference", "a": {"optim.weight_decay": 0.0},
        "b": {"optim.weight_decay": 1.0}}


def test_planted_difference_supported_reverse_contradicted():
    runs = synthetic_runs({0.0: SLOW, 1.0: FAST})
    yes = decide({**DIFF, "direction": "less"}, runs)
    assert yes["verdict"] == "supported", yes
    assert yes["estimate"] < 0 and yes["high"] < 0 and yes["p_holm"] < 0.05
    no = decide({**DIFF, "direction": "greater"}, runs)
    assert no["verdict"] == "contradicted", no


def test_null_effect_with_few_noisy_seeds_is_inconclusive_and_says_how_many_seeds():
    noisy = np.random.default_rng(1)
    runs = synthetic_runs({0.0: [int(t) for t in noisy.uniform(100, 900, 3)],
                           1.0: [int(t) for t in noisy.uniform(100, 900, 3)]})
    r = decide({**DIFF, "direction": "less"}, runs)
    assert r["verdict"] == "inconclusive", r
    assert r["low"] < 0 < r["high"]
    assert r["seeds_needed"] is None or r["seeds_needed"] > 3


def test_censored_runs_count_as_not_yet_grokked():
    """Runs of wd 0 that never grokked are censored at the budget, not dropped: the trend is still decided."""
    runs = synthetic_runs({0.0: [None] * 4, 0.5: [700, 800, None, 750], 1.0: [300, 350, 320, 310],
                           2.0: [150, 160, 140, 170]})
    r = decide({"measure": "grokked_step", "statistic": "trend", "axis": "optim.weight_decay",
                "direction": "decreasing"}, runs)
    assert r["verdict"] == "supported", r
    assert r["n_runs"] == 16


def test_equivalence_claim():
    same = synthetic_runs({0.0: [200, 210, 190, 205, 195, 200, 202, 198], 1.0: [201, 208, 193, 204, 196, 199, 203, 197]})
    r = decide({**DIFF, "direction": "equal", "min_effect": 0.2}, same)
    assert r["verdict"] == "supported", r
    far = synthetic_runs({0.0: SLOW, 1.0: FAST})
    assert decide({**DIFF, "direction": "equal", "min_effect": 0.2}, far)["verdict"] == "contradicted"


def test_holm_adjusts_across_the_file():
    runs = synthetic_runs({0.0: SLOW, 1.0: FAST})
    hf = hypotheses.load({"name": "t", "sweeps": {"s": {"spec": {}}}, "claims": [
        {"id": f"c{i}", "claim": "c", "sweep": "s", **DIFF, "direction": "less"} for i in range(3)]})
    rows, _ = hypotheses.evaluate(hf, "small", lambda name: runs, lambda ids: pd.DataFrame())
    p = rows[0]["p"]
    assert [r["p_holm"] for r in rows] == pytest.approx(list(stats.holm([p, p, p])))
    assert rows[0]["p_holm"] == pytest.approx(min(1.0, 3 * p))


@pytest.mark.parametrize("claim, key", [
    ({"sweep": "s", "measure": "grokked_step", "statistic": "trend", "direction": "less", "axis": "x"}, "direction"),
    ({"sweep": "s", "measure": "bogus", "statistic": "trend", "direction": "less", "axis": "x"}, "measure"),
    ({"sweep": "nope", "measure": "grokked_step", "statistic": "trend", "direction": "decreasing", "axis": "x"},
     "sweep"),
    ({"sweep": "s", "measure": "grokked_step", "statistic": "difference", "direction": "equal", "a": {}, "b": {}},
     "min_effect"),
])
def test_bad_claims_name_the_problem(claim, key):
    with pytest.raises(ConfigError, match=key):
        hypotheses.load({"name": "t", "sweeps": {"s": {"spec": {}}}, "claims": [{"id": "bad", "claim": "c", **claim}]})


def test_scale_merges_into_the_spec():
    hf = hypotheses.load({"name": "t", "sweeps": {"s": {"spec": {"base": {"train": {"steps": 100, "eval_every": 10}},
                                                                   "seeds": [0]},
                                                          "full": {"base": {"train": {"steps": 5000}}, "seeds": [0, 1]}}},
                          "claims": [{"id": "u", "claim": "c", "untestable": "why"}]})
    small, full = hypotheses.sweep_spec(hf, "s", "small"), hypotheses.sweep_spec(hf, "s", "full")
    assert small["base"]["train"] == {"steps": 100, "eval_every": 10} and small["name"] == "t.s.small"
    assert full["base"]["train"] == {"steps": 5000, "eval_every": 10} and full["seeds"] == [0, 1]
    with pytest.raises(ConfigError, match="--scale"):
        hypotheses.sweep_spec(hf, "s", "huge")


def test_phase_classifier_on_constructed_curves():
    steps = np.arange(0, 1001, 50)
    rule = phases.PhaseRule()

    def run(train_at, val_at):
        tr = np.where(steps >= train_at, 1.0, 0.1) if train_at is not None else np.full(len(steps), 0.5)
        va = np.where(steps >= val_at, 0.95, 0.05) if val_at is not None else np.full(len(steps), 0.05)
        return tr, va

    cases = {"comprehension": run(100, 150), "grokking": run(100, 700), "memorization": run(100, None),
             "confusion": run(None, None), "comprehension-val-first": run(None, 300)}
    curves = pd.concat([pd.DataFrame({"run_id": k, "step": steps, "train_acc": tr, "val_acc": va})
                        for k, (tr, va) in cases.items()])
    runs = pd.DataFrame({"run_id": list(cases), "train.steps": 1000})
    got = dict(zip(runs["run_id"], phases.phases(runs, curves, rule)["phase"]))
    assert got == {"comprehension": "comprehension", "grokking": "grokking", "memorization": "memorization",
                   "confusion": "confusion", "comprehension-val-first": "comprehension"}
    # the delay is 10 % of the budget by default; an absolute delay replaces it
    assert phases.classify(100, 150, 1000, rule) == "comprehension"
    assert phases.classify(100, 250, 1000, rule) == "grokking"
    assert phases.classify(100, 250, 1000, phases.PhaseRule(delay=500)) == "comprehension"
    with pytest.raises(ConfigError, match="analysis.phases.delay"):
        phases.rule_from({"phases": {"delay": -1}})


# ---- end to end: a tiny hypotheses file trained for real ------------------------------------------------------

TINY_FILE = {
    "name": "tiny",
    "sweeps": {"wd": {"spec": {
        "base": {"task": {"modulus": 23, "train_frac": 0.7}, "model": {"kind": "mlp", "layers": 2, "width": 64},
                 "optim": {"lr": 1e-2}, "train": {"steps": 1000, "eval_every": 25, "stop": {"after_grok": 1}}},
        "grid": {"optim.weight_decay": [0.0, 1.0]}, "seeds": [0, 1, 2, 3, 4]}, "full": {"seeds": list(range(10))}}},
    "claims": [
        {"id": "decay-sooner", "claim": "with decay the MLP groks sooner", "sweep": "wd", "measure": "grokked_step",
         "statistic": "difference", "a": {"optim.weight_decay": 0.0}, "b": {"optim.weight_decay": 1.0},
         "direction": "less"},
        {"id": "decay-later", "claim": "the reverse", "sweep": "wd", "measure": "grokked_step",
         "statistic": "difference", "a": {"optim.weight_decay": 0.0}, "b": {"optim.weight_decay": 1.0},
         "direction": "greater"},
        {"id": "gans", "claim": "GANs", "untestable": "no generator"},
    ],
}


def test_verify_decides_stores_and_reproduces_without_training(tmp_path, capsys):
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_FILE))
    db = tmp_path / "s.db"
    rows = verify(path, store=db)
    got = {r["id"]: r["verdict"] for r in rows}
    assert got == {"decay-sooner": "supported", "decay-later": "contradicted", "gans": "untestable"}, rows
    with Store(db) as st:
        assert st.verdicts("tiny", "small") == json.loads(json.dumps(rows))
        n_runs = len(st.runs())
    # from the store alone: the same verdicts, nothing trained
    assert main(["verify", str(path), "--store", str(db), "--no-train", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [r["verdict"] for r in again] == [r["verdict"] for r in rows]
    assert [r.get("p_holm") for r in again] == [r.get("p_holm") for r in rows]
    with Store(db) as st:
        assert len(st.runs()) == n_runs
    # --no-train on a scale never trained names the sweep and exits 2, the store untouched
    assert main(["verify", str(path), "--store", str(db), "--no-train", "--scale", "full"]) == 2
    assert "tiny.wd.full" in capsys.readouterr().err
    # the sweep's report shows the verdicts of the claims tested on it, from the store
    assert main(["report", "--store", str(db), "--sweep", "tiny.wd.small", "-o", str(tmp_path / "r")]) == 0
    page = (tmp_path / "r" / "index.html").read_text()
    assert "decay-sooner" in page and "supported" in page and "contradicted" in page
    # and as Markdown, with each tested claim's figure beside it
    verify(path, store=db, train=False, markdown=tmp_path / "md" / "findings.md")
    md = (tmp_path / "md" / "findings.md").read_text()
    assert "### decay-sooner" in md and "**supported**" in md and "findings_figures/claim_decay-sooner.png" in md
    assert (tmp_path / "md" / "findings_figures" / "claim_decay-sooner.png").stat().st_size > 0


def test_conditions_match_defaults_and_sections():
    """A run without a key has its default (stored configs leave out what does not apply); a section that is
    set (a batch schedule, flattened into sub-keys) is not null."""
    runs = pd.DataFrame({"train.batch_schedule": [None, np.nan, np.nan],
                         "train.batch_schedule.kind": [np.nan, "adaptive", "ramp"],
                         "train.exposure.kind": [np.nan, np.nan, "gradual"]})
    assert hypotheses._matches(runs, {"train.batch_schedule": None}, "a").tolist() == [True, False, False]
    assert hypotheses._matches(runs, {"train.batch_schedule.kind": "adaptive"}, "b").tolist() == [False, True, False]
    assert hypotheses._matches(runs, {"train.exposure.kind": "abrupt"}, "a").tolist() == [True, True, False]
    assert hypotheses._matches(runs, {"task.augment.shift": 0}, "a").tolist() == [True, True, True]
    with pytest.raises(ConfigError, match="a.optim.bogus"):
        hypotheses._matches(runs, {"optim.bogus": 1}, "a")
