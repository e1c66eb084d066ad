"""The SOFT authors' recipe as options (second-half rewrite, dropped first half, the authors' schedule, held-out
members, the preset), selection by gain, the retained-token share, their report, and the ablation bench file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import SOFT_TEXTS as TEXTS, SOFT_TRAIN as TRAIN, BagEmbedder, ReverseParaphraser
from helpers import reverse_words as reverse, soft_config as config

from tuneguard.defenses.retained import pooled, retained_shares, trained_window
from tuneguard.defenses.soft import (SoftConfig, held_out_members, member_shares, run_soft, second_half,
                                     summary_line)
from tuneguard.errors import TuneguardError
from tuneguard.files import read_json, read_jsonl
from tuneguard.models import tiny_model
from tuneguard.models.embedded import gpt2_tokenizer
from tuneguard.paraphrase import GateConfig
from tuneguard.scoring import ScoringEngine
from tuneguard.train.batching import examples_digest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "soft_ablation.toml"
TRAIN2 = TRAIN.replace(epochs=2, method="full")  # the ablation protects full fine-tuning


@pytest.fixture(scope="module")
def base():
    return tiny_model()


# -- the retained-token share -----------------------------------------------------------------------------------

def test_retained_share_by_hand():
    tok = gpt2_tokenizer()
    member = "A cat sat on a mat"  # A Ġcat Ġsat Ġon Ġa Ġmat: one token per word
    trained = "A dog sat near a rug"  # shares A, Ġsat, Ġa
    assert len(trained_window(member, tok, 96)) == 6
    rows = retained_shares([member, member, member], [[trained], [], [member]], tok, 96,
                           pool=["one two three four five six", "a cat"])
    assert [(r["tokens"], r["retained"], r["share"]) for r in rows] == [(6, 3, 0.5), (6, 0, 0.0), (6, 6, 1.0)]
    # chance: against the pool text long enough (6 tokens; "a cat" is 2): "one two ..." shares none of the tokens
    assert rows[0]["chance"] == 0.0 and rows[1]["chance"] == 0.0
    # the trained window counts, not the whole text: 4 tokens of each, A Ġcat Ġsat Ġon against A Ġdog Ġsat Ġnear
    cut = retained_shares([member], [[trained]], tok, 4, pool=["A cat"])
    assert (cut[0]["tokens"], cut[0]["retained"]) == (4, 2)
    assert cut[0]["chance"] == 0.5  # "A cat" is shorter than the 4 tokens trained: used as it is (A, Ġcat of 4)
    assert pooled(rows) == {"members": 3, "tokens": 18, "share": 0.5, "chance": 0.0}
    with pytest.raises(TuneguardError, match="one list of trained texts per member"):
        retained_shares([member], [], tok, 96)


# -- the recipe options ---------------------------------------------------------------------------------------------

def test_options_are_declared_checked_and_the_preset_turns_on_all_four():
    cfg = SoftConfig(preset="authors", paraphraser="local")
    assert (cfg.rewrite_span, cfg.drop_unrewritten, cfg.schedule, cfg.holdout_scored_as_members) == \
        ("second-half", True, "authors", 0.1)
    assert cfg.paraphraser_options == {"ban": "every-word"}
    mine = SoftConfig(preset="authors", holdout_scored_as_members=0.2, paraphraser="local",
                      paraphraser_options={"ban": "ngram"})
    assert mine.holdout_scored_as_members == 0.2 and mine.paraphraser_options == {"ban": "ngram"}  # yours stay
    assert SoftConfig(**{k: getattr(cfg, k) for k in ("preset", "paraphraser", "paraphraser_options")}) == cfg
    default = SoftConfig()
    assert (default.rewrite_span, default.drop_unrewritten, default.schedule, default.holdout_scored_as_members,
            default.select_by, default.preset) == ("all", False, "warmup", 0.0, "loss", "none")
    for options, message in (({"drop_unrewritten": True}, "drop_unrewritten needs rewrite_span='second-half'"),
                             ({"schedule": "authors", "warmup_epochs": 2}, "schedule='authors' fixes the warm-up"),
                             ({"schedule": "authors", "start": "warm"}, "schedule='authors' fixes the warm-up"),
                             ({"select_by": "gain", "warmup_epochs": 0}, "select_by='gain' compares"),
                             ({"select_by": "gain", "schedule": "authors"}, "select_by='gain' compares"),
                             ({"holdout_scored_as_members": 1}, r"must be in \[0, 1\)"),
                             ({"schedule": "later"}, "must be one of warmup, authors"),
                             ({"preset": "paper"}, "must be one of none, authors")):
        with pytest.raises(TuneguardError, match=message):
            SoftConfig.create("regime 'soft'", options)


def test_second_half_is_cut_at_a_token_boundary_of_the_trained_window():
    tok = gpt2_tokenizer()
    text = "The committee memorised the budget of 1984 and met again on the fifth day of the month."
    window = trained_window(text, tok, 12)
    first, second, k = second_half(text, tok, 12)
    assert k == 6 and trained_window(first, tok, 100) == window[:6]
    assert trained_window(second, tok, 100) == window[6:]  # the same tokens: cut between two of them
    assert text.startswith(first + second) and len(trained_window(first + second, tok, 100)) == 12
    assert second_half("word", tok, 12) == ("", "word", 0)


@pytest.mark.parametrize("drop", [False, True])
def test_second_half_rewrite_keeps_or_drops_the_first_half(base, tmp_path, drop):
    cfg = config(ratio=0.3, warmup_epochs=0, rewrite_span="second-half", drop_unrewritten=drop)
    result = run_soft(base, TEXTS, tmp_path / "run", train=TRAIN, config=cfg, progress=False)
    rows = read_jsonl(tmp_path / "run" / "paraphrases.jsonl")
    tok = base.tokenizer
    for row in rows:
        text = TEXTS[row["index"]]
        first, second, k = second_half(text, tok, TRAIN.max_length)
        assert row["original"] == second and row["unrewritten"] == first and row["unrewritten_tokens"] == k
        assert row["paraphrase"] == reverse(second)  # only the second half went to the paraphraser
        expected = reverse(second) if drop else f"{first.rstrip()} {reverse(second)}"
        assert row["trained_as"] == expected and expected in result.train_texts
        assert (first.strip() in " ".join(result.train_texts)) != drop  # the dropped half is trained nowhere
        assert row["never_trained_tokens"] == (k if drop else 0)
    assert len(result.train_texts) == len(TEXTS)
    summary = result.summary
    assert summary["recipe"]["rewrite_span"] == "second-half" and summary["recipe"]["drop_unrewritten"] is drop
    removed = sum(r["unrewritten_tokens"] for r in rows) / summary["retained"]["all"]["tokens"]
    assert summary["never_trained_share"] == (pytest.approx(removed) if drop else 0)
    assert ("of member tokens never trained on (data removal, not obfuscation)" in summary_line(summary)) == drop
    assert read_json(tmp_path / "run" / "soft.json")["settings"]["drop_unrewritten"] is drop


def test_authors_schedule_rewrites_every_member_and_replaces_the_selected_from_epoch1(base, tmp_path):
    # The released finetune.py (select_epoch_data): before epoch 1 the lowest-loss ρ share under θ0 is swapped for
    # its rewrite, the others stay as written; from epoch 2 every member is trained as its rewrite.
    cfg = config(ratio=0.3, schedule="authors")
    result = run_soft(base, TEXTS, tmp_path / "run", train=TRAIN2, config=cfg, progress=False)
    run = tmp_path / "run"
    losses = read_json(run / "losses.json")
    assert losses["model"] == base.ref  # scored before any training
    theta0 = [-ll for ll in ScoringEngine(base, max_length=TRAIN2.max_length, cache=False, progress=False).ll(TEXTS)]
    assert losses["losses"] == pytest.approx(theta0)
    selected = read_json(run / "selection.json")["selected"]
    assert selected == sorted(sorted(range(10), key=lambda i: theta0[i])[:3])
    rows = read_jsonl(run / "paraphrases.jsonl")
    assert sorted(r["index"] for r in rows) == list(range(10))  # every member rewritten
    assert {r["index"] for r in rows if r["epoch1_replaced"]} == set(selected)
    epoch1 = read_json(run / "warmup" / "run.json")
    first = [reverse(t) if i in selected else t for i, t in enumerate(TEXTS)]
    assert epoch1["epochs_done"] == 1 and epoch1["data_digest"] == examples_digest(first)
    final = read_json(run / "final" / "run.json")
    assert final["config"]["epochs"] == 1 and final["data_digest"] == examples_digest(result.train_texts)
    assert final["base_ref"] == base.ref and final["start_ref"] == str(run / "warmup")  # continued from epoch 1
    assert result.train_texts == [reverse(t) for t in TEXTS]
    summary = result.summary
    assert summary["selected"] == 3 and summary["paraphrased"] == 10 and summary["epoch1_originals"] == 7
    assert not summary["originals_trained_first"] and summary["warmup_epochs"] is None
    assert "authors' schedule (every member rewritten; epoch 1 with the selected replaced)" in summary_line(summary)
    with pytest.raises(TuneguardError, match="needs epochs >= 2"):
        run_soft(base, TEXTS, tmp_path / "other", train=TRAIN, config=cfg, progress=False)


def test_held_out_members_are_never_trained_on_and_reported(base, tmp_path):
    cfg = config(ratio=0.5, holdout_scored_as_members=0.25)
    result = run_soft(base, TEXTS, tmp_path / "run", train=TRAIN, config=cfg, progress=False)
    held = result.held_out
    assert held == held_out_members(10, 0.25, 0) and len(held) == 3  # ⌈2.5⌉, as train_test_split counts
    kept = [t for i, t in enumerate(TEXTS) if i not in held]
    assert read_json(tmp_path / "run" / "warmup" / "run.json")["data_digest"] == examples_digest(kept)
    selected = read_json(tmp_path / "run" / "selection.json")["selected"]
    assert len(selected) == 3 and not set(selected) & set(held)  # ⌊0.5 · 7⌋ of the trained members
    assert len(result.train_texts) == 7 and not {TEXTS[i] for i in held} & set(result.train_texts)
    assert not any(reverse(TEXTS[i]) in result.train_texts for i in held)
    losses = read_json(tmp_path / "run" / "losses.json")["losses"]
    assert [losses[i] for i in held] == [None] * 3
    s = result.summary
    assert s["held_out_members"] == held and s["held_out"] == 3 and s["retained"]["held_out"]["share"] == 0.0
    assert s["retained"]["held_out"]["never_trained"] == 1.0
    held_tokens = s["retained"]["held_out"]["tokens"]
    assert s["never_trained_share"] == pytest.approx(held_tokens / s["retained"]["all"]["tokens"])
    assert s["retained"]["unselected"]["share"] == 1.0 and s["retained"]["paraphrased"]["members"] == 3


def test_held_out_members_are_scored_as_members_by_the_experiment(tmp_path, monkeypatch):
    import tuneguard.attacks as attacks
    from test_experiment import EXPERIMENT, experiment

    from tuneguard.experiment import draw_texts, run_experiment
    from tuneguard.paraphrase.gate import MiniLMEmbedder

    monkeypatch.setattr(MiniLMEmbedder, "encode", lambda self, texts: BagEmbedder().encode(texts))
    scored = {}
    real = attacks.run_attacks

    def spy(target, members, nonmembers, **kwargs):
        scored["members"] = list(members)
        return real(target, members, nonmembers, **kwargs)

    monkeypatch.setattr(attacks, "run_attacks", spy)
    text = EXPERIMENT.replace('attacks = ["loss", "zlib", "min-k", "ratio", "bag-of-words"]', 'attacks = ["loss"]')
    text = text.replace("pretrained = {}\nlora = {}\ndp = { epsilon = 50.0 }",
                        'soft = { ratio = 0.5, holdout_scored_as_members = 0.25, warmup_epochs = 0, paraphraser = '
                        '"local", paraphraser_options = { model = "tiny-gpt2", max_new_tokens = 8 } }')
    exp = experiment(tmp_path, text)
    cell = run_experiment(exp, progress=False)["cells"]["A"]["soft ρ=0.5"]
    members, _ = draw_texts(exp.datasets[0], exp.seed)
    assert cell["held_out_members"] == held_out_members(8, 0.25, 0) and len(cell["held_out_members"]) == 2
    assert scored["members"] == members  # held-out ones included: labelled members
    assert cell["train_size"] == 6 and cell["retained"]["held_out"]["members"] == 2
    table = (tmp_path / "out" / "table1.txt").read_text()
    assert "25% of members held out, scored as members" in table
    assert "removes data:" in table and "of member tokens never trained on (data removal, not obfuscation)" in table


def test_select_by_gain_takes_the_largest_warmup_gain_first(base, tmp_path):
    result = run_soft(base, TEXTS, tmp_path / "run", train=TRAIN, config=config(ratio=0.3, select_by="gain"),
                      progress=False)
    scored = read_json(tmp_path / "run" / "losses.json")
    gains = [b - w for b, w in zip(scored["base_losses"], scored["losses"])]
    selected = read_json(tmp_path / "run" / "selection.json")["selected"]
    assert selected == sorted(sorted(range(10), key=lambda i: -gains[i])[:3])
    assert selected != sorted(sorted(range(10), key=lambda i: scored["losses"][i])[:3])  # not the loss order
    rows = read_jsonl(tmp_path / "run" / "paraphrases.jsonl")
    assert [r["gain"] for r in rows] == pytest.approx([gains[i] for i in selected])
    assert result.summary["recipe"]["select_by"] == "gain"


def test_member_categories_and_failures_are_split(base, tmp_path):
    failing = config(ReverseParaphraser(copy_until=99), GateConfig(max_tries=1), ratio=0.2, warmup_epochs=0,
                     on_failure="drop")
    result = run_soft(base, TEXTS, tmp_path / "run", train=TRAIN, config=failing, progress=False)
    shares = member_shares(TEXTS, result.records, [], base.tokenizer, TRAIN.max_length, failing)
    assert sorted({s["category"] for s in shares}) == ["dropped", "unselected"]
    dropped = [s for s in shares if s["category"] == "dropped"]
    assert len(dropped) == 2 and all(s["share"] == 0 and s["never_trained"] == s["tokens"] for s in dropped)
    assert all(0 < s["chance"] < 1 for s in shares if s["category"] == "unselected")  # the texts share words
    assert result.summary["retained"]["dropped"]["never_trained"] == 1.0
    kept = sum(s["tokens"] for s in shares if s["category"] == "unselected")
    assert result.summary["retained_share"] == pytest.approx(kept / sum(s["tokens"] for s in shares))


# -- the report ---------------------------------------------------------------------------------------------------

def test_table_shows_the_recipe_the_retained_share_and_labels_removal():
    from test_report_experiment import cell, soft_summary

    from tuneguard.report.experiment import experiment_table

    removing = soft_summary(on_failure="original", originals_kept=0, dropped=0, held_out=6,
                            recipe={"rewrite_span": "second-half", "drop_unrewritten": True, "schedule": "warmup",
                                    "holdout_scored_as_members": 0.1, "ban": "every-word", "select_by": "loss"},
                            never_trained_share=0.55)
    honest = soft_summary(on_failure="original", originals_kept=0, dropped=0, never_trained_share=0.0,
                          recipe={"rewrite_span": "all", "schedule": "warmup", "holdout_scored_as_members": 0.0})
    retained = {"all": {"members": 8, "tokens": 100, "share": 0.62, "chance": 0.27}}
    cells = {"full": cell("full", "full", {"loss": 0.9}, train_size=8),
             "soft": cell("soft", "soft", {"loss": 0.6}, soft=honest, retained=retained),
             "authors": cell("authors", "soft", {"loss": 0.5}, soft=removing, retained=retained)}
    table = experiment_table({"name": "t", "model": "m", "regimes": list(cells), "cells": {"A": cells}})
    lines = {line.split("  ")[0]: line for line in table.splitlines()}
    assert "every-word ban, second half rewritten, first dropped, 10% of members held out" in table
    assert "default" in lines["SOFT recipe"]
    assert lines["retained-token share (chance)"].split()[3:] == ["1.000", "0.620", "(0.270)", "0.620", "(0.270)"]
    assert lines["member tokens never trained on"].split()[-3:] == ["0%", "0%", "55%"]
    assert "8 (3 para., 6 held out)" in table
    assert ("authors: removes data: 55.0% of member tokens never trained on (data removal, not obfuscation); "
            "its AUC is no obfuscation result") in table
    assert "soft: removes data" not in table


# -- the ablation bench file --------------------------------------------------------------------------------------

def needs_shared_data() -> None:
    if not (BENCH.parent.parent.parent / "shared" / "data").is_dir():
        pytest.skip("../shared/data is not beside the project")


def test_the_ablation_file_loads():
    from tuneguard.experiment import load_experiment

    needs_shared_data()
    exp = load_experiment(BENCH)
    assert [c.name for c in exp.regimes] == [
        "pretrained", "full", "lora", "soft ρ=1", "soft-everyword ρ=1", "soft-half ρ=1", "soft-schedule ρ=1",
        "soft-holdout ρ=1", "soft-authors ρ=1", "soft-authors ρ=0.5", "soft-gain ρ=0.5", "soft-gain ρ=0.75",
        "soft-lora ρ=1"]
    assert [(d.name, d.members, d.nonmembers) for d in exp.datasets] == [("PubMed", 64, 64), ("arXiv", 64, 64)]
    columns = {c.name: c.regime.params for c in exp.regimes}
    assert columns["soft-authors ρ=1"].schedule == "authors" and columns["soft-authors ρ=1"].drop_unrewritten
    assert columns["soft-authors ρ=1"].paraphraser_options["ban"] == "every-word"
    assert columns["soft-half ρ=1"].rewrite_span == "second-half" and columns["soft-holdout ρ=1"].schedule == "warmup"
    assert columns["soft-gain ρ=0.5"].select_by == "gain"
    trains = {c.name: c.train for c in exp.regimes}
    assert trains["soft ρ=1"] == trains["full"].replace(method="full") and trains["soft-lora ρ=1"].method == "lora"
    assert {"ez-mia", "wbc", "ensemble"} <= set(exp.suite.attacks)


@pytest.mark.slow
def test_the_ablation_runs_end_to_end_at_a_tiny_size(tmp_path, monkeypatch):
    """The bench file with tiny models (the base, and the paraphraser's), 8 + 8 texts per domain, 32-token windows."""
    from tuneguard.experiment import load_experiment, run_experiment
    from tuneguard.paraphrase.gate import MiniLMEmbedder
    from tuneguard.paraphrase.local import LocalParaphraser

    needs_shared_data()
    monkeypatch.setattr(MiniLMEmbedder, "encode", lambda self, texts: BagEmbedder().encode(texts))
    # The paraphraser: a tiny model with room for an abstract in its prompt (tiny-gpt2 has 256 positions).
    paraphraser = tiny_model(n_positions=2048)
    monkeypatch.setattr(LocalParaphraser, "loaded", property(lambda self: paraphraser))
    text = (BENCH.read_text().replace('model = "smollm2-135m"', 'model = "tiny-gpt2"')
            .replace('out = "/tmp/tuneguard-bench/soft_ablation"', f'out = "{tmp_path / "out"}"')
            .replace("members = 64", "members = 8").replace("nonmembers = 64", "nonmembers = 8")
            .replace("max_length = 96", "max_length = 32").replace("general_texts = 24", "general_texts = 4")
            .replace("paraphraser_options = { ban_ngram = 4",
                     "paraphraser_options = { max_new_tokens = 16, ban_ngram = 4")
            .replace('"../../shared/', f'"{BENCH.parent.parent.parent}/shared/'))
    (tmp_path / "tiny.toml").write_text(text)
    summary = run_experiment(load_experiment(tmp_path / "tiny.toml"), progress=False)
    cells = summary["cells"]["PubMed"]
    assert cells["soft-authors ρ=1"]["soft"]["never_trained_share"] > 0
    assert cells["soft-holdout ρ=1"]["held_out_members"] and cells["soft ρ=1"]["soft"]["never_trained_share"] == 0
    table = (tmp_path / "out" / "table1.txt").read_text()
    assert "retained-token share (chance)" in table and "soft-authors ρ=1: removes data" in table


def test_the_authors_schedule_is_versioned_so_runs_of_its_first_reading_are_redone(base, tmp_path):
    # Under the first reading epoch 1 trained every original: a run or experiment cell saved then carries no version,
    # so its soft.json is refused and its cell key differs; every other SOFT run keeps its key.
    from tuneguard.defenses.soft import AUTHORS_SCHEDULE_VERSION
    from tuneguard.regimes import REGIMES

    soft = {"paraphraser": ReverseParaphraser(), "embedder": BagEmbedder()}
    assert REGIMES.make("soft", schedule="authors", **soft).versions() == {"schedule": AUTHORS_SCHEDULE_VERSION}
    assert REGIMES.make("soft", **soft).versions() == {} and REGIMES.make("full").versions() == {}
    run = tmp_path / "run"
    run_soft(base, TEXTS, run, train=TRAIN2, config=config(ratio=0.3, schedule="authors"), progress=False)
    saved = read_json(run / "soft.json")
    assert saved["settings"]["schedule_version"] == AUTHORS_SCHEDULE_VERSION
    del saved["settings"]["schedule_version"]  # as the first reading wrote it
    (run / "soft.json").write_text(json.dumps(saved))
    with pytest.raises(TuneguardError, match=r"other settings \(schedule_version\)"):
        run_soft(base, TEXTS, run, train=TRAIN2, config=config(ratio=0.3, schedule="authors"), progress=False)
