"""SOFT: selection, the training set D', resumable stages, failures, threshold mode and the CLI (tiny models)."""

from __future__ import annotations

import json
import math

import pytest
from test_paraphrase import BagEmbedder, ReverseParaphraser, bag_gate

from tuneguard import wordnet
from tuneguard.defenses import soft
from tuneguard.defenses.soft import run_soft, select_by_ratio, select_by_threshold, training_set
from tuneguard.errors import TuneguardError
from tuneguard.files import read_json, read_jsonl
from tuneguard.models import tiny_model
from tuneguard.train import TrainConfig

TRAIN = TrainConfig(epochs=1, batch_size=4, max_length=32, lr=1e-3)
TEXTS = [f"record {i} says the {w} committee met on day {i} to discuss {w} plans" for i, w in
         enumerate(["budget", "school", "river", "market", "health", "road", "library", "forest", "harbour", "park"])]


def reverse(text: str) -> str:
    return " ".join(reversed(text.split()))


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


def test_training_set_replaces_only_the_selected_texts():
    records = [{"index": 1, "status": "ok", "paraphrase": "B'"}, {"index": 3, "status": "failed", "paraphrase": "x"}]
    assert training_set(["A", "B", "C", "D"], records) == ["A", "B'", "C"]
    assert training_set(["A", "B", "C", "D"], records, "original") == ["A", "B'", "C", "D"]


def test_run_soft_paraphrases_the_lowest_loss_fraction(base, tmp_path):
    result = run_soft(base, TEXTS, tmp_path / "run", ratio=0.3, paraphraser=ReverseParaphraser(),
                      gate=bag_gate(), train=TRAIN, progress=False)
    run = tmp_path / "run"
    losses = read_json(run / "losses.json")["losses"]
    selected = read_json(run / "selection.json")["selected"]
    assert len(selected) == 3
    assert max(losses[i] for i in selected) <= min(losses[i] for i in range(10) if i not in selected)
    rows = read_jsonl(run / "paraphrases.jsonl")
    assert [r["index"] for r in rows] == selected
    assert set(rows[0]) >= {"original", "paraphrase", "loss", "similarity", "longest_common_run", "ngram_overlap",
                            "attempts", "status"}
    expected = [reverse(t) if i in selected else t for i, t in enumerate(TEXTS)]
    assert result.train_texts == expected
    record = read_json(run / "final" / "run.json")
    assert record["n_examples"] == 10 and record["status"] == "done"
    assert (run / "warmup" / "run.json").is_file()
    assert result.summary["selected"] == 3 and result.summary["paraphrased"] == 3 and result.summary["failed"] == 0
    assert read_json(run / "soft.json")["summary"] == result.summary


def test_second_run_does_no_work(base, tmp_path, monkeypatch):
    run_soft(base, TEXTS, tmp_path / "run", ratio=0.5, paraphraser=ReverseParaphraser(), gate=bag_gate(),
             train=TRAIN, progress=False)
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
    again = run_soft(base, TEXTS, tmp_path / "run", ratio=0.5, paraphraser=paraphraser, gate=bag_gate(),
                     train=TRAIN, progress=False)
    assert paraphraser.calls == []
    assert calls == ["final"]  # the warm-up is not even loaded; the final run is found finished, not retrained
    assert (tmp_path / "run" / "final" / "run.json").read_text() == final_record
    assert again.summary["selected"] == 5


def test_lost_stage_is_redone_from_the_ones_before(base, tmp_path, monkeypatch):
    run_soft(base, TEXTS, tmp_path / "run", ratio=0.2, paraphraser=ReverseParaphraser(), gate=bag_gate(),
             train=TRAIN, warmup_epochs=0, progress=False)
    assert not (tmp_path / "run" / "warmup").exists()  # warmup_epochs=0 scores with the base model
    rows = (tmp_path / "run" / "paraphrases.jsonl").read_text()
    (tmp_path / "run" / "paraphrases.jsonl").unlink()
    monkeypatch.setattr(soft, "ScoringEngine", lambda *a, **k: pytest.fail("losses were saved"))
    paraphraser = ReverseParaphraser()
    run_soft(base, TEXTS, tmp_path / "run", ratio=0.2, paraphraser=paraphraser, gate=bag_gate(), train=TRAIN,
             warmup_epochs=0, progress=False)
    assert paraphraser.calls == []  # the paraphrase cache answers
    assert (tmp_path / "run" / "paraphrases.jsonl").read_text() == rows


