"""SOFT: selection, the training set D', resumable stages, failures, threshold mode and the CLI (tiny models)."""

from __future__ import annotations

import itertools
import json
import math
from types import SimpleNamespace

import pytest
from helpers import SOFT_TEXTS as TEXTS, SOFT_TRAIN as TRAIN, BagEmbedder, NewerTrainConfig, ReverseParaphraser
from helpers import reverse_words as reverse, soft_config as config, write_jsonl

from tuneguard import wordnet
from tuneguard.defenses import soft
from tuneguard.defenses.soft import SoftConfig, run_soft, select_by_ratio, select_by_threshold, training_set
from tuneguard.errors import TuneguardError
from tuneguard.files import read_json, read_jsonl
from tuneguard.models import load_model, tiny_model
from tuneguard.paraphrase import GateConfig
from tuneguard.train import TrainConfig


@pytest.fixture(scope="module")
def base():
    return tiny_model()


def test_ratio_selects_exactly_the_lowest_losses():
    losses = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0]
    assert select_by_ratio(losses, 0.3) == [1, 3, 5]  # floor(0.3 * 10) = 3, despite 0.3 * 10 < 3 in floats
    assert select_by_ratio(losses, 0.25) == [1, 5]  # floor(2.5)
    assert select_by_ratio(losses, 0) == [] and select_by_ratio(losses, 1) == list(range(10))
    assert select_by_ratio([0.5, 0.5, 0.1], 0.67) == [0, 2]  # ties broken by index
    with pytest.raises(TuneguardError, match="ratio"):
        select_by_ratio(losses, 1.5)


def test_threshold_selects_below_the_reference_quantile():
    picked, threshold = select_by_threshold([1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0], 0.5)
    assert threshold == 3.0 and picked == [0, 1]
    with pytest.raises(TuneguardError, match="reference"):
        select_by_threshold([1.0], [math.nan], 0.5)


def test_training_set_follows_each_outcome():
    records = [{"index": 1, "outcome": "paraphrased", "paraphrase": "B'", "trained_as": "B'"},
               {"index": 2, "outcome": "original", "paraphrase": "x", "trained_as": "C"},
               {"index": 3, "outcome": "dropped", "paraphrase": "y", "trained_as": None}]
    assert training_set(["A", "B", "C", "D"], records) == ["A", "B'", "C"]
    assert training_set(["A", "B", "C", "D", "E"], records, held_out=[0, 1]) == ["C", "E"]


