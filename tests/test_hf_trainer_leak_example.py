"""examples/hf_trainer_leak.py's summary: where a leak curve first goes beyond a line, and what a run stopped at that
budget keeps (the check before)."""

from __future__ import annotations

from helpers import load_script

SETTINGS = {"model": "tiny", "method": "lora", "members": 8, "epochs": 2, "sample": 4, "budget": None}


def point(step: int, auc: float, tpr: float) -> dict:
    return {"step": step, "epoch": step / 10, "attacks": {"ratio": {"auc": auc, "tpr": {"0.1": tpr}}},
            "strongest": {"attack": "ratio", "auc": auc}, "nonmember_perplexity": 30.0, "seconds": 1.0}


def test_summary_keeps_the_check_before_the_first_one_beyond_each_line():
    example = load_script("examples/hf_trainer_leak")
    points = [point(0, 0.50, 0.10), point(10, 0.58, 0.25), point(20, 0.70, 0.40)]
    summary = example.summarise(points, {0: 30.0, 10: 25.0, 20: 26.0}, SETTINGS, 12.0)

    strongest = summary["crossings"][0]
    assert strongest["attack"] == "strongest"
    assert strongest["tpr@10%<=0.2"]["beyond"] == {"step": 10, "epoch": 1.0, "eval_perplexity": 25.0, "value": 0.25}
    assert strongest["tpr@10%<=0.2"]["kept"]["step"] == 0  # beyond at the second check: keep the first
    assert strongest["auc<=0.6"]["beyond"]["step"] == 20
    assert strongest["auc<=0.6"]["kept"] == {"step": 10, "epoch": 1.0, "eval_perplexity": 25.0, "value": 0.58}
    assert summary["best"] == {"step": 10, "eval_perplexity": 25.0}
    assert summary["final"] == {"step": 20, "eval_perplexity": 26.0}
    assert summary["leak_seconds"] == 3.0


def test_summary_says_when_a_line_is_never_crossed_or_crossed_at_the_first_check():
    example = load_script("examples/hf_trainer_leak")
    points = [point(0, 0.65, 0.10), point(10, 0.66, 0.15)]
    summary = example.summarise(points, {0: 30.0, 10: 25.0}, SETTINGS, 2.0)

    strongest = summary["crossings"][0]
    assert strongest["tpr@10%<=0.2"] is None
    assert strongest["auc<=0.6"]["kept"] is None and strongest["auc<=0.6"]["beyond"]["step"] == 0
    row = next(line for line in example.markdown(summary).splitlines() if line.startswith("| strongest |"))
    assert row.split(" | ")[1:3] == ["never", "the final model"]
    assert "nothing (the first check)" in row
