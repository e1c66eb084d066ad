"""The experiment report (table1.txt, tradeoff.png, report.html), rendered from hand-made summaries."""

import pytest

from tuneguard.report.experiment import experiment_table, write_experiment_report

CONFOUNDED = "The blind bag-of-words baseline ... tells members from non-members with AUC 0.900."


def cell(regime, kind, auc, **extra):
    return {"dataset": "A", "regime": regime, "kind": kind, "auc": auc, "average_auc": sum(auc.values()) / len(auc),
            "ppl_domain": 10.0, "ppl_general": 20.0, "max_length": 96, "not_applicable": {}, **extra}


def soft_summary(**keys):
    return {"train_size": 8, "paraphrased": 3, "ratio": 0.5, **keys}


@pytest.fixture
def summary():
    cells = {
        "pretrained": cell("pretrained", "pretrained", {"loss": 0.5, "ratio": 0.5}, train_size=0,
                           not_applicable={"ratio": "the reference model is the target itself"},
                           average_auc=0.5),
        "lora": cell("lora", "lora", {"loss": 0.7, "ratio": 0.9}, train_size=8, confounding_warning=CONFOUNDED),
        "soft ρ=0.5": cell("soft ρ=0.5", "soft", {"loss": 0.55, "ratio": 0.6}, soft_ratio=0.5, train_size=8,
                           soft=soft_summary(on_failure="original", originals_kept=1, dropped=0)),
        "soft ρ=1": cell("soft ρ=1", "soft", {"loss": 0.52, "ratio": 0.55}, soft_ratio=1.0, train_size=6,
                         soft=soft_summary(on_failure="drop", originals_kept=0, dropped=2, train_size=6)),
    }
    return {"name": "t", "model": "tiny-gpt2", "regimes": list(cells), "cells": {"A": cells}}


def rows(table):
    return {line.split("  ")[0].strip(): line.split() for line in table.splitlines()}


def test_not_applicable_scores_show_as_such_with_their_reason(summary):
    table = experiment_table(summary)
    assert rows(table)["ratio"][1] == "n/a" and "n/a: the reference model is the target itself" in table
    assert rows(table)["average"][1] == "0.500"


def test_soft_failure_policy_and_counts_per_cell(summary, tmp_path):
    table = experiment_table(summary)
    line = next(line for line in table.splitlines() if line.startswith("SOFT gate failures"))
    assert "original: 1 kept, 0 dropped" in line and "drop: 0 kept, 2 dropped" in line
    assert "8 (3 para.)" in table and "6 (3 para.)" in table
    summary["cells"]["A"]["soft ρ=1"]["soft"].update(on_failure="fallback", fallback_paraphrased=2, dropped=0)
    assert "fallback: 2 by fallback, 0 kept, 0 dropped" in experiment_table(summary)
    paths = write_experiment_report(tmp_path, summary)
    html = paths["html"].read_text()
    assert "original: 1 kept, 0 dropped" in html and paths["plot"].stat().st_size > 1000


def test_a_soft_cell_saved_without_its_failure_counts_is_marked_stale(summary):
    summary["cells"]["A"]["soft ρ=1"]["soft"] = {"train_size": 6, "paraphrased": 3}  # a cell from before the policy
    line = next(line for line in experiment_table(summary).splitlines() if line.startswith("SOFT gate failures"))
    assert line.rstrip().endswith("stale (re-run)")


def test_the_confounded_split_warning_is_shown_once_per_domain(summary, tmp_path):
    table = experiment_table(summary)
    assert table.count("WARNING, confounded split (A): " + CONFOUNDED) == 1
    html = write_experiment_report(tmp_path, summary)["html"].read_text()
    assert '<div class="alert">Confounded split: ' in html
    for c in summary["cells"]["A"].values():
        c.pop("confounding_warning", None)
    assert "confounded" not in experiment_table(summary)


def test_the_scoring_window_is_a_row(summary):
    assert rows(experiment_table(summary))["scoring window (tokens)"][3:] == ["96"] * 4


# -- max-attack rows and the privacy-utility frontier -----------------------------------------------------------

def frontier_cell(regime, kind, ppl, auc, tpr, ci=0.05, attack="ratio", **extra):
    return {**cell(regime, kind, {"loss": auc, "ratio": auc}), "ppl_domain": ppl, "average_auc": auc,
            "average_auc_ci": [auc - ci, auc + ci], "max_auc": {"attack": attack, "value": auc + 0.1, "ci": None},
            "max_tpr_at_10pct": {"attack": attack, "value": tpr, "ci": [tpr - ci, tpr + ci]}, **extra}


