"""`tuneguard defend compare`: the privacy target, the candidates, the selection rule on a fake frontier, the budget,
the final command, and a tiny end-to-end run."""

from __future__ import annotations

import shlex
from types import SimpleNamespace

import pytest

from helpers import write_jsonl
from tuneguard.cli import build_parser, main
from tuneguard.defenses.compare import (CANDIDATES, _fit_budget, candidates, check_measurable, columns_of,
                                        final_command, select, strongest)
from tuneguard.errors import TuneguardError
from tuneguard.files import read_json
from tuneguard.privacy_target import Target, parse_target
from tuneguard.train import TrainConfig

TEXTS = [f"patient {i} was seen on day {i % 7} with a cough and fever {i * 13 % 97}, then sent home to rest"
         for i in range(24)]


# --- the target ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "target"), [
    ("tpr@1%<=0.05", Target("tpr", 0.05, 0.01)), (" TPR @ 10% <= 20% ", Target("tpr", 0.2, 0.1)),
    ("tpr@0.1%<=0.01", Target("tpr", 0.01, 0.001)), ("auc<=0.6", Target("auc", 0.6))])
def test_targets_parse(text, target):
    assert parse_target(text) == target
    assert parse_target(target.text) == target  # the canonical text reads back


@pytest.mark.parametrize(("text", "why"), [
    ("tpr@5%<=0.1", "TPR is measured at FPR 0.1%, 1%, 10%"), ("auc>=0.6", "must read tpr@FPR%<=BOUND"),
    ("tpr@1%<=1.5", "the TPR bound must be in [0, 1)"), ("auc<=0", "the AUC bound must be in (0, 1]")])
