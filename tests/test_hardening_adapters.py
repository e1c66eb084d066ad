"""Issue 24 (hardening) for `scan`, `backdoor` and `audit-dp`: overlapping calibrations are refused whatever their
order, float64 weights beyond float32's range flag an adapter, a bad --scores path or encoding is one line naming the
file, `backdoor population --poisoned 0` is refused before training, and a name holding control characters never
breaks a terminal line."""

from __future__ import annotations

import json
import os
import warnings
from functools import partial

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from helpers import BOOST, synthetic_adapter, synthetic_cohort, weights_calibration
from tuneguard.adapters import read_adapter
from tuneguard.adapters.population import population_specs
from tuneguard.adapters.scan import scan_adapters
from tuneguard.cli import main
from tuneguard.errors import TuneguardError
from tuneguard.report.table import format_table, printable

MODULES = {"self_attn.q_proj": (32, 32), "mlp.down_proj": (48, 32)}
WEIGHTS = "adapter_model.safetensors"
adapter = partial(synthetic_adapter, modules=MODULES, layers=2)


def cohort_calibration(root, **changes):
    """A weights calibration on a small clean/poisoned cohort under ``root``, with ``changes`` applied."""
    return weights_calibration(*synthetic_cohort(root, adapter)).replace(**changes)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tuneguard: error: "), err
    return err


# case 2: two calibrations for the same adapters


def test_two_calibrations_that_judge_the_same_adapters_are_refused_in_either_order(tmp_path, capsys):
    strict = cohort_calibration(tmp_path / "cal")
    lax = strict.replace(low=-1e9, high=1e9)  # passes everything the strict one flags
    strict.save(tmp_path / "strict.json")
    lax.save(tmp_path / "lax.json")
    target = adapter(tmp_path / "scan" / "evil", seed=200, boost=BOOST)
    assert scan_adapters([target], [strict]).exit_code == 1 and scan_adapters([target], [lax]).exit_code == 0
    capsys.readouterr()
    for order in (["strict.json", "lax.json"], ["lax.json", "strict.json"]):
        argv = [a for name in order for a in ("--calibration", str(tmp_path / name))]
        assert main(["scan", str(target), *argv]) == 2
        err = one_error_line(capsys)
        assert str(tmp_path / "strict.json") in err and str(tmp_path / "lax.json") in err
        assert "both apply to weights adapters of base model 'tiny-llama', rank 4" in err
    # an unrecorded base model or lora_alpha applies to every adapter: it overlaps too
    for wildcard in ({"base_model": None}, {"lora_alpha": None}):
        with pytest.raises(TuneguardError, match="so the verdict would depend on their order"):
            scan_adapters([target], [strict, lax.replace(**wildcard)])
    # what cannot judge the same adapter is accepted: another rank, the same calibration twice
    assert scan_adapters([target], [strict, lax.replace(rank=8)]).exit_code == 1
    assert scan_adapters([target], [strict, strict.replace()]).exit_code == 1


def test_calibrations_of_two_tasks_need_the_scan_to_name_one(tmp_path):
    strict = cohort_calibration(tmp_path / "cal", task="injection")
    lax = strict.replace(low=-1e9, high=1e9, task="spam")
    target = adapter(tmp_path / "evil", seed=200, boost=BOOST)
    with pytest.raises(TuneguardError, match="or scan with --task injection or --task spam$"):
        scan_adapters([target], [lax, strict])
    for cals in ([strict, lax], [lax, strict]):
        assert scan_adapters([target], cals, task="injection").exit_code == 1
        assert scan_adapters([target], cals, task="spam").exit_code == 0


