"""The report's verdict (level, sentence, strongest attack per FPR), the records at risk (exposure.jsonl), what to
do next, and the tie note, against fixed results."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tuneguard.attacks.result import AttackResult, MIAResult
from tuneguard.files import read_json, read_jsonl
from tuneguard.metrics import evaluate
from tuneguard.report import Members, exposure_rows, mia_verdict, next_steps, write_mia_report
from tuneguard.report.mia import mia_table, threshold_tie, verdict_text

SOME_SENTENCE = ("An attacker who holds 90 candidate records (45 of them from your training data) and uses ratio can "
                 "pick out 36% (95% CI 18%-53%) of the ones you trained on while wrongly accusing 10% of the others, "
                 "where guessing picks out 10%.")


def fixed(auc: float, auc_ci: list | None, tpr: dict[str, tuple[float, list | None]], *, n: tuple[int, int] = (45, 45),
          not_applicable: str | None = None) -> AttackResult:
    """An attack with hand-set metrics (``tpr`` maps "0.01" / "0.1" to (TPR, CI)); levels it lacks are None."""
    keys = ("0.001", "0.01", "0.1")
    metrics = {"auc": auc, "auc_ci": auc_ci, "tpr": {k: tpr[k][0] if k in tpr else None for k in keys},
               "tpr_ci": {k: tpr[k][1] if k in tpr else None for k in keys},
               "tpr_note": {k: None if k in tpr else "needs more non-members" for k in keys},
               "n_members": n[0], "n_nonmembers": n[1], "n_dropped": 0, "roc": {"fpr": [0, 1], "tpr": [0, 1]},
               "rule": "canonical", "n_boot": 200 if auc_ci else 0}
    return AttackResult(scores=np.zeros(sum(n)), raw=np.zeros(sum(n)), raw_name="s",
                        labels=np.r_[np.ones(n[0], int), np.zeros(n[1], int)], params={}, metrics=metrics,
                        not_applicable=not_applicable)


def result(**attacks: AttackResult) -> MIAResult:
    return MIAResult(title="t", settings={"reference": "smollm2-135m",
                                          "files": {"members": "train.jsonl", "nonmembers": "heldout.jsonl"}},
                     attacks={name.replace("_", "-"): a for name, a in attacks.items()})


NO_LEAK = dict(loss=fixed(0.52, [0.40, 0.64], {"0.1": (0.13, [0.04, 0.27])}),
               zlib=fixed(0.49, [0.37, 0.61], {"0.1": (0.09, [0.0, 0.2])}))
SOME = dict(loss=fixed(0.55, [0.43, 0.67], {"0.1": (0.2, [0.07, 0.33])}),
            ratio=fixed(0.70, [0.59, 0.80], {"0.1": (0.36, [0.18, 0.53])}))


def test_no_measurable_leak():
    v = mia_verdict(result(**NO_LEAK))
    assert (v.level, v.headline) == ("none", "Verdict: no measurable leak")
    assert v.sentence == ("No attack does measurably better than guessing: an attacker who holds 90 candidate records "
                          "(45 of them from your training data) and uses the strongest, loss, picks out 13% (95% CI "
                          "4%-27%) of the ones you trained on while wrongly accusing 10% of the others, where "
                          "guessing picks out 10%.")
    assert [(b.fpr, b.attack) for b in v.strongest] == [(0.1, "loss")]


def test_some_leak():
    v = mia_verdict(result(**SOME))
    assert (v.level, v.headline, v.sentence) == ("some", "Verdict: some leak", SOME_SENTENCE)
    assert v.best_auc.attack == "ratio" and v.figures() == ["at 10% FPR: ratio, TPR 36% [18%-53%]",
                                                           "by AUC: ratio, 0.700 [0.590, 0.800]"]


def test_an_auc_lower_bound_above_chance_alone_is_some_leak_and_the_sentence_gives_the_auc():
    v = mia_verdict(result(loss=fixed(0.62, [0.52, 0.72], {"0.1": (0.2, [0.05, 0.35])})))
    assert v.level == "some"
    assert v.sentence == ("An attacker who holds 90 candidate records (45 of them from your training data) and uses "
                          "loss can rank a record you trained on above one you did not 62% of the time (AUC 0.620 "
                          "[0.520, 0.720]), where guessing does so 50% of the time.")


@pytest.mark.parametrize(("tpr1", "level"), [((0.2, [0.12, 0.3]), "strong"), ((0.2, [0.09, 0.3]), "some")])
def test_strong_leak_at_one_percent_needs_ten_times_chance(tpr1, level):
    # TPR@1% with a lower bound of 12% is 12 times what guessing finds; 9% is not ten times, but beats chance.
    v = mia_verdict(result(ratio=fixed(0.7, [0.6, 0.8], {"0.01": tpr1, "0.1": (0.4, [0.3, 0.5])}, n=(200, 200))))
    assert v.level == level
    assert v.sentence == ("An attacker who holds 400 candidate records (200 of them from your training data) and "
                          f"uses ratio can pick out 20% (95% CI {tpr1[1][0]:.0%}-30%) of the ones you trained on while "
                          "wrongly accusing 1% of the others, where guessing picks out 1%.")


def test_strong_leak_by_half_the_members_at_ten_percent_or_by_auc():
    assert mia_verdict(result(loss=fixed(0.75, [0.7, 0.79], {"0.1": (0.6, [0.5, 0.7])}))).level == "strong"
    assert mia_verdict(result(loss=fixed(0.85, [0.8, 0.9], {"0.1": (0.45, [0.3, 0.6])}))).level == "strong"
    assert mia_verdict(result(loss=fixed(0.75, [0.7, 0.79], {"0.1": (0.55, [0.49, 0.7])}))).level == "some"


def test_the_strongest_attack_is_named_per_fpr():
    v = mia_verdict(result(loss=fixed(0.7, [0.6, 0.8], {"0.01": (0.02, [0.0, 0.05]), "0.1": (0.5, [0.4, 0.6])},
                                      n=(200, 200)),
                           ratio=fixed(0.66, [0.6, 0.72], {"0.01": (0.08, [0.04, 0.12]), "0.1": (0.3, [0.2, 0.4])},
                                       n=(200, 200))))
    assert [(b.fpr, b.attack) for b in v.strongest] == [(0.01, "ratio"), (0.1, "loss")]
    assert "at 1% FPR: ratio, TPR 8% [4%-12%]" in verdict_text(result(**{
        "ratio": fixed(0.66, [0.6, 0.72], {"0.01": (0.08, [0.04, 0.12])}, n=(200, 200))}))


def test_the_sentence_quotes_the_surest_evidence_not_only_the_top_figure():
    # loss has the higher TPR but a CI down to 5%; ratio's lower bound (20%) beats guessing (10%).
    v = mia_verdict(result(loss=fixed(0.55, [0.45, 0.65], {"0.1": (0.4, [0.05, 0.7])}),
                           ratio=fixed(0.54, [0.46, 0.62], {"0.1": (0.35, [0.2, 0.5])})))
    assert v.level == "some" and v.strongest[0].attack == "loss"
    assert "uses ratio can pick out 35% (95% CI 20%-50%)" in v.sentence


def test_the_blind_baseline_and_attacks_that_do_not_apply_never_count():
    shifted = fixed(0.95, [0.9, 0.99], {"0.1": (0.9, [0.8, 1.0])})
    inapplicable = fixed(0.97, [0.9, 1.0], {"0.1": (0.95, [0.9, 1.0])}, not_applicable="reference is the target")
    v = mia_verdict(result(**NO_LEAK, bag_of_words=shifted, ratio=inapplicable))
    assert v.level == "none" and {b.attack for b in v.strongest} == {"loss"} and v.best_auc.attack == "loss"
    only = mia_verdict(result(bag_of_words=shifted, ratio=inapplicable))
    assert only.level == "unmeasured" and "Nothing is measured about the model" in only.sentence


def test_a_confounded_split_comes_first(tmp_path):
    res = result(**SOME, bag_of_words=fixed(0.9, [0.85, 0.95], {"0.1": (0.7, [0.6, 0.8])}))
    v = mia_verdict(res)
    assert v.headline == "Verdict: not reliable, the split is confounded (measured: some leak)"
    lines = verdict_text(res).splitlines()
    assert lines[0] == v.headline and lines[1].startswith("  WARNING, confounded split: The blind bag-of-words")
    assert v.sentence == SOME_SENTENCE  # the measurement is still given, after the warning
    page = write_mia_report(tmp_path, res)["html"].read_text(encoding="utf-8")
    box = page[page.index('<section id="verdict"'):page.index("</section>")]
    assert box.index("Confounded split") < box.index("An attacker who holds")
    steps = next_steps(res, v)  # only fixing the split: no defence can be judged on it
    assert len(steps) == 1 and steps[0].command.startswith("tuneguard audit --model smollm2-135m --data train.jsonl")


def test_without_bootstrap_the_point_estimates_decide_and_the_verdict_says_so():
    v = mia_verdict(result(loss=fixed(0.7, None, {"0.1": (0.3, None)})))
    assert v.level == "some" and any("point estimates" in n for n in v.notes)
    assert "pick out 30% of the ones you trained on" in v.sentence


def test_too_few_nonmembers_for_any_fpr_the_auc_speaks():
    v = mia_verdict(result(loss=fixed(0.8, [0.6, 0.95], {}, n=(6, 6))))
    assert v.strongest == [] and v.level == "some"
    assert v.sentence == ("An attacker who holds 12 candidate records (6 of them from your training data) and uses "
                          "loss can rank a record you trained on above one you did not 80% of the time (AUC 0.800 "
                          "[0.600, 0.950]), where guessing does so 50% of the time.")
    none = mia_verdict(result(loss=fixed(0.55, [0.3, 0.8], {}, n=(6, 6))))
    assert none.level == "none" and none.sentence.startswith("No attack does measurably better than guessing: an "
                                                             "attacker who holds 12 candidate records")


def test_results_json_and_the_page_open_with_the_verdict(tmp_path):
    paths = write_mia_report(tmp_path, result(**SOME))
    saved = read_json(paths["json"])["verdict"]
    assert saved["level"] == "some" and saved["sentence"] == SOME_SENTENCE
    assert saved["strongest"] == [{"attack": "ratio", "value": 0.36, "ci": [0.18, 0.53], "fpr": 0.1}]
    page = paths["html"].read_text(encoding="utf-8")
    body = page[page.index("<body>"):]
    assert re.match(r"<body>\s*<h1>[^<]*</h1>\s*<section id=\"verdict\" class=\"verdict some\">", body)
    assert "strong = the TPR at some FPR α reaches min(10·α, 50%)" in page  # the thresholds are on the page


DEFENCE_WORDS = re.compile(r"soft|dp-sgd|differential|epsilon|goldfish|paraphras|dropout|rank|lora", re.I)


def test_without_a_comparison_the_advice_measures_before_naming_any_defence(tmp_path):
    # Fake results at every level: no step names (let alone praises) a defence, since nothing was measured.
    strong = result(loss=fixed(0.9, [0.85, 0.95], {"0.1": (0.8, [0.7, 0.9])}))
    for res in (result(**SOME), strong, result(**NO_LEAK)):
        for step in next_steps(res, mia_verdict(res)):
            assert not DEFENCE_WORDS.search(step.text), step.text
            assert step.command is None or not DEFENCE_WORDS.search(step.command.replace("--method lora", "")), step
    steps = next_steps(result(**SOME), mia_verdict(result(**SOME)))
    assert [s.command for s in steps] == [
        "tuneguard defend compare --model smollm2-135m --data train.jsonl --target 'auc<=0.6' --out COMPARE_DIR"]
    page = write_mia_report(tmp_path, result(**SOME))["html"].read_text(encoding="utf-8")
    assert page.count("tuneguard defend compare --model") == 1 and "keeping utility" not in page
    none = result(**NO_LEAK)
    steps = next_steps(none, mia_verdict(none))
    assert [s.command for s in steps] == [None] and "No defence is called for" in steps[0].text


def test_the_compare_command_carries_the_audit_settings_and_a_target_the_split_can_measure():
    res = result(**SOME)
    res.settings.update(files={"data": "notes.jsonl"}, members=150, nonmembers=150,
                        fine_tuning={"method": "lora", "config": {"epochs": 2, "lr": 0.001, "max_length": 96}})
    command = next_steps(res, mia_verdict(res))[0].command
    # 300 texts split in half leave 150 shadow non-members: enough for TPR at 1% FPR (>= 100).
    assert command == ("tuneguard defend compare --model smollm2-135m --data notes.jsonl --method lora --epochs 2 "
                       "--lr 0.001 --max-length 96 --target 'tpr@1%<=0.05' --out COMPARE_DIR")

    # The target's recorded base, not the reference, is what the user fine-tunes again (the reference may be a
    # shadow fine-tune).
    res.settings.update(base="HuggingFaceTB/SmolLM2-135M", reference="/cache/shadows/shadow-0")
    assert "--model HuggingFaceTB/SmolLM2-135M " in next_steps(res, mia_verdict(res))[0].command


def comparison(chosen: str | None) -> dict:
    """A fake compare.json: LoRA leaks above the target, DP-SGD at epsilon 8 meets it."""
    def row(name, kind, what, value, ci, ppl, gap, options=None):
        return {"name": name, "kind": kind, "what": what, "options": options or {}, "ppl": ppl, "gap_closed": gap,
                "leak": {"attack": "ratio", "value": value, "ci": ci}, "meets": value <= 0.05}

    return {"target": {"metric": "tpr", "fpr": 0.01, "bound": 0.05, "text": "tpr@1%<=0.05"}, "members": 256,
            "nonmembers": 256, "data": "notes.jsonl", "chosen": chosen, "closest": "dp-eps8",
            "command": "tuneguard defend dp --model smollm2-135m --data notes.jsonl --epsilon 8.0 --out FINAL_DIR",
            "rows": [row("plain", "lora", "LoRA with your settings", 0.31, [0.2, 0.4], 12.0, 1.0),
                     row("dp-eps8", "dp", "DP-SGD LoRA at epsilon 8", 0.02, [0.0, 0.05], 15.5, 0.42,
                         {"epsilon": 8.0})]}


def test_with_a_comparison_the_advice_names_the_chosen_regime_and_quotes_its_measurement():
    res = result(**SOME)
    steps = next_steps(res, mia_verdict(res), comparison("dp-eps8"))
    assert steps[0].text.startswith("Fine-tune with DP-SGD LoRA at epsilon 8: on a shadow split of your data (256 "
                                    "members, 256 non-members) it was the most useful of the 2 regimes compared")
    assert ("its strongest attack, ratio, reached TPR at 1% FPR 2% (95% CI 0%-5%); held-out perplexity 15.50, "
            "closing 42% of the perplexity gap") in steps[0].text
    assert steps[0].command.startswith("tuneguard defend dp --model smollm2-135m --data notes.jsonl --epsilon 8.0")
    assert steps[1].command == ("tuneguard audit-dp --model smollm2-135m --data notes.jsonl --epsilon 8.0 "
                                "--out DP_AUDIT_DIR")
    # Recorded in the result's settings, it is read from there.
    res.settings["comparison"] = comparison("dp-eps8")
    assert next_steps(res, mia_verdict(res))[0].text == steps[0].text
    none = next_steps(res, mia_verdict(res), comparison(None))
    assert len(none) == 1 and none[0].command is None
    assert none[0].text.startswith("None of the 2 regimes compared on a shadow split of your data")
    assert "The closest was DP-SGD LoRA at epsilon 8: its strongest attack, ratio, reached TPR at 1% FPR 2%" \
        in none[0].text


# --- records at risk --------------------------------------------------------------------------------------------

def scored(scores: list[float], labels: list[int], **kw) -> AttackResult:
    s, y = np.array(scores, dtype=float), np.array(labels)
    return AttackResult(scores=s, raw=s, raw_name="s", labels=y, params={}, metrics=evaluate(y, s, n_boot=0), **kw)


def test_exposure_ranks_members_as_by_hand(tmp_path):
    y = [1, 1, 1, 1, 0, 0, 0]
    res = MIAResult(title="t", settings={}, origin=[2, 0, 3, 1, 0, 1, 2], attacks={
        "a": scored([0.9, 0.1, 0.5, 0.5, 0.3, 0.2, 0.0], y),
        "b": scored([0.2, 0.8, 0.6, np.nan, 0.1, 0.3, 0.5], y),
        "bag-of-words": scored([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0], y),  # never part of the model's exposure
        "ratio": scored([0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 0.0], y, not_applicable="the reference is the target")})
    texts = ["member   zero\nwraps", "member one", "member two", "member three"]
    rows = exposure_rows(res, Members(texts, rows=[10, 11, 12, 13], file="m.jsonl"))
    # By hand: a ranks the members 1, 4, 2.5, 2.5 (a tie shares its average); b ranks 3, 1, 2 and cannot score
    # the fourth. Means: 2, 2.5, 2.25, 2.5; the two at 2.5 go by record number (origin 0 -> 10, origin 1 -> 11).
    assert [r["index"] for r in rows] == [12, 13, 10, 11]
    assert [r["aggregate"] for r in rows] == [2.0, 2.25, 2.5, 2.5]
    assert rows[0]["ranks"] == {"a": 1.0, "b": 3.0} and rows[3]["ranks"] == {"a": 2.5, "b": None}
    assert rows[3]["scores"] == {"a": 0.5, "b": None} and rows[3]["attacks"] == 1
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert rows[2]["excerpt"] == "member zero wraps"  # the text at origin 0, on one line
    assert all(r["flagged_by"] is None for r in rows)  # 3 non-members cannot measure a 10% FPR
    written = read_jsonl(write_mia_report(tmp_path, res, members=Members(texts, [10, 11, 12, 13]))["exposure"])
    assert [r["index"] for r in written] == [12, 13, 10, 11]


def test_flagged_by_counts_the_members_at_each_attacks_tpr_at_10_percent():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(40, int), np.zeros(60, int)]
    attacks = {"a": scored(list(rng.normal(size=100) + y), list(y)),
               "b": scored(list(np.round(rng.normal(size=100) + 0.5 * y, 1)), list(y))}  # rounded: ties
    res = MIAResult(title="t", settings={}, attacks=attacks, origin=list(range(40)) + list(range(60)))
    rows = exposure_rows(res)
    assert len(rows) == 40 and {r["index"] for r in rows} == set(range(40))
    expected = sum(round(a.tpr(0.1) * 40) for a in attacks.values())
    assert sum(r["flagged_by"] for r in rows) == expected > 0
    assert all(r["excerpt"] is None for r in rows)  # no texts given: records by index only


# --- ties at the threshold --------------------------------------------------------------------------------------

def test_a_large_tie_at_the_threshold_is_explained_not_printed_as_a_bare_zero():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(45, int), np.zeros(45, int)]
    # 38 texts (30 members, 8 non-members) tie at P = 1.0, as the tree ensemble's did in the demo.
    p = np.r_[np.ones(30), rng.uniform(0, 0.9, 15), np.ones(8), rng.uniform(0, 0.9, 37)]
    res = MIAResult(title="t", settings={}, attacks={"ensemble": scored(list(p), list(y)),
                                                     "loss": scored(list(rng.normal(size=90) + y), list(y))})
    assert res.attacks["ensemble"].tpr(0.1) == 0.0
    tie = threshold_tie(res.attacks["ensemble"], 0.1)
    assert tie == {"score": 1.0, "size": 38, "members": 30, "nonmembers": 8, "tpr_with": 30 / 45,
                   "fpr_with": 8 / 45}
    table = mia_table(res)
    assert "0.0% (tie)" in table.splitlines()[4 + list(res.attacks).index("ensemble")]
    assert ("TPR@10% (ensemble), tie: 38 texts (30 members, 8 non-members) tie at score 1; no threshold splits a "
            "tie, so the highest TPR at FPR <= 10% stops above it at 0.0%. Counting the whole tie gives TPR 66.7% at "
            "FPR 17.8%.") in table
    assert threshold_tie(res.attacks["loss"], 0.1) is None and "(loss), tie" not in table
