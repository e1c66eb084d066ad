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
