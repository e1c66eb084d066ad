"""Bad input never ends in a traceback or lost work (issue 17): data files, option ranges, outputs, corrupt state."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math

import numpy as np
import pytest

from tuneguard.cli import build_parser, main
from tuneguard.data import clean_texts, load_texts
from tuneguard.errors import TuneguardError
from tuneguard.files import check_output, read_json, read_jsonl
from tuneguard.models import tiny_model
from tuneguard.scoring import ScoringEngine
from tuneguard.scoring import score_cache as engine_module
from tuneguard.train import TrainConfig, finetune

TEXTS = [f"Patient {i} reports mild symptoms after the {w} dose of the study drug." for i, w in
         enumerate(["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"])]


def cli_error(capsys, argv: list[str]) -> str:
    """The error line of a command refused while its arguments are parsed (argparse exits 2)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


# -- data ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix, sep, ending", [(".csv", ",", "\n"), (".csv", ",", "\r\n"), (".tsv", "\t", "\n")])
def test_a_quoted_newline_stays_inside_its_csv_record(tmp_path, suffix, sep, ending):
    path = tmp_path / f"d{suffix}"
    path.write_bytes(f'text{sep}label{ending}"line one{ending}line two"{sep}1{ending}plain{sep}0{ending}'.encode())
    assert load_texts(path) == [f"line one{ending}line two", "plain"]


