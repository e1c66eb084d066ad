"""`tuneguard attack` / `tuneguard audit` and the audit API end to end on tiny models: files, resumption, errors."""

import copy
import json
import random
import shutil

import numpy as np
import pytest

from helpers import write_jsonl
from tuneguard import cli
from tuneguard.attacks import ATTACKS, run_attacks
from tuneguard.audit import audit
from tuneguard.errors import TuneguardError
from tuneguard.models import LoadedModel, tiny_model
from tuneguard.train import TrainConfig, finetune

WORDS = ("cell", "dose", "trial", "acute", "renal", "serum", "levels", "patients", "rose", "fell", "after", "weeks",
         "therapy", "mild", "severe", "cohort", "risk", "ratio", "blood", "liver")


def corpus(n: int, seed: int) -> list[str]:
    """Texts from one distribution (random words), so a split of them is not confounded."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 20))).capitalize() + "." for _ in range(n)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny GPT-2 over-fitted on 10 members (full fine-tuning, high lr), with the member/non-member files."""
    root = tmp_path_factory.mktemp("mia")
    texts = corpus(20, seed=1)
    members, nonmembers = texts[:10], texts[10:]
    finetune(tiny_model("gpt2"), members, root / "target",
             TrainConfig(method="full", epochs=6, lr=5e-3, batch_size=5, max_length=64), progress=False)
    return root, write_jsonl(root / "members.jsonl", members), write_jsonl(root / "nonmembers.jsonl", nonmembers)


def attack(setup, out, *extra):
    root, members, nonmembers = setup
    return cli.main(["attack", "--target", str(root / "target"), "--members", members, "--nonmembers", nonmembers,
                     "--out", str(out), "--bootstrap", "50", *extra])


def test_attack_command_writes_the_report_and_reruns_without_forward_passes(setup, tmp_path, capsys):
    assert attack(setup, tmp_path / "a", "--attacks", "loss,min-k,ratio", "--param", "min-k.k=0.5",
                  "--batch-size", "4", "--max-length", "48") == 0
    printed = capsys.readouterr().out
    assert "loss" in printed and "report:" in printed
    result = json.loads((tmp_path / "a" / "results.json").read_text())
    assert list(result["attacks"]) == ["loss", "min-k", "ratio"]
    assert result["attacks"]["min-k"]["params"]["k"] == 0.5
    assert result["settings"]["reference"] == "tiny-gpt2"  # the base recorded by the fine-tuning run
    assert result["settings"]["max_length"] == 48
    assert result["cost"]["forward_passes"] == {"target": 20, "reference": 20}
    assert result["attacks"]["loss"]["metrics"]["auc"] > 0.8  # over-fitted members: the signal is there
    assert (tmp_path / "a" / "report.html").is_file() and (tmp_path / "a" / "roc_loglog.png").is_file()

    # Same texts, one more attack: every score comes from the disk cache.
    assert attack(setup, tmp_path / "b", "--attacks", "loss,zlib,min-k,ratio", "--max-length", "48") == 0
    again = json.loads((tmp_path / "b" / "results.json").read_text())
    assert again["cost"]["forward_passes"] == {"target": 0, "reference": 0}
    assert again["attacks"]["loss"]["scores"] == result["attacks"]["loss"]["scores"]


@pytest.fixture(scope="module")
def short_window(tmp_path_factory):
    """A tiny GPT-2 trained on the first 8 tokens of texts of 14 to 22 tokens (a full model and a LoRA adapter)."""
    root = tmp_path_factory.mktemp("window")
    texts = corpus(12, seed=2)
    for method in ("full", "lora"):
        finetune(tiny_model("gpt2"), texts[:6], root / method,
                 TrainConfig(method=method, epochs=1, lr=1e-3, batch_size=3, max_length=8), progress=False)
    return root, write_jsonl(root / "members.jsonl", texts[:6]), write_jsonl(root / "nonmembers.jsonl", texts[6:])