def setting(kind, options=None, knob=None):
    return {"kind": kind, "options": options or {}, "train": {"method": "full", "lr": 1e-4},
            "knob": None if knob is None else {"option": knob[0], "symbol": knob[1], "value": options[knob[0]]}}


@pytest.fixture
def frontier():
    soft = soft_summary(on_failure="original", originals_kept=0, dropped=0)
    cells = {
        "pretrained": frontier_cell("pretrained", "pretrained", 30.0, 0.5, 0.1),
        "full": frontier_cell("full", "full", 12.0, 0.9, 0.7),
        "lora": frontier_cell("lora", "lora", 14.0, 0.7, 0.4),
        "soft ρ=1": frontier_cell("soft ρ=1", "soft", 16.0, 0.55, 0.2, soft_ratio=1.0, soft=soft),
        "soft ρ=0.5": frontier_cell("soft ρ=0.5", "soft", 13.0, 0.65, 0.35, soft_ratio=0.5, soft=soft),
        "soft-wordnet ρ=1": frontier_cell("soft-wordnet ρ=1", "soft", 15.0, 0.6, 0.3, soft_ratio=1.0, soft=soft),
        "goldfish": frontier_cell("goldfish", "goldfish", 12.5, 0.8, 0.5, attack="ez-mia"),
        "dp": frontier_cell("dp", "dp", 20.0, 0.52, 0.12),
        "dp-eps1": frontier_cell("dp-eps1", "dp", 25.0, 0.5, 0.1),
    }
    local = {"paraphraser": "local", "ratio": None}
    settings = {
        "pretrained": setting("pretrained"), "full": setting("full"), "lora": setting("lora"),
        "soft ρ=1": setting("soft", {**local, "ratio": 1.0}, ("ratio", "ρ")),
        "soft ρ=0.5": setting("soft", {**local, "ratio": 0.5}, ("ratio", "ρ")),
        "soft-wordnet ρ=1": setting("soft", {"paraphraser": "wordnet", "ratio": 1.0}, ("ratio", "ρ")),
        "goldfish": setting("goldfish", {"k": 4, "h": 13}, ("k", "k")),
        "dp": setting("dp", {"epsilon": 8.0}, ("epsilon", "ε")),
        "dp-eps1": setting("dp", {"epsilon": 1.0}, ("epsilon", "ε")),
    }
    return {"name": "frontier", "model": "tiny-gpt2", "regimes": list(cells), "cells": {"A": cells},
            "settings": {"regimes": settings}}


def test_the_frontier_joins_each_defence_over_its_knob(frontier):
    from tuneguard.report.experiment import frontier_series

    data = frontier_series(frontier)["A"]
    assert [p["regime"] for p in data["references"]] == ["pretrained", "full"]
    lines = {line["label"]: line for line in data["lines"]}
    assert set(lines) == {"lora", "soft", "soft-wordnet", "goldfish", "dp"}
    # One paraphraser's ratios are one line, in knob order; another paraphraser is another defence.
    assert [(p["regime"], p["knob"]) for p in lines["soft"]["points"]] == [("soft ρ=0.5", 0.5), ("soft ρ=1", 1.0)]
    assert [p["knob"] for p in lines["dp"]["points"]] == [1.0, 8.0] and lines["dp"]["symbol"] == "ε"
    assert [p["regime"] for p in lines["soft-wordnet"]["points"]] == ["soft-wordnet ρ=1"]
    assert lines["lora"]["symbol"] is None and lines["lora"]["points"][0]["knob"] is None
    point = lines["goldfish"]["points"][0]
    assert (point["ppl"], point["auc"], point["tpr"], point["tpr_attack"]) == (12.5, 0.8, 0.5, "ez-mia")
    assert point["auc_ci"] == pytest.approx([0.75, 0.85]) and point["tpr_ci"] == pytest.approx([0.45, 0.55])