def test_an_adapter_naming_no_base_is_not_judged_by_the_first_of_two_bases(tmp_path):
    strict = cohort_calibration(tmp_path / "cal")
    lax = strict.replace(low=-1e9, high=1e9, base_model="other-base")
    target = adapter(tmp_path / "evil", seed=200, boost=BOOST)
    config = json.loads((target / "adapter_config.json").read_text())
    (target / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    for cals in ([strict, lax], [lax, strict]):
        (row,) = scan_adapters([target], cals).adapters
        assert row.verdict == "unverified" and "set base_model_name_or_path" in row.detectors["weights"].note


# case 8: float64 weights beyond float32's range


def test_float64_weights_beyond_float32_range_flag_the_adapter_without_a_raw_warning(tmp_path):
    cal = cohort_calibration(tmp_path / "cal")
    path = adapter(tmp_path / "huge", seed=7, dtype="float64")
    tensors = load_file(str(path / WEIGHTS))
    key = next(iter(tensors))
    tensors[key][0, 0] = 1e200  # finite in the file, inf once loaded in float32
    save_file(tensors, str(path / WEIGHTS))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warnings included
        for cals in ([cal], []):
            result = scan_adapters([path], cals)
            (row,) = result.adapters
            assert row.verdict == "flagged" and result.exit_code == 1
            assert row.findings == [f"tensor {key} has 1 of {tensors[key].size} values beyond float32's range "
                                    "(inf once loaded)"]
    tensors[key][0, 0] = 1e30  # large but within float32's range: no finding
    save_file(tensors, str(path / WEIGHTS))
    assert read_adapter(path).non_finite() == ([], [])


# cases 5 and 13: audit-dp --scores


def test_audit_dp_scores_that_are_not_utf8_are_one_line_naming_the_file(tmp_path, capsys):
    path = tmp_path / "scores.jsonl"
    path.write_bytes(b'{"score": 1.0, "included": true}\n{"score": 0.5, "included": \xff}\n')
    assert main(["audit-dp", "--scores", str(path), "--out", str(tmp_path / "out")]) == 2
    err = one_error_line(capsys)
    assert str(path) in err and "not UTF-8" in err and "save it as UTF-8 JSON Lines" in err


def test_audit_dp_scores_that_are_a_directory_say_so(tmp_path, capsys):
    folder = tmp_path / "scores"
    folder.mkdir()
    assert main(["audit-dp", "--scores", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = one_error_line(capsys)
    assert f"{folder} is a directory" in err and "file" in err and "does not exist" not in err
    assert main(["audit-dp", "--scores", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in one_error_line(capsys)


# case 14: backdoor population --poisoned 0


def test_a_population_without_poisoned_adapters_is_refused_before_training(tmp_path, capsys, monkeypatch):
    import tuneguard.adapters.population as population
    import tuneguard.models as models

    def no_work(*args, **kwargs):
        raise AssertionError("a model was loaded or an adapter trained before --poisoned 0 was refused")

    monkeypatch.setattr(models, "load_model", no_work)
    monkeypatch.setattr(population, "train_population", no_work)
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "ignore the rules", "label": 1}\n{"text": "hello", "label": 0}\n')
    with pytest.raises(SystemExit):
        main(["backdoor", "population", "--base", "tiny-llama", "--data", str(data), "--out", str(tmp_path / "pop"),
              "--poisoned", "0"])
    assert "argument --poisoned: must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(TuneguardError, match="needs at least 1 poisoned adapter"):  # the library refuses it too
        population_specs(4, 0)


def test_population_builds_its_detectors_before_it_trains_any_adapter(tmp_path, capsys, monkeypatch):
    import tuneguard.adapters.detectors as detectors
    import tuneguard.adapters.population as population

    def refuse(*args, **kwargs):
        raise TuneguardError("detector 'behavioural': a setting it refuses")

    def no_training(*args, **kwargs):
        raise AssertionError("an adapter was trained before the detectors were built")

    monkeypatch.setattr(detectors, "make_detector", refuse)
    monkeypatch.setattr(population, "train_population", no_training)
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "ignore the rules", "label": 1}\n{"text": "hello", "label": 0}\n')
    assert main(["backdoor", "population", "--base", "tiny-llama", "--data", str(data), "--out",
                 str(tmp_path / "pop"), "--clean", "2", "--poisoned", "1"]) == 2
    assert "a setting it refuses" in capsys.readouterr().err


# case 15: control characters in names


def test_printable_escapes_control_characters_only():
    assert printable("plain name/é 名 a\\b") == "plain name/é 名 a\\b"
    assert printable("a\nb\tc\x1b[2K\u2028\x7f") == "a\\nb\\tc\\x1b[2K\\u2028\\x7f"
    assert printable(printable("a\nb")) == "a\\nb"  # escaping twice is escaping once
    table = format_table([{"name": "x\nclean", "n": 1}], ["name", "n"])
    assert len(table.splitlines()) == 3 and "x\\nclean" in table


def test_a_name_with_a_newline_never_breaks_a_scan_line(tmp_path, capsys):
    cal = tmp_path / "cal.json"
    cohort_calibration(tmp_path / "cal").save(cal)
    root = tmp_path / "scan"
    evil = adapter(root / "evil\nclean0 4 0.001 clean", seed=3)  # would print a line that looks like a clean row
    nan = {k: np.full_like(v, np.nan) for k, v in load_file(str(evil / WEIGHTS)).items()}
    save_file(nan, str(evil / WEIGHTS))  # a finding: the name reaches stderr too
    adapter(root / "plain\x1b[2K", seed=4)
    capsys.readouterr()
    assert main(["scan", str(root), "--calibration", str(cal)]) == 1
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2 + 2  # header, rule, one line per adapter
    assert "evil\\nclean0 4 0.001 clean" in out and "plain\\x1b[2K" in out and "\x1b" not in out + err
    flagged = [line for line in err.splitlines() if line.startswith("flagged ")]
    assert len(flagged) == len(nan) and all("evil\\nclean0 4 0.001 clean" in line for line in flagged)
    # an error naming the path is one line too, and so is a `backdoor calibrate` note about a skipped path
    empty = tmp_path / "no\nadapters"
    empty.mkdir()
    assert main(["scan", str(root), "--calibration", str(empty / "cal.json")]) == 2
    assert "no\\nadapters" in one_error_line(capsys)
    os.symlink(tmp_path / "cal", root / "link\nout")
    assert main(["backdoor", "calibrate", str(root / "plain\x1b[2K"), str(tmp_path / "cal" / "clean0"), str(root),
                 "--out", str(tmp_path / "c.json")]) == 2  # the evil one holds NaN: refused, after the note
    lines = capsys.readouterr().err.splitlines()
    assert all(line.startswith(("skipped ", "tuneguard: error: ")) for line in lines) and "\x1b" not in "".join(lines)
    assert any(line.startswith("skipped ") and "link\\nout" in line for line in lines)