def test_attack_scores_the_training_window_by_default(short_window, tmp_path, capsys):
    # Tokens past the training window were never trained on: scoring them would only dilute the signal.
    root, members, nonmembers = short_window
    args = ["attack", "--target", str(root / "full"), "--members", members, "--nonmembers", nonmembers,
            "--attacks", "loss", "--bootstrap", "0"]
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "scoring window: 8 tokens per text (training run record)" in capsys.readouterr().out
    settings = json.loads((tmp_path / "a" / "results.json").read_text())["settings"]
    assert (settings["max_length"], settings["max_length_source"], settings["training_max_length"]) == \
        (8, "training run record", 8)
    # --score-max-length overrides it, with a warning when it reaches past the training window.
    assert cli.main([*args, "--out", str(tmp_path / "b"), "--score-max-length", "16"]) == 0
    printed = capsys.readouterr().out
    assert "scoring window: 16 tokens per text (--score-max-length)" in printed
    assert "warning: the scoring window (16 tokens) exceeds the target's training window (8 tokens" in printed
    result = json.loads((tmp_path / "b" / "results.json").read_text())
    assert result["settings"]["max_length"] == 16 and result["settings"]["max_length_source"] == "given"


def test_run_attacks_reads_the_window_of_an_adapter_and_falls_back_to_the_context(short_window):
    root, _, _ = short_window
    texts = corpus(12, seed=2)
    adapter = run_attacks(str(root / "lora"), texts[:6], texts[6:], attacks="loss", n_boot=0, progress=False)
    assert (adapter.settings["max_length"], adapter.settings["max_length_source"]) == (8, "training run record")
    base = tiny_model("gpt2")  # no run record: the model's context
    plain = run_attacks(base, texts[:6], texts[6:], attacks="loss", n_boot=0, progress=False)
    assert plain.settings["max_length"] == base.max_length
    assert plain.settings["max_length_source"] == "model context"
    assert plain.settings["training_max_length"] is None
    assert not any("training window" in w for w in plain.warnings)


def test_an_adapter_trained_elsewhere_needs_its_window_and_the_report_lists_what_was_read(short_window, tmp_path,
                                                                                           capsys):
    # A plain PEFT adapter: tuneguard's LoRA run without its run record, as another trainer would leave it.
    root, members, nonmembers = short_window
    plain = tmp_path / "plain"
    shutil.copytree(root / "lora", plain)
    (plain / "run.json").unlink()
    args = ["attack", "--target", str(plain), "--members", members, "--nonmembers", nonmembers, "--attacks", "loss",
            "--bootstrap", "0"]
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a PEFT adapter without a tuneguard run record, so the window it was trained " \
                                   "on is unknown: pass --score-max-length N" in err
    assert not (tmp_path / "a" / "results.json").exists()  # nothing was scored at the model's whole context
    texts = corpus(12, seed=2)
    with pytest.raises(TuneguardError, match="pass --score-max-length N"):
        run_attacks(str(plain), texts[:6], texts[6:], attacks="loss", n_boot=0, progress=False)

    assert cli.main([*args, "--out", str(tmp_path / "b"), "--score-max-length", "8"]) == 0
    printed = capsys.readouterr().out
    assert "Read, not recorded (the target has no tuneguard run record; check each):\n" \
           "  base: tiny-gpt2, from the adapter's adapter_config.json (base_model_name_or_path)\n" \
           "  window: 8 tokens per text, given (the training window is not recorded)\n" \
           "  dtype: float32, the precision it was loaded in (the training precision is not recorded)" in printed
    settings = json.loads((tmp_path / "b" / "results.json").read_text())["settings"]
    assert list(settings["read_not_recorded"]) == ["base", "window", "dtype"]
    assert "Read, not recorded" in (tmp_path / "b" / "report.html").read_text()
    # A target with its run record reads nothing from elsewhere.
    assert cli.main([*args, "--target", str(root / "lora"), "--out", str(tmp_path / "c")]) == 0
    assert "Read, not recorded" not in capsys.readouterr().out
    assert "read_not_recorded" not in json.loads((tmp_path / "c" / "results.json").read_text())["settings"]