def test_bad_targets_are_refused_with_the_fix(text, why):
    with pytest.raises(TuneguardError, match=why.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_target(text)


def test_a_target_needs_enough_shadow_nonmembers():
    tpr1 = parse_target("tpr@1%<=0.05")
    assert tpr1.nonmembers_needed == 100 and parse_target("tpr@0.1%<=0.01").nonmembers_needed == 1000
    assert check_measurable(tpr1, 200, 0.5) == 100
    with pytest.raises(TuneguardError, match=r"^target tpr@1%<=0.05 needs at least 100 shadow non-members to measure "
                                             r"the TPR at 1% FPR, and 150 texts at member fraction 0.5 give 75: use "
                                             r"at least 200 texts, or a target this split can measure"):
        check_measurable(tpr1, 150, 0.5)


def test_an_unmeasurable_target_is_refused_before_any_training(tmp_path, capsys, monkeypatch):
    import tuneguard.defenses.compare as compare

    monkeypatch.setattr(compare, "plan_compare", lambda *a, **k: pytest.fail("planned (and loaded the model)"))
    data = tmp_path / "notes.jsonl"
    write_jsonl(data, TEXTS)
    rc = main(["defend", "compare", "--model", "tiny-gpt2", "--data", str(data), "--target", "tpr@1%<=0.05",
               "--out", str(tmp_path / "out")])
    assert rc == 2 and not (tmp_path / "out").exists()
    assert "needs at least 100 shadow non-members" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a target that cannot parse fails with the command line
        main(["defend", "compare", "--model", "m", "--data", "d", "--target", "tpr@2%<=0.1", "--out", "o"])
    assert "argument --target: privacy target 'tpr@2%<=0.1': TPR is measured at FPR" in capsys.readouterr().err


# --- the candidates -------------------------------------------------------------------------------------------------

def test_the_default_candidates_start_from_the_users_settings():
    train = TrainConfig(epochs=4, lr=1e-3, lora_r=16, lora_alpha=32, lora_dropout=0.05)
    chosen, notes = candidates(train, n_layers=30)
    assert [c.name for c in chosen] == list(CANDIDATES) and notes == []
    by = {c.name: c for c in chosen}
    assert by["fewer-epochs"].train == {"epochs": 2}
    assert by["lower-rank"].train == {"lora_r": 4, "lora_alpha": 8}  # the update's scale alpha/r is kept
    assert by["layer-exclusion"].train == {"lora_layers": list(range(15))}  # the 15 nearest the output excluded
    assert by["layer-exclusion"].what == "LoRA on layers 0-14 of 30 (the top 15 excluded)"
    assert by["soft"].options["method"] == "lora" and by["soft"].options["ratio"] == 1.0
    columns = {c.name: c for c in columns_of(chosen, train)}
    assert list(columns)[0] == "pretrained"
    assert columns["dp-eps1"].train.lr == pytest.approx(1e-2) and columns["dp-eps1"].train.grad_accum == 4
    assert columns["goldfish"].train.method == "full" and columns["goldfish"].train.lr == pytest.approx(1e-4)
    # One epoch, rank 2, dropout 0.1: those variants would train as the plain run does, and are left out, saying so.
    chosen, notes = candidates(TrainConfig(epochs=1, lora_r=2, lora_dropout=0.1), ["dp-eps8", "fewer-epochs"])
    assert [c.name for c in chosen] == ["plain", "dp-eps8"] and notes == ["fewer-epochs left out: it already trains "
                                                                          "1 epoch"]
    with pytest.raises(TuneguardError, match="compares LoRA and full fine-tuning regimes, not prefix"):
        candidates(TrainConfig(method="prefix"))
    # Layer exclusion needs the model's depth, and is not offered to a run that already picks its layers.
    assert candidates(train, ["layer-exclusion"])[1] == ["layer-exclusion left out: the model's layer count is "
                                                         "unknown"]
    assert candidates(TrainConfig(lora_layers=[0, 1]), ["layer-exclusion"], 30)[1] == [
        "layer-exclusion left out: it already adapts chosen layers (--lora-layers)"]
    assert candidates(TrainConfig(method="full"), ["layer-exclusion"], 30)[1] == [
        "layer-exclusion left out: not LoRA"]
    with pytest.raises(TuneguardError, match="defend compare has no candidate 'dropuot' .*did you mean 'dropout'"):
        candidates(train, ["dropuot"])


# --- the selection rule ----------------------------------------------------------------------------------------------

def row(name: str, value: float | None, ppl: float, ci: list[float] | None = None) -> dict:
    return {"name": name, "what": name.upper(), "kind": "lora", "ppl": ppl, "gap_closed": None,
            "leak": None if value is None else {"attack": "ratio", "value": value, "ci": ci}}


FRONTIER = [row("plain", 0.30, 10.0), row("dropout", 0.06, 10.5), row("dp-eps8", 0.04, 14.0, [0.02, 0.08]),
            row("dp-eps1", 0.01, 19.0, [0.0, 0.03]), row("soft", None, 9.0)]


def test_the_most_useful_regime_that_meets_the_target_is_chosen():
    choice = select(FRONTIER, parse_target("tpr@1%<=0.05"))
    assert (choice.chosen, choice.closest) == ("dp-eps8", None)  # dp-eps1 meets it too, with a worse perplexity
    assert choice.sentence.startswith("Of the 5 regimes compared, DP-EPS8 is the most useful whose strongest attack "
                                      "meets tpr@1%<=0.05: its strongest attack, ratio, reached TPR at 1% FPR 4% "
                                      "(95% CI 2%-8%); held-out perplexity 14.00.")
    # The rule reads the point estimate; the sentence says when the CI reaches past the target.
    assert choice.sentence.endswith("Its CI reaches 8%, above the target: with more non-members it might not meet "
                                    "it.")
    assert select(FRONTIER, parse_target("tpr@1%<=0.1")).chosen == "dropout"
    # An unmeasured regime (soft) never meets a target, however useful.
    assert select(FRONTIER, parse_target("tpr@1%<=0.5")).chosen == "plain"


def test_when_none_meets_the_target_it_says_so_and_shows_the_closest():
    choice = select(FRONTIER, parse_target("tpr@1%<=0.001"))
    assert (choice.chosen, choice.closest) == (None, "dp-eps1")
    assert choice.sentence.startswith("None of the 5 regimes meets tpr@1%<=0.001. The closest is DP-EPS1: its "
                                      "strongest attack, ratio, reached TPR at 1% FPR 1% (95% CI 0%-3%)")
    assert select([row("soft", None, 9.0)], parse_target("auc<=0.6")).closest is None


def test_the_strongest_attack_is_read_from_the_cell_as_the_verdict_counts_it():
    cell = {"auc": {"ratio": 0.7, "wbc": 0.8, "bag-of-words": 0.9, "ensemble": 0.75},
            "tpr_at_1pct": {"ratio": 0.2, "wbc": 0.1, "bag-of-words": 0.9, "ensemble": 0.3},
            "not_applicable": {"ensemble": "the reference is the target"},
            "max_auc": {"attack": "wbc", "value": 0.8, "ci": [0.7, 0.9]},
            "max_tpr_at_10pct": {"attack": "wbc", "value": 0.5, "ci": [0.4, 0.6]}}
    assert strongest(cell, parse_target("auc<=0.6")) == cell["max_auc"]
    assert strongest(cell, parse_target("tpr@10%<=0.2")) == cell["max_tpr_at_10pct"]
    # Neither the blind baseline nor an attack that does not apply counts; no CI is recorded at 1% FPR.
    assert strongest(cell, parse_target("tpr@1%<=0.05")) == {"attack": "ratio", "value": 0.2, "ci": None}
    recorded = {"attack": "ratio", "value": 0.2, "ci": [0.1, 0.3]}
    assert strongest({**cell, "max_tpr": {"0.01": recorded}}, parse_target("tpr@1%<=0.05")) == recorded
    assert strongest(cell, parse_target("tpr@0.1%<=0.01")) is None


# --- the budget and the final command ----------------------------------------------------------------------------

def test_the_budget_drops_the_most_expensive_candidates_first_never_the_plain_run():
    seconds = {"pretrained": 30, "plain": 300, "dropout": 300, "dp-eps8": 900, "soft": 3000}
    plan = SimpleNamespace(estimate=SimpleNamespace(seconds=dict(seconds)), dropped=[],
                           columns=[SimpleNamespace(name=n) for n in seconds])
    _fit_budget(plan, 26)  # 25.5 min without soft
    assert plan.dropped == ["soft (estimated 50.0 min)"] and [c.name for c in plan.columns] == [
        "pretrained", "plain", "dropout", "dp-eps8"]
    _fit_budget(plan, 10)
    assert plan.dropped[1:] == ["dp-eps8 (estimated 15.0 min)", "dropout (estimated 5.0 min)"]
    with pytest.raises(TuneguardError, match="below the estimated 5.5 minutes of the plain run and the pretrained "
                                             "reference alone"):
        _fit_budget(plan, 5)


def test_every_final_command_is_one_the_cli_accepts_with_the_cells_training_settings():
    train = TrainConfig(epochs=3, lr=1e-3, max_length=96, seed=1)
    chosen, _ = candidates(train, n_layers=30)
    plan = SimpleNamespace(base=SimpleNamespace(ref="smollm2-135m"),
                           source={"data": "my notes.jsonl", "column": "body"})
    parser = build_parser()
    for candidate, column in zip(chosen, columns_of(chosen, train)[1:]):
        command = final_command(candidate, column, plan)
        args = parser.parse_args(shlex.split(command)[1:])
        assert (args.data, args.column, args.out, args.max_length, args.seed) == ("my notes.jsonl", "body",
                                                                                 args.out, 96, 1)
        assert (args.method, args.epochs, args.lr, args.grad_accum) == (column.train.method, column.train.epochs,
                                                                        column.train.lr, column.train.grad_accum)
        if candidate.kind == "dp":
            assert args.epsilon == candidate.options["epsilon"] and args.lr == pytest.approx(1e-2)
        if candidate.kind == "soft":
            assert (args.ratio, args.paraphraser, args.paraphraser_param) == (1.0, "local", ["ban_ngram=4"])
        if candidate.kind == "goldfish":
            assert (args.k, args.h, args.method) == (4, 13, "full")
        assert args.lora_layers == column.train.lora_layers  # None but for layer exclusion
    commands = {c.name: final_command(c, column, plan) for c, column in zip(chosen, columns_of(chosen, train)[1:])}
    assert "--lora-layers 0-14 " in commands["layer-exclusion"]
    assert all("--lora-layers" not in command for name, command in commands.items() if name != "layer-exclusion")
    assert final_command(chosen[0], columns_of(chosen, train)[1], plan).startswith(
        "tuneguard finetune --model smollm2-135m --data 'my notes.jsonl' --column body --method lora --epochs 3")


# --- end to end ------------------------------------------------------------------------------------------------------

def test_a_tiny_comparison_writes_its_report_and_the_command_and_resumes(tmp_path, capsys):
    data = tmp_path / "notes.jsonl"
    write_jsonl(data, TEXTS)
    out = tmp_path / "out"
    # Every regime meets AUC <= 1: the most useful, plain LoRA (DP-SGD's noise costs perplexity), is chosen.
    argv = ["defend", "compare", "--model", "tiny-gpt2", "--data", str(data), "--candidates", "plain,dp-eps8",
            "--target", "auc<=1", "--epochs", "1", "--lr", "1e-2", "--batch-size", "4", "--max-length", "24",
            "--bootstrap", "20", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.index("Estimated time:") < printed.index("defend compare: tiny-gpt2 on a shadow split")
    saved = read_json(out / "compare.json")
    assert (saved["members"], saved["nonmembers"], saved["target"]["text"]) == (12, 12, "auc<=1")
    assert [r["name"] for r in saved["rows"]] == ["plain", "dp-eps8"]
    assert all(r["leak"]["attack"] in ("ratio", "ez-mia", "wbc", "ensemble") and r["meets"] for r in saved["rows"])
    plain, dp = saved["rows"]
    assert plain["gap_closed"] == pytest.approx(1.0) and plain["ppl"] < dp["ppl"] < saved["reference"]["ppl"]
    assert dp["epsilon_spent"] <= 8.0 + 1e-6 and plain["train_seconds"] > 0
    assert saved["chosen"] == "plain" and saved["command"] in printed
    assert saved["command"] == (f"tuneguard finetune --model tiny-gpt2 --data {data} --method lora --epochs 1 "
                                "--lr 0.01 --batch-size 4 --grad-accum 1 --max-length 24 --seed 0 --lora-r 16 "
                                "--lora-alpha 32 --lora-dropout 0.05 --out FINAL_DIR")
    # The advice of a later report quotes this comparison: the chosen regime, its measurement, its command.
    from tuneguard.report.advice import next_steps

    leaking = SimpleNamespace(level="some", confounded=None)
    steps = next_steps(SimpleNamespace(settings={"reference": "tiny-gpt2"}, attacks={}), leaking, saved)
    assert steps[0].text.startswith("Fine-tune with LoRA with your settings: on a shadow split of your data (12 "
                                    "members, 12 non-members) it was the most useful of the 2 regimes compared")
    assert steps[0].command == saved["command"]
    assert "DP-SGD's epsilon covers the final training run only" in (out / "compare.md").read_text()
    assert (out / "frontier.png").stat().st_size > 1000
    # A re-run reuses every cell (the estimate says so) and recomputes nothing.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("cell.json")}
    assert main(argv) == 0
    assert "(3 finished and reused; not measured: every cell is saved)" in capsys.readouterr().out
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("cell.json")}


def test_eval_texts_the_regimes_train_on_are_refused_before_any_model_loads(tmp_path):
    from tuneguard.defenses.compare import plan_compare

    with pytest.raises(TuneguardError, match="^2 of the 3 --eval texts are in the data compared on"):
        plan_compare("no-such-model", TEXTS, tmp_path / "out", target=parse_target("auc<=0.6"),
                     eval_texts=[TEXTS[0], " " + TEXTS[5], "a text of its own"])


def test_the_plan_excludes_the_upper_half_of_the_models_own_layers_and_refuses_a_typo_before_loading(tmp_path):
    from tuneguard.defenses.compare import plan_compare

    plan = plan_compare("tiny-llama", TEXTS, tmp_path / "out", target=parse_target("auc<=0.6"),
                        names=["layer-exclusion"], tokens_per_second=100.0)
    column = next(c for c in plan.columns if c.name == "layer-exclusion")
    assert column.train.lora_layers == [0] and plan.candidates["layer-exclusion"].what.endswith("of 2 (the top 1 "
                                                                                                 "excluded)")
    with pytest.raises(TuneguardError, match="has no candidate 'dropuot'"):
        plan_compare("no-such-model", TEXTS, tmp_path / "out", target=parse_target("auc<=0.6"), names=["dropuot"])