def test_run_soft_paraphrases_the_lowest_loss_fraction(base, tmp_path, monkeypatch):
    ticks = itertools.count(10.0, 2.5)  # a mocked clock: the paraphrase stage takes 2.5 s, whatever the machine
    monkeypatch.setattr(soft, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    result = run_soft(base, TEXTS, tmp_path / "run", train=TRAIN, config=config(ratio=0.3), progress=False)
    run = tmp_path / "run"
    losses = read_json(run / "losses.json")["losses"]
    selected = read_json(run / "selection.json")["selected"]
    assert len(selected) == 3
    assert max(losses[i] for i in selected) <= min(losses[i] for i in range(10) if i not in selected)
    rows = read_jsonl(run / "paraphrases.jsonl")
    assert [r["index"] for r in rows] == selected
    assert set(rows[0]) >= {"original", "paraphrase", "loss", "similarity", "longest_common_run", "ngram_overlap",
                            "attempts", "status", "outcome", "paraphraser"}
    assert all(r["outcome"] == "paraphrased" and r["paraphraser"] == "reverse" for r in rows)
    expected = [reverse(t) if i in selected else t for i, t in enumerate(TEXTS)]
    assert result.train_texts == expected
    record = read_json(run / "final" / "run.json")
    assert record["n_examples"] == 10 and record["status"] == "done"
    assert (run / "warmup" / "run.json").is_file()
    assert result.summary["selected"] == 3 and result.summary["paraphrased"] == 3 and result.summary["failed"] == 0
    assert result.summary["on_failure"] == "original" and result.summary["originals_kept"] == 0
    assert result.summary["dropped"] == 0 and result.summary["train_size"] == 10
    assert read_json(run / "soft.json")["summary"] == result.summary
    assert result.summary["paraphrase_seconds"] == 2.5 and result.summary["paraphrases_per_second"] == 1.2


def test_second_run_does_no_work(base, tmp_path, monkeypatch):
    run_soft(base, TEXTS, tmp_path / "run", train=TRAIN, config=config(), progress=False)
    final_record = (tmp_path / "run" / "final" / "run.json").read_text()
    calls = []
    real_finetune = soft.finetune

    def counting_finetune(model, examples, out_dir, config=None, **kw):
        calls.append(out_dir.name)
        return real_finetune(model, examples, out_dir, config, **kw)

    def no_scoring(*a, **k):
        raise AssertionError("scored again")

    monkeypatch.setattr(soft, "finetune", counting_finetune)
    monkeypatch.setattr(soft, "ScoringEngine", no_scoring)
    paraphraser = ReverseParaphraser()
    again = run_soft(base, TEXTS, tmp_path / "run", train=TRAIN, config=config(paraphraser), progress=False)
    assert paraphraser.calls == []
    assert calls == ["final"]  # the warm-up is not even loaded; the final run is found finished, not retrained
    assert (tmp_path / "run" / "final" / "run.json").read_text() == final_record
    assert again.summary["selected"] == 5


def test_a_new_train_config_option_at_its_default_keeps_a_saved_soft_run(base, tmp_path):
    first = run_soft(base, TEXTS, tmp_path / "run", train=TRAIN, config=config(), progress=False)
    newer = NewerTrainConfig(**TRAIN.to_dict())  # a later TrainConfig, its new option at its default
    again = run_soft(base, TEXTS, tmp_path / "run", train=newer, config=config(), progress=False)
    assert again.summary == first.summary


def test_lost_stage_is_redone_from_the_ones_before(base, tmp_path, monkeypatch):
    run_soft(base, TEXTS, tmp_path / "run", train=TRAIN, config=config(ratio=0.2, warmup_epochs=0), progress=False)
    assert not (tmp_path / "run" / "warmup").exists()  # warmup_epochs=0 scores with the base model
    rows = (tmp_path / "run" / "paraphrases.jsonl").read_text()
    (tmp_path / "run" / "paraphrases.jsonl").unlink()
    monkeypatch.setattr(soft, "ScoringEngine", lambda *a, **k: pytest.fail("losses were saved"))
    paraphraser = ReverseParaphraser()
    run_soft(base, TEXTS, tmp_path / "run", train=TRAIN, config=config(paraphraser, ratio=0.2, warmup_epochs=0),
             progress=False)
    assert paraphraser.calls == []  # the paraphrase cache answers
    assert (tmp_path / "run" / "paraphrases.jsonl").read_text() == rows


def failing(**kw) -> SoftConfig:
    """Every paraphrase copies its text, so it fails the gate (2 tries); 2 of the 10 texts are selected."""
    return config(ReverseParaphraser(copy_until=99), GateConfig(max_tries=2), ratio=0.2, warmup_epochs=0, **kw)


def test_failed_paraphrases_train_on_the_originals_by_default(base, tmp_path, caplog):
    result = run_soft(base, TEXTS, tmp_path / "run", train=TRAIN, config=failing(), progress=False)
    rows = read_jsonl(tmp_path / "run" / "paraphrases.jsonl")
    assert [r["status"] for r in rows] == ["failed", "failed"] and all(r["attempts"] == 2 for r in rows)
    assert [r["outcome"] for r in rows] == ["original", "original"]
    s = result.summary
    assert s["on_failure"] == "original" and s["originals_kept"] == 2 and s["dropped"] == 0 and s["failed"] == 2
    assert s["paraphrased"] + s["originals_kept"] + s["dropped"] == s["selected"] == 2
    assert result.train_texts == TEXTS and s["train_size"] == 10  # every member is trained on, and counted
    assert read_json(tmp_path / "run" / "soft.json")["summary"]["originals_kept"] == 2
    assert "2 of 2 selected text(s) failed the quality gate with reverse: 0 paraphrased by the fallback, " \
           "2 kept as originals (unprotected), 0 dropped" in caplog.text


def test_drop_is_an_explicit_choice(base, tmp_path):
    result = run_soft(base, TEXTS, tmp_path / "run", train=TRAIN, config=failing(on_failure="drop"), progress=False)
    rows = read_jsonl(tmp_path / "run" / "paraphrases.jsonl")
    assert [r["outcome"] for r in rows] == ["dropped", "dropped"]
    assert result.summary["dropped"] == 2 and result.summary["originals_kept"] == 0
    assert result.train_texts == [t for i, t in enumerate(TEXTS) if i not in {r["index"] for r in rows}]
    assert result.summary["train_size"] == 8


class FirstWordLast(ReverseParaphraser):
    """A fallback that passes the bag gate: the first word moved to the end (one copied run of n - 1 words)."""

    name = "first-word-last"

    def rewrite_batch(self, texts, prompts, seeds):
        self.calls += [(t, s) for t, s in zip(texts, seeds)]
        return [" ".join(t.split()[1:] + t.split()[:1]) for t in texts]


def test_fallback_paraphraser_replaces_what_the_first_could_not(base, tmp_path):
    fallback = FirstWordLast()
    # A copy shares all 14 words in a row, the fallback's rewrite 13: only the copy fails.
    gate = GateConfig(max_tries=2, max_common_run=13, max_ngram_overlap=1.0)
    cfg = config(ReverseParaphraser(copy_until=99), gate, ratio=0.2, warmup_epochs=0, on_failure="fallback",
                 fallback_paraphraser=fallback)
    result = run_soft(base, TEXTS, tmp_path / "run", train=TRAIN, config=cfg, progress=False)
    rows = read_jsonl(tmp_path / "run" / "paraphrases.jsonl")
    assert [r["outcome"] for r in rows] == ["paraphrased", "paraphrased"]
    assert all(r["paraphraser"] == "first-word-last" and r["first_try"]["paraphraser"] == "reverse"
               and r["first_try"]["status"] == "failed" for r in rows)
    assert all("in a row" in r["first_try"]["reason"] for r in rows) and len(fallback.calls) == 2
    s = result.summary
    assert s["paraphrased"] == 2 and s["fallback_paraphrased"] == 2 and s["failed"] == 2
    assert s["fallback_paraphraser"] == "first-word-last" and s["originals_kept"] == 0
    by_index = {r["index"]: r["paraphrase"] for r in rows}
    assert result.train_texts == [by_index.get(i, t) for i, t in enumerate(TEXTS)]


def test_fallback_that_also_fails_keeps_the_original(base, tmp_path):
    cfg = failing(on_failure="fallback", fallback_paraphraser=ReverseParaphraser(copy_until=99))
    result = run_soft(base, TEXTS, tmp_path / "run", train=TRAIN, config=cfg, progress=False)
    rows = read_jsonl(tmp_path / "run" / "paraphrases.jsonl")
    assert [r["outcome"] for r in rows] == ["original", "original"] and all("first_try" in r for r in rows)
    assert result.summary["originals_kept"] == 2 and result.summary["fallback_paraphrased"] == 0
    assert result.train_texts == TEXTS


def test_soft_config_is_checked_before_anything_loads():
    with pytest.raises(TuneguardError, match="parameter 'on_failure' must be one of original, fallback, drop"):
        SoftConfig(on_failure="skip")
    with pytest.raises(TuneguardError, match="unknown paraphraser 'nope'"):
        SoftConfig(paraphraser="nope")
    with pytest.raises(TuneguardError, match="regime 'soft': paraphraser 'wordnet' has no parameter 'temprature'"):
        SoftConfig.create("regime 'soft'", {"paraphraser": "wordnet", "paraphraser_options": {"temprature": 1}})
    with pytest.raises(TuneguardError, match="gate has no parameter 'max_try'"):
        SoftConfig.create("regime 'soft'", {"gate": {"max_try": 2}})
    with pytest.raises(TuneguardError, match="on_failure='fallback' only"):
        SoftConfig(fallback_paraphraser="wordnet")
    with pytest.raises(TuneguardError, match="fallback_options: give the paraphrasers' seed as seed"):
        SoftConfig(on_failure="fallback", fallback_options={"seed": 3})
    with pytest.raises(TuneguardError, match="threshold mode needs reference texts"):
        SoftConfig(mode="threshold")
    with pytest.raises(TuneguardError, match="needs warmup_epochs >= 1"):
        SoftConfig(start="warm", warmup_epochs=0)
    cfg = SoftConfig.create("regime 'soft'", {"gate": {"max_common_run": 30}, "paraphraser": "local",
                                              "paraphraser_options": {"temperature": "0.9"}, "ratio": 1})
    assert cfg.gate == GateConfig(max_common_run=30) and cfg.paraphraser_options == {"temperature": 0.9}
    assert cfg.ratio == 1.0 and cfg.on_failure == "original" and cfg.fallback is None
    assert SoftConfig(on_failure="fallback").fallback == "wordnet"


def test_other_settings_in_the_same_directory_are_refused(base, tmp_path):
    run_soft(base, TEXTS[:4], tmp_path / "run", train=TRAIN, config=config(warmup_epochs=0), progress=False)
    with pytest.raises(TuneguardError, match=r"other settings \(ratio\)"):
        run_soft(base, TEXTS[:4], tmp_path / "run", train=TRAIN, config=config(ratio=0.25, warmup_epochs=0),
                 progress=False)
    with pytest.raises(TuneguardError, match=r"other settings \(on_failure\)"):
        run_soft(base, TEXTS[:4], tmp_path / "run", train=TRAIN, config=config(warmup_epochs=0, on_failure="drop"),
                 progress=False)


def test_a_directory_made_from_another_base_model_is_refused(base, tmp_path):
    # Same name ("tiny-gpt2"), other weights: the settings hold the base model's fingerprint, not just its name.
    run_soft(base, TEXTS[:4], tmp_path / "run", train=TRAIN, config=config(warmup_epochs=0), progress=False)
    other = tiny_model(seed=1)
    assert other.ref == base.ref
    with pytest.raises(TuneguardError, match=r"other settings \(base_fingerprint\)"):
        run_soft(other, TEXTS[:4], tmp_path / "run", train=TRAIN, config=config(warmup_epochs=0), progress=False)


def test_threshold_mode_uses_reference_losses(base, tmp_path):
    reference = ["completely different held out public text about the weather", "another public sentence"]
    result = run_soft(base, TEXTS, tmp_path / "run", train=TRAIN, progress=False,
                      config=config(mode="threshold", quantile=0.9, reference=reference, warmup_epochs=0))
    scored = read_json(tmp_path / "run" / "losses.json")
    threshold = read_json(tmp_path / "run" / "selection.json")["threshold"]
    assert len(scored["reference"]) == 2
    assert result.summary["selected"] == sum(loss < threshold for loss in scored["losses"])
    with pytest.raises(TuneguardError, match="reference texts"):
        config(mode="threshold")


@pytest.mark.skipif(not wordnet.wordnet_available(), reason="WordNet is not installed "
                    "(apt-get install -y wordnet-base wordnet-sense-index)")
def test_cli_defend_soft_with_wordnet(tmp_path, monkeypatch, capsys):
    from tuneguard.cli import main
    from tuneguard.paraphrase.gate import MiniLMEmbedder

    monkeypatch.setattr(MiniLMEmbedder, "encode", lambda self, texts: BagEmbedder().encode(texts))
    data = tmp_path / "notes.jsonl"
    write_jsonl(data, TEXTS)
    rc = main(["defend", "soft", "--model", "tiny-gpt2", "--data", str(data), "--ratio", "0.2", "--paraphraser",
               "wordnet", "--paraphraser-param", "top_k=2", "--warmup-epochs", "0", "--epochs", "1", "--batch-size",
               "4", "--max-length", "32", "--max-common-run", "20", "--max-ngram-overlap", "1", "--out",
               str(tmp_path / "run")])
    assert rc == 0
    _, counts, summary = capsys.readouterr().out.split("\n", 2)
    summary = json.loads(summary)
    assert summary["selected"] == 2 and summary["paraphraser"] == "wordnet" and summary["on_failure"] == "original"
    assert counts == ("SOFT: 2 of 10 texts selected: 2 paraphrased, 0 kept as originals (unprotected), 0 dropped "
                      "(on_failure=original); trained on 10 texts")
    assert read_json(tmp_path / "run" / "soft.json")["settings"]["paraphraser_options"] == {"top_k": 2}
    rows = read_jsonl(tmp_path / "run" / "paraphrases.jsonl")
    assert all(r["status"] == "ok" and r["paraphrase"] != r["original"] for r in rows)


def test_cli_refuses_a_bad_paraphraser_parameter_before_reading_anything(tmp_path, capsys):
    from tuneguard.cli import main

    rc = main(["defend", "soft", "--model", "tiny-gpt2", "--data", str(tmp_path / "missing.jsonl"), "--paraphraser",
               "wordnet", "--paraphraser-param", "fraction=2", "--out", str(tmp_path / "run")])
    assert rc == 2
    assert "paraphraser 'wordnet': parameter 'fraction' must be in (0, 1], got 2" in capsys.readouterr().err


def test_cli_lists_paraphrasers_and_their_parameters(capsys):
    from tuneguard.cli import main

    with pytest.raises(SystemExit):
        main(["defend", "soft", "--help"])
    out = capsys.readouterr().out
    for line in ("local: ", "openai: ", "wordnet: ", "top_p (float, default 0.9; in (0, 1])",
                 "fraction (float, default 1.0; in (0, 1])", "--on-failure {original,fallback,drop}"):
        assert line in out


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_warm_start_still_records_the_pretrained_model_as_base(base, tmp_path, method):
    train = TrainConfig(**{**TRAIN.to_dict(), "method": method})
    result = run_soft(base, TEXTS[:4], tmp_path / "run", train=train, config=config(start="warm"), progress=False)
    final = tmp_path / "run" / "final"
    # θ_warm trained on every member: an attack must compare the protected model with θ0, never with θ_warm.
    assert read_json(final / "run.json")["base_ref"] == base.ref
    assert result.model.base_ref == base.ref
    reloaded = load_model(final)
    assert reloaded.base_ref == base.ref
    assert reloaded.fingerprint == result.model.fingerprint
    if method == "lora":
        assert (tmp_path / "run" / "warm_merged" / "model.safetensors").is_file()
        assert read_json(final / "run.json")["start_ref"] == str(tmp_path / "run" / "warm_merged")
    # the final model is θ_warm fine-tuned on D': not θ0, not θ_warm
    warm = load_model(tmp_path / "run" / "warmup")
    assert reloaded.fingerprint not in (base.fingerprint, warm.fingerprint)
    again = run_soft(base, TEXTS[:4], tmp_path / "run", train=train, config=config(start="warm"), progress=False)
    assert again.model.fingerprint == result.model.fingerprint and again.model.base_ref == base.ref