@pytest.mark.parametrize("extra, message", [
    (["--attacks", "loss,nope"], "unknown attack 'nope'"),
    (["--param", "min-k=0.1"], "expected ATTACK.KEY=VALUE"),
    (["--attacks", "loss", "--param", "loss.k=0.1"], "has no parameter 'k'"),
    (["--attacks", "loss", "--param", "min-k.k=0.1"], "not being run"),
    (["--attacks", "min-k", "--param", "min-k.k=5"], "attack 'min-k': parameter 'k' must be in (0, 1], got 5"),
    (["--attacks", "ratio", "--param", "ratio.form=log"], "parameter 'form' must be one of difference, ratio"),
])
def test_attack_command_bad_input_is_one_line_and_exit_2(setup, tmp_path, capsys, extra, message):
    assert attack(setup, tmp_path, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_attack_command_refuses_a_corpus_holding_an_evaluated_text(setup, tmp_path, capsys):
    _, members, _ = setup
    texts = corpus(5, seed=7)
    assert attack(setup, tmp_path / "ok", "--attacks", "dc-pdd", "--corpus",
                  write_jsonl(tmp_path / "freq.jsonl", texts)) == 0
    member = json.loads(open(members).readline())["text"]
    leaky = write_jsonl(tmp_path / "leaky.jsonl", texts + [member])
    assert attack(setup, tmp_path / "no", "--attacks", "dc-pdd", "--corpus", leaky) == 2
    assert "the dc-pdd corpus (leaky.jsonl): 1 of its 6 texts are evaluated texts (1 member)" in \
        capsys.readouterr().err


def test_attack_command_refuses_a_class_of_one(setup, tmp_path, capsys):
    root, members, _ = setup
    one = write_jsonl(tmp_path / "one.jsonl", corpus(1, seed=9))
    assert cli.main(["attack", "--target", str(root / "target"), "--members", members, "--nonmembers", one,
                     "--out", str(tmp_path / "o"), "--attacks", "loss"]) == 2
    assert "at least 2 members and 2 non-members" in capsys.readouterr().err


@pytest.mark.parametrize("context", [36, 24])
def test_texts_an_attack_cannot_score_are_listed_with_the_reason(context):
    texts = corpus(20, seed=1)  # 14 to 22 tokens each; a ReCall shot is 15 to 23 tokens
    target = tiny_model("gpt2", n_positions=context)
    result = run_attacks(target, texts[:10], texts[10:], attacks="loss,recall", n_shots=2, n_boot=0, progress=False)
    assert not [s for s in result.skipped if "loss" in s["reason"]]
    if context == 24:  # no shot fits beside any text: recall is left out with a warning, loss is still reported
        assert list(result.attacks) == ["loss"]
        assert any(w.startswith("recall is left out of the report") for w in result.warnings)
        return
    # Beside the longer texts not even one shot fits: recall scores NaN there, and the report says which and why.
    unscored = [s for s in result.skipped if s["reason"].startswith("left out of recall")]
    scores = np.array(result.attacks["recall"].scores, dtype=float)
    assert 0 < len(unscored) == int(np.isnan(scores).sum()) < len(scores) - 4
    assert result.attacks["recall"].metrics["n_dropped"] == len(unscored)
    # A skipped text is named by its label and its index in the members / non-members given.
    assert all((texts[:10] if s["label"] else texts[10:])[s["index"]].startswith(s["text"]) for s in unscored)


def test_a_reference_with_another_tokenizer_is_allowed_and_reported(setup):
    root, _, _ = setup
    other = tiny_model("gpt2", seed=3)
    tokenizer = copy.deepcopy(other.tokenizer)  # the embedded tokenizer may be shared: never mutate it
    tokenizer.add_tokens(["<never-used>"])
    reference = LoadedModel(other.model, tokenizer, "other-tokenizer")
    texts = corpus(20, seed=1)
    result = run_attacks(str(root / "target"), texts[:10], texts[10:], attacks="ratio", reference=reference,
                         n_boot=0, progress=False)
    assert any("another tokenizer" in w for w in result.warnings)
    assert np.isfinite(result.attacks["ratio"].scores).all()


def test_audit_api_scores_at_the_training_length_and_resumes(tmp_path):
    texts = corpus(16, seed=4)
    cfg = TrainConfig(method="full", epochs=2, lr=5e-3, batch_size=4, max_length=12)
    result, paths = audit("tiny-gpt2", texts, tmp_path, train=cfg, attacks="loss,ratio", n_boot=0, progress=False)
    assert result.settings["max_length"] == 12  # tokens past the training length were never trained on
    assert result.settings["reference"] == "tiny-gpt2"
    assert any("truncated" in w for w in result.warnings)
    split = json.loads((tmp_path / "split.json").read_text())
    assert len(split["members"]) == len(split["nonmembers"]) == 8
    assert {p.name for p in paths.values()} == {"results.json", "exposure.jsonl", "roc_loglog.png", "roc_linear.png",
                                                "report.html"}
    run_record = (tmp_path / "target" / "run.json").read_text()

    again, _ = audit("tiny-gpt2", texts, tmp_path, train=cfg, attacks="loss,ratio", n_boot=0, progress=False)
    assert (tmp_path / "target" / "run.json").read_text() == run_record  # not retrained
    assert again.cost["forward_passes"] == {"target": 0, "reference": 0}
    np.testing.assert_array_equal(again.attacks["loss"].scores, result.attacks["loss"].scores)


def test_audit_command(tmp_path, capsys):
    texts = corpus(12, seed=5)
    data = write_jsonl(tmp_path / "data.jsonl", ["  ", *texts[:3], texts[0], *texts[3:]])  # dropped by cleaning
    assert cli.main(["audit", "--model", "tiny-gpt2", "--data", data, "--method", "lora", "--epochs", "1",
                     "--max-length", "16", "--attacks", "loss,zlib", "--bootstrap", "0",
                     "--out", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("Verdict: ") and "zlib" in printed
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result["settings"]["fine_tuning"]["method"] == "lora" and result["settings"]["max_length"] == 16
    # The records at risk are the members, named by their record number in the data file.
    rows = [json.loads(line) for line in (tmp_path / "run" / "exposure.jsonl").read_text().splitlines()]
    members = json.loads((tmp_path / "run" / "split.json").read_text())["members"]
    records = [json.loads(line)["text"] for line in open(data)]
    assert sorted(records[r["index"]] for r in rows) == sorted(members)
    assert all(records[r["index"]].startswith(r["excerpt"].removesuffix("…")) for r in rows)
    assert f"--data {data}" in (tmp_path / "run" / "report.html").read_text()  # the defend / audit command line


def test_attack_prints_the_verdict_first_and_writes_the_records_at_risk(setup, tmp_path, capsys):
    root, members, nonmembers = setup
    texts = [json.loads(line)["text"] for line in open(members)]
    # An empty record and a repeat: cleaning drops them, so record numbers and positions differ.
    shifted = write_jsonl(tmp_path / "members.jsonl", ["", texts[0], *texts])
    assert cli.main(["attack", "--target", str(root / "target"), "--members", shifted, "--nonmembers", nonmembers,
                     "--attacks", "loss,zlib,ratio", "--bootstrap", "50", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("Verdict: ")
    assert printed.index("Verdict: ") < printed.index("scoring window:") < printed.index("What to do next:")
    assert "records at risk: " in printed and texts[0][:40] not in printed  # no user text on the terminal
    rows = [json.loads(line) for line in (tmp_path / "out" / "exposure.jsonl").read_text().splitlines()]
    assert len(rows) == len(texts) and [r["rank"] for r in rows] == list(range(1, len(texts) + 1))
    # texts[0] is record 1 (its first occurrence; record 2 repeats it), texts[k] record k + 2.
    assert sorted(r["index"] for r in rows) == [1, *range(3, len(texts) + 2)]
    records = ["", texts[0], *texts]
    assert all(records[r["index"]].startswith(r["excerpt"].removesuffix("…")) for r in rows)
    assert all(set(r["ranks"]) == {"loss", "zlib", "ratio"} for r in rows)
    means = [r["aggregate"] for r in rows]
    assert means == sorted(means)  # most exposed first
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert result["verdict"]["level"] in ("some", "strong")  # the over-fitted target leaks
    assert result["settings"]["files"] == {"members": shifted, "nonmembers": nonmembers}


def test_attack_help_lists_every_attack_and_its_declared_parameters(capsys):
    with pytest.raises(SystemExit):
        cli.main(["attack", "--help"])
    text = capsys.readouterr().out
    assert "attacks and their parameters" in text
    for name in ATTACKS:
        assert f"\n{name}: {ATTACKS.get(name).summary}" in text
    assert "  k (float, default 0.2; in (0, 1]): fraction of the scored tokens averaged" in text
    assert "  model (str, default 'logistic'; one of logistic, tree)" in text