def test_jsonl_and_txt_records_end_at_newlines_only(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps({"text": "a\u2028b"}, ensure_ascii=False) + "\n"
                     + json.dumps({"text": "c\x85d"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_texts(jsonl) == ["a\u2028b", "c\x85d"]
    txt = tmp_path / "d.txt"
    txt.write_text("one\x0ctwo\nthree\u2028four\n\n", encoding="utf-8")
    assert load_texts(txt) == ["one\x0ctwo", "three\u2028four"]


def test_zero_width_only_texts_count_as_empty():
    report = clean_texts(["\u200b\u200c\ufeff", " \u2060 \u200b ", "a real text", "a\u200bb"])
    assert report.texts == ["a real text", "a\u200bb"] and report.n_empty == 2
    assert "2 empty" in report.summary()
    with pytest.raises(TuneguardError, match="no texts left"):
        clean_texts(["\u200b", "\ufeff"])


def test_one_token_texts_are_left_out_of_training_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        result = finetune(tiny_model("gpt2"), ["hello", "world", "cat", "dog", *TEXTS[:2]], tmp_path / "r",
                          TrainConfig(epochs=1, batch_size=2, group_by_length=False), progress=False)
    assert all(math.isfinite(x) for x in result.record.epoch_loss + result.record.loss_curve)
    assert [r.message for r in caplog.records if "single token" in r.message] == [
        "4 of 6 training examples are a single token (nothing to predict) and are left out of training, e.g. "
        "example 1"]
    with pytest.raises(TuneguardError, match="none of the 2 training examples has a token to predict"):
        finetune(tiny_model("gpt2"), ["hello", "world"], tmp_path / "s", TrainConfig(epochs=1), progress=False)


# -- option ranges --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["finetune", "--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["finetune", "--lora-r", "0"], "argument --lora-r: must be >= 1, got 0"),
    (["finetune", "--lr", "nan"], "argument --lr: must be a finite number, got nan"),
    (["finetune", "--limit", "-1"], "argument --limit: must be >= 1, got -1"),
    (["attack", "--shots", "-1"], "argument --shots: must be >= 1, got -1"),
    (["attack", "--max-length", "0"], "argument --score-max-length/--max-length: must be >= 1, got 0"),
    (["attack", "--batch-size", "0"], "argument --score-batch-size/--batch-size: must be >= 1, got 0"),
    (["audit", "--member-fraction", "1"], "argument --member-fraction: must be in (0, 1), got 1"),
    (["audit-dp", "--epsilon", "1,-4"], "argument --epsilon: must be > 0, got -4"),
    (["backdoor", "population", "--ranks", "16,0"], "argument --ranks: must be >= 1, got 0"),
    (["defend", "soft", "--max-tries", "0"], "argument --max-tries: must be >= 1, got 0"),
    (["defend", "goldfish", "--k", "1"], "argument --k: must be >= 2, got 1"),
    (["defend", "dp", "--epsilon", "0"], "argument --epsilon: must be > 0, got 0"),
])
def test_an_option_out_of_range_is_refused_while_parsing(capsys, tmp_path, argv, message):
    # The data files do not exist: had the arguments been accepted, the error would be that one, not the range.
    missing = str(tmp_path / "missing.jsonl")
    given = {"finetune": ["--model", "tiny-gpt2", "--data", missing],
             "attack": ["--target", "tiny-gpt2", "--members", missing, "--nonmembers", missing],
             "audit": ["--model", "tiny-gpt2", "--data", missing], "audit-dp": ["--model", "tiny-gpt2"],
             "backdoor": ["--base", "tiny-gpt2", "--data", missing], "defend": ["--model", "m", "--data", missing]}
    command = argv[:2] if argv[0] in {"backdoor", "defend"} else argv[:1]
    rest = argv[len(command):]
    error = cli_error(capsys, [*command, *given[argv[0]], "--out", str(tmp_path / "out"), *rest])
    assert error.endswith(message)


def test_every_numeric_option_checks_its_range():
    """No option of any command takes a bare int or float, whose 0 or -1 would reach the work (seeds excepted)."""
    bare = []
    parsers = [build_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += list(action.choices.values())
            elif action.type in (int, float) and action.dest != "seed":
                bare.append(f"{parser.prog} {action.option_strings[0]}")
    assert not bare


def test_an_attack_parameter_is_checked_before_any_model_loads_or_training(tmp_path, monkeypatch, capsys):
    from tuneguard import audit as audit_module
    from tuneguard.attacks import runner

    def never(*args, **kwargs):
        raise AssertionError("a model was loaded or trained before the parameters were checked")

    monkeypatch.setattr(runner, "as_loaded", never)
    monkeypatch.setattr(audit_module, "finetune", never)
    expected = "attack 'min-k': parameter 'k' must be in (0, 1], got 5"
    with pytest.raises(TuneguardError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        audit_module.audit("tiny-gpt2", TEXTS, tmp_path / "audit", params={"min-k": {"k": 5}})
    data = tmp_path / "d.txt"
    data.write_text("\n".join(TEXTS))
    assert main(["attack", "--target", "tiny-gpt2", "--members", str(data), "--nonmembers", str(data),
                 "--param", "min-k.k=5", "--out", str(tmp_path / "mia")]) == 2
    assert capsys.readouterr().err.strip() == f"tuneguard: error: {expected}"


# -- outputs --------------------------------------------------------------------------------------------------------

DIRECTORY_OUTPUTS = [
    ["finetune", "--model", "m", "--data", "d"], ["attack", "--target", "m", "--members", "d", "--nonmembers", "d"],
    ["audit", "--model", "m", "--data", "d"], ["audit-dp", "--scores", "s"], ["demo"],
    ["defend", "soft", "--model", "m", "--data", "d"], ["defend", "goldfish", "--model", "m", "--data", "d"],
    ["defend", "dp", "--model", "m", "--data", "d"], ["backdoor", "poison", "--data", "d", "--k", "1"],
    ["backdoor", "train", "--base", "m", "--data", "d"], ["backdoor", "population", "--base", "m", "--data", "d"],
]
FILE_OUTPUTS = [["backdoor", "calibrate", "a", "--out"], ["scan", "a", "--json"], ["backdoor", "evaluate", "a",
                "--test", "t", "--json"], ["backdoor", "population", "--base", "m", "--data", "d", "--out", "o", "--json"]]


@pytest.mark.parametrize("argv", DIRECTORY_OUTPUTS, ids=lambda a: " ".join(a[:2]))
def test_an_output_directory_naming_a_file_is_refused_before_any_work(capsys, tmp_path, argv):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    error = cli_error(capsys, [*argv, "--out", str(taken)])
    assert error.endswith(f"argument --out: output directory {taken} is an existing file; name a directory or a "
                          "new path")
    assert taken.read_text() == "keep me"


@pytest.mark.parametrize("argv", FILE_OUTPUTS, ids=lambda a: " ".join(a[:2]) + " " + a[-1])
def test_an_output_file_naming_a_directory_is_refused_before_any_work(capsys, tmp_path, argv):
    error = cli_error(capsys, [*argv, str(tmp_path)])
    assert error.endswith(f"argument {argv[-1]}: output file {tmp_path} is an existing directory; name a file")


def test_a_read_only_output_place_is_refused(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        try:  # root writes through the mode bits, and so would the command: nothing to refuse then
            (locked / "probe").touch()
            pytest.skip("this user can write into a read-only directory (root)")
        except PermissionError:
            pass
        with pytest.raises(TuneguardError, match=f"cannot write to {locked} .*Permission denied"):
            check_output(locked / "run")
        with pytest.raises(TuneguardError, match=f"cannot write to {locked}"):
            check_output(locked)  # an existing output directory (a resumed run) must be writable too
        with pytest.raises(TuneguardError, match=f"cannot write to {locked}"):
            check_output(locked / "cal.json", directory=False)
        error = cli_error(capsys, ["finetune", "--model", "m", "--data", "d", "--out", str(locked / "run")])
        assert f"argument --out: cannot write to {locked}" in error
    finally:
        locked.chmod(0o755)
    assert check_output(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    (tmp_path / "f").write_text("x")
    with pytest.raises(TuneguardError, match="is a file, not a directory"):
        check_output(tmp_path / "f" / "run")


def test_a_read_only_mount_is_refused_even_for_root(tmp_path, monkeypatch, capsys):
    """What root meets too: the probe file cannot be made (simulated, as no mount can be made read-only here)."""
    from tuneguard import files

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    error = cli_error(capsys, ["attack", "--target", "m", "--members", "d", "--nonmembers", "d",
                               "--out", str(tmp_path / "mia")])
    assert error.endswith(f"argument --out: cannot write to {tmp_path} (Read-only file system); choose an output "
                          "path you can write to")


# -- the score cache --------------------------------------------------------------------------------------------------

def test_a_full_cache_disk_keeps_scoring_in_memory_with_one_warning(monkeypatch, caplog):
    loaded = tiny_model("gpt2")
    real, writes = engine_module.atomic_write_bytes, []

    def fill_up(path, data):
        if writes:
            raise OSError(errno.ENOSPC, "No space left on device")
        writes.append(path)
        return real(path, data)

    monkeypatch.setattr(engine_module, "atomic_write_bytes", fill_up)
    engine = ScoringEngine(loaded, batch_size=1, progress=False)
    with caplog.at_level(logging.WARNING):
        scores = engine.score(TEXTS[:4])
    assert len(scores) == 4 and all(s.n > 0 for s in scores)
    warnings = [r.message for r in caplog.records if "score cache" in r.message]
    assert len(warnings) == 1 and "No space left on device" in warnings[0] and "memory" in warnings[0]
    monkeypatch.setattr(engine_module, "atomic_write_bytes", real)
    again = ScoringEngine(loaded, batch_size=1, progress=False)
    assert [s.ll for s in again.score(TEXTS[:4])] == [s.ll for s in scores]
    assert again.forward_passes == 3  # the entry written before the disk filled up is kept and reused


def test_a_truncated_score_cache_entry_is_recomputed_with_a_warning(caplog):
    loaded = tiny_model("gpt2")
    first = ScoringEngine(loaded, progress=False)
    before = first.score(TEXTS[:3])
    entries = sorted(first._dir.glob("*.npz"))
    assert len(entries) == 3
    entries[0].write_bytes(entries[0].read_bytes()[:40])
    again = ScoringEngine(loaded, progress=False)
    with caplog.at_level(logging.WARNING):
        after = again.score(TEXTS[:3])
    assert again.forward_passes == 1
    assert all(np.array_equal(a.logprobs, b.logprobs) for a, b in zip(before, after))
    assert any(str(entries[0]) in r.message and "recomputing" in r.message for r in caplog.records)
    assert ScoringEngine(loaded, progress=False)._lookup(entries[0].stem) is not None  # overwritten whole


# -- corrupt state files ------------------------------------------------------------------------------------------------

def test_read_json_names_a_truncated_file_and_the_fix(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"members": ["a", "b"')
    with pytest.raises(TuneguardError, match=f"^{path} is not valid JSON \\(truncated or corrupted: .*\\); fix it$"):
        read_json(path, fix="fix it")
    path.write_text("[1, 2]")
    with pytest.raises(TuneguardError, match="holds a JSON list, not an object"):
        read_json(path, expect=dict)
    lines = tmp_path / "x.jsonl"
    lines.write_text('{"a": 1}\n{"a": 2\n')
    with pytest.raises(TuneguardError, match=f"^{lines}: line 2 is not valid JSON"):
        read_jsonl(lines)


@pytest.mark.parametrize("garbage", ['{"status": "do', "\x00\x01binary", "[]"])
def test_a_corrupt_run_record_is_one_error_naming_it(tmp_path, garbage):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(garbage)
    with pytest.raises(TuneguardError, match=f"^{out / 'run.json'} .*; delete {out} \\(or choose another output "
                                             "directory\\) to train again$"):
        finetune(tiny_model("gpt2"), TEXTS, out, TrainConfig(epochs=1), progress=False)


def test_a_corrupt_checkpoint_state_is_one_error_naming_it(tmp_path):
    ckpt = tmp_path / "run" / "checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text('{"epoch": 1, "st')
    with pytest.raises(TuneguardError, match=f"^{ckpt / 'state.json'} is not valid JSON .*; delete {ckpt} to start "
                                             "the run over$"):
        finetune(tiny_model("gpt2"), TEXTS, tmp_path / "run", TrainConfig(epochs=2), progress=False)


@pytest.mark.parametrize("garbage", ['{"members": ["a"', '{"seed": 0}'])
def test_a_corrupt_audit_split_is_one_error_before_any_training(tmp_path, monkeypatch, garbage):
    from tuneguard import audit as audit_module

    monkeypatch.setattr(audit_module, "finetune", lambda *a, **k: pytest.fail("trained on a corrupt split"))
    out = tmp_path / "audit"
    out.mkdir()
    (out / "split.json").write_text(garbage)
    with pytest.raises(TuneguardError, match=f"^{out / 'split.json'} .*; use another output directory, or delete "
                                             f"{out} to start the audit over$"):
        audit_module.audit("tiny-gpt2", TEXTS, out)


def test_a_calibration_file_with_an_unknown_field_or_cut_short_is_one_error(tmp_path):
    from tuneguard.adapters.detectors.base import Calibration

    cal = Calibration(detector="weights", statistic="s", base_model=None, rank=4, lora_alpha=8.0, use_rslora=False,
                      task=None, direction="higher", low=0.0, high=1.0, clean_scores=[0.0, 1.0])
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({**cal.to_dict(), "threshold_v3": 1}))
    with pytest.raises(TuneguardError, match=f"^calibration file {path} has no parameter 'threshold_v3' .*"
                                             "`tuneguard backdoor calibrate` again$"):
        Calibration.load(path)
    path.write_text(json.dumps(cal.to_dict())[:50])
    with pytest.raises(TuneguardError, match=f"^{path} is not valid JSON .*`tuneguard backdoor calibrate`$"):
        Calibration.load(path)
    cal.save(path)
    assert Calibration.load(path) == cal