def test_the_frontier_figure_is_written_from_a_results_file(frontier, tmp_path):
    import json

    from tuneguard.report.experiment import tradeoff_figure

    (tmp_path / "results.json").write_text(json.dumps(frontier))
    png = tradeoff_figure(json.loads((tmp_path / "results.json").read_text()), tmp_path / "tradeoff.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # A cell from before the max-attack figures (no CIs, no TPR) still draws.
    for c in frontier["cells"]["A"].values():
        for key in ("average_auc_ci", "max_tpr_at_10pct", "max_auc"):
            c.pop(key)
    assert tradeoff_figure(frontier, tmp_path / "old.png").stat().st_size > 10_000


def test_each_regime_is_judged_by_its_strongest_attack_too(frontier, summary):
    table = experiment_table(frontier)
    assert rows(table)["max-attack AUC"][2:5] == ["0.600", "1.000", "0.800"]
    assert rows(table)["max-attack TPR@10%FPR"][2:5] == ["10%", "70%", "40%"]
    assert rows(table)["(max-TPR attack)"][-3:] == ["ez-mia", "ratio", "ratio"]
    # Cells saved before these figures existed say so rather than show nothing.
    assert set(rows(experiment_table(summary))["max-attack AUC"][2:]) == {"stale", "(re-run)"}


RUN = """
name = "tiny"
model = "tiny-gpt2"
out = "out"
attacks = ["loss", "ratio", "bag-of-words"]
general_texts = 4
[attack_options]
n_boot = 50
[train]
epochs = 2
lr = 0.01
batch_size = 4
max_length = 32
[[datasets]]
name = "A"
path = "a.jsonl"
members = 10
nonmembers = 10
[regimes]
pretrained = {}
goldfish = { k = 2, train = { lr = 3e-3 } }
"""


def test_a_run_records_each_regimes_strongest_attack_and_its_knob(tmp_path, caplog):
    import json
    import logging

    from helpers import write_jsonl
    from tuneguard.experiment import load_experiment, run_experiment

    write_jsonl(tmp_path / "a.jsonl", [f"alpha record {i}: value {i * 13 % 97} on day {i}." for i in range(24)])
    (tmp_path / "exp.toml").write_text(RUN)
    run_experiment(load_experiment(tmp_path / "exp.toml"), progress=False)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    cell = saved["cells"]["A"]["goldfish"]
    model_attacks = ["loss", "ratio"]  # the blind baseline measures the split, not the model
    assert cell["max_auc"]["value"] == max(cell["auc"][a] for a in model_attacks)
    assert cell["max_auc"]["attack"] in model_attacks and len(cell["max_auc"]["ci"]) == 2
    best = cell["max_tpr_at_10pct"]
    assert best["value"] == max(cell["tpr_at_10pct"][a] for a in model_attacks)
    assert best["ci"] == cell["tpr_at_10pct_ci"][best["attack"]]
    lo, hi = cell["average_auc_ci"]
    assert lo <= cell["average_auc"] <= hi
    assert saved["cells"]["A"]["pretrained"]["max_auc"]["attack"] == "loss"  # ratio does not apply to the base
    assert saved["settings"]["regimes"]["goldfish"]["knob"] == {"option": "k", "symbol": "k", "value": 2}
    assert saved["settings"]["regimes"]["pretrained"]["knob"] is None
    table = (tmp_path / "out" / "table1.txt").read_text()
    assert "max-attack TPR@10%FPR" in table and "(max-AUC attack)" in table
    # A cell saved before these figures is re-scored, its trained model reused.
    path = tmp_path / "out" / "A" / "goldfish" / "cell.json"
    old = json.loads(path.read_text())
    del old["key_parts"]["scored_fields"], old["max_auc"]
    path.write_text(json.dumps(old))
    model = tmp_path / "out" / "A" / "goldfish" / "model" / "run.json"
    stamp = model.stat().st_mtime_ns
    with caplog.at_level(logging.WARNING, logger="tuneguard.experiment"):
        again = run_experiment(load_experiment(tmp_path / "exp.toml"), progress=False)["cells"]["A"]["goldfish"]
    assert "goldfish: re-scoring it (its trained model is reused): its scored_fields changed" in caplog.text
    assert again["max_auc"] == cell["max_auc"] and model.stat().st_mtime_ns == stamp


def test_the_frontier_bench_file_loads():
    from pathlib import Path

    from tuneguard.experiment import load_experiment

    bench = Path(__file__).resolve().parents[1] / "bench" / "frontier_mini.toml"
    if not (bench.parent.parent.parent / "shared" / "data").is_dir():
        pytest.skip("../shared/data is not beside the project")
    exp = load_experiment(bench)
    assert [c.name for c in exp.regimes] == ["pretrained", "full", "lora", "soft ρ=0.5", "soft ρ=1",
                                             "soft-wordnet ρ=1", "goldfish", "dp", "dp-eps1"]
    assert [(d.name, d.members, d.nonmembers) for d in exp.datasets] == [("PubMed", 64, 64), ("arXiv", 64, 64)]
    assert {"ez-mia", "wbc"} <= set(exp.suite.attacks)
    columns = {c.name: c for c in exp.regimes}
    assert columns["soft ρ=1"].regime.params.paraphraser == "local"
    assert columns["goldfish"].train.method == "full" and columns["dp-eps1"].regime.params.epsilon == 1.0
    assert columns["dp"].train.epochs == columns["full"].train.epochs  # DP trains as many epochs as the others