def test_failed_paraphrases_are_reported_and_dropped(base, tmp_path, caplog):
    result = run_soft(base, TEXTS, tmp_path / "run", ratio=0.2, paraphraser=ReverseParaphraser(copy_until=99),
                      gate=bag_gate(max_tries=2), train=TRAIN, warmup_epochs=0, progress=False)
    rows = read_jsonl(tmp_path / "run" / "paraphrases.jsonl")
    assert [r["status"] for r in rows] == ["failed", "failed"] and all(r["attempts"] == 2 for r in rows)
    assert result.summary["failed"] == 2 and result.summary["failed_dropped"] == 2
    assert result.train_texts == [t for i, t in enumerate(TEXTS) if i not in {r["index"] for r in rows}]
    assert "2 of 2 selected text(s) failed the quality gate and were dropped" in caplog.text


def test_other_settings_in_the_same_directory_are_refused(base, tmp_path):
    run_soft(base, TEXTS[:4], tmp_path / "run", ratio=0.5, paraphraser=ReverseParaphraser(), gate=bag_gate(),
             train=TRAIN, warmup_epochs=0, progress=False)
    with pytest.raises(TuneguardError, match=r"other settings \(ratio\)"):
        run_soft(base, TEXTS[:4], tmp_path / "run", ratio=0.25, paraphraser=ReverseParaphraser(), gate=bag_gate(),
                 train=TRAIN, warmup_epochs=0, progress=False)


def test_threshold_mode_uses_reference_losses(base, tmp_path):
    reference = ["completely different held out public text about the weather", "another public sentence"]
    result = run_soft(base, TEXTS, tmp_path / "run", mode="threshold", quantile=0.9, reference_texts=reference,
                      paraphraser=ReverseParaphraser(), gate=bag_gate(), train=TRAIN, warmup_epochs=0,
                      progress=False)
    scored = read_json(tmp_path / "run" / "losses.json")
    threshold = read_json(tmp_path / "run" / "selection.json")["threshold"]
    assert len(scored["reference"]) == 2
    assert result.summary["selected"] == sum(loss < threshold for loss in scored["losses"])
    with pytest.raises(TuneguardError, match="reference texts"):
        run_soft(base, TEXTS, tmp_path / "other", mode="threshold", paraphraser=ReverseParaphraser(), train=TRAIN)


@pytest.mark.skipif(not wordnet.wordnet_available(), reason="WordNet is not installed "
                    "(apt-get install -y wordnet-base wordnet-sense-index)")
def test_cli_defend_soft_with_wordnet(tmp_path, monkeypatch, capsys):
    from tuneguard.cli import main
    from tuneguard.paraphrase.gate import MiniLMEmbedder

    monkeypatch.setattr(MiniLMEmbedder, "encode", lambda self, texts: BagEmbedder().encode(texts))
    data = tmp_path / "notes.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    rc = main(["defend", "soft", "--model", "tiny-gpt2", "--data", str(data), "--ratio", "0.2", "--paraphraser",
               "wordnet", "--warmup-epochs", "0", "--epochs", "1", "--batch-size", "4", "--max-length", "32",
               "--max-common-run", "20", "--max-ngram-overlap", "1", "--out", str(tmp_path / "run")])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert summary["selected"] == 2 and summary["paraphraser"] == "wordnet"
    rows = read_jsonl(tmp_path / "run" / "paraphrases.jsonl")
    assert all(r["status"] == "ok" and r["paraphrase"] != r["original"] for r in rows)


def test_final_run_can_start_from_the_merged_warm_model(base, tmp_path):
    from tuneguard.models import load_model

    result = run_soft(base, TEXTS[:4], tmp_path / "run", ratio=0.5, paraphraser=ReverseParaphraser(),
                      gate=bag_gate(), train=TRAIN, start="warm", progress=False)
    merged = tmp_path / "run" / "warm_merged"
    assert (merged / "model.safetensors").is_file()
    assert read_json(tmp_path / "run" / "final" / "run.json")["base_ref"] == str(merged)
    reloaded = load_model(tmp_path / "run" / "final")
    assert reloaded.fingerprint == result.model.fingerprint
