"""bench/experiment_table.py: the committed table of an experiment, its TPR at 1% FPR and the gap it closes."""

from __future__ import annotations

import pytest

from helpers import load_script


def _cell(kind: str, ppl: float, tpr1: float) -> dict:
    leader = {"attack": "ratio", "value": 0.5, "ci": [0.4, 0.6]}
    return {"kind": kind, "ppl_domain": ppl, "average_auc": 0.5, "max_auc": leader,
            "max_tpr": {"0.01": {"attack": "wbc", "value": tpr1, "ci": [0.0, 0.1]}}, "max_tpr_at_10pct": leader}


SUMMARY = {"cells": {"PubMed": {"pretrained": _cell("pretrained", 30.0, 0.0), "lora": _cell("lora", 20.0, 0.2),
                                "dp": _cell("dp", 25.0, 0.04)}}}


def test_the_gap_closes_to_the_plain_lora_column_without_a_full_one():
    table = load_script("bench/experiment_table")
    gap_to = table.gap_column(SUMMARY, None)
    rows = {r["column"]: r for r in table.rows_of(SUMMARY, gap_to)}
    assert gap_to == "lora"
    assert [rows[c]["gap_closed"] for c in ("pretrained", "lora", "dp")] == [0.0, 1.0, 0.5]
    assert rows["dp"]["max_tpr_at_1pct"]["value"] == 0.04
    md = table.markdown(list(rows.values()), "cmd", gap_to)
    assert "gap closed (to lora)" in md and "| 0.040 wbc [0.000, 0.100] |" in md and "| 50% |" in md


def test_a_full_column_is_preferred_and_a_named_one_wins():
    table = load_script("bench/experiment_table")
    summary = {"cells": {"PubMed": {**SUMMARY["cells"]["PubMed"], "full": _cell("full", 10.0, 0.9)}}}
    assert table.gap_column(summary, None) == "full"
    assert table.rows_of(summary, "full")[2]["gap_closed"] == 0.25
    assert table.gap_column(summary, "lora") == "lora"
    with pytest.raises(SystemExit, match=r"--gap-to: no column 'lroa' in the results \(columns: pretrained, lora"):
        table.gap_column(summary, "lroa")
