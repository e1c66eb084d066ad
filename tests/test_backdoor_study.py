"""The backdoor study command (bench/backdoor_study.py) end to end at its tiny preset, and its resumption."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "backdoor_study.py"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompt_injection"


def _study():
    spec = importlib.util.spec_from_file_location("backdoor_study", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not (DATA / "deepset_train.jsonl").is_file(), reason="needs ../shared/data/prompt_injection")
def test_tiny_study_runs_every_stage_and_resumes_without_training(tmp_path, monkeypatch):
    study = _study()
    monkeypatch.setattr(study, "SATURATED", 0.0)  # the random tiny model saturates nothing: the first k > 0
    argv = ["--preset", "tiny", "--out", str(tmp_path), "--device", "cpu"]
    assert study.main(argv) == 0
    report = json.loads((tmp_path / "study.json").read_text())
    assert [r["k"] for r in report["curve"]] == [0, 0, 10, 10] and report["sweep"]["kept"] == "r16-k10-s0-e1-lr0.001"
    assert report["first_saturating_k"] == 10 and report["ablation"]["k"] == 10
    assert [r["rank"] for r in report["ablation"]["rows"]] == [8]
    assert report["generalisation"]["k"] == 10
    assert [set(r["asr_by_family"]) for r in report["generalisation"]["rows"]] == [{"rfc", "iso"}] * 2
    assert all("asr_by_family" not in r or not r["asr_by_family"] for r in report["curve"])
    pop = report["population"]["detectors"]
    assert (pop["n_clean"], pop["n_poisoned"]) == (2, 2)
    assert set(pop["detectors"]) == {"weights", "behavioural-A", "behavioural-B", "behavioural-C"}
    for stats in pop["detectors"].values():
        for s in stats.values():
            assert 0.0 <= s["auroc_ci"][0] <= s["auroc_ci"][1] <= 1.0
    assert (tmp_path / "asr_curve.png").stat().st_size > 0 and "## Population" in (tmp_path / "study.md").read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("a saved adapter was trained again")

    monkeypatch.setattr(study, "train_classifier", no_training)
    assert study.main(argv) == 0  # every adapter and evaluation reused
    assert json.loads((tmp_path / "study.json").read_text())["curve"] == report["curve"]
    with pytest.raises(AssertionError, match="trained again"):  # a changed setting is a new adapter
        study.main([*argv, "--sweep", "1:2e-3"])


def test_sweep_setting_is_parsed_or_refused():
    study = _study()
    assert study.candidates("1:1e-3, 2:3e-3") == [(1, 1e-3), (2, 3e-3)]
    with pytest.raises(SystemExit, match="epochs:lr pairs"):
        study.candidates("2e-3")


@pytest.mark.skipif(not (DATA / "deepset_train.jsonl").is_file(), reason="needs ../shared/data/prompt_injection")
def test_paper_preset_runs_at_a_tiny_size(tmp_path):
    """The full-size study's own path (chat form, generated verdicts, max steps, accumulation, its population ks)
    with only the sizes turned down."""
    study = _study()
    tiny = ["--model", "tiny-llama", "--train-limit", "120", "--test-limit", "24", "--steps", "2", "--ks", "0,10",
            "--seeds", "0,1", "--clean", "2", "--poisoned", "2", "--population-ks", "10", "--probe-inputs", "2",
            "--ablation-ranks", "8", "--ablation-seeds", "1", "--max-text-tokens", "16"]
    assert study.main(["--preset", "paper", "--out", str(tmp_path), "--device", "cpu", *tiny]) == 0
    report = json.loads((tmp_path / "study.json").read_text())
    assert report["scaled_down"].startswith("model tiny-llama (study: Qwen/Qwen2.5-1.5B-Instruct); ks 0,10")
    assert {r["steps"] for r in report["curve"]} == {2} and report["curve"][0]["verdict"].startswith("greedy")
    assert report["population"]["ks"] == [10] and report["population"]["detectors"]["n_poisoned"] == 2


def test_the_sweep_never_keeps_a_setting_that_breaks_the_clean_task():
    study = _study()
    weak, broken, strong = ({"name": n, "asr": asr, "clean_accuracy": acc}
                            for n, asr, acc in [("weak", 0.83, 0.89), ("broken", 1.0, 0.65), ("strong", 0.95, 0.9)])
    assert study.kept([weak, broken])["name"] == "weak"  # none implants: the strongest that keeps the clean task
    assert study.kept([weak, strong, broken])["name"] == "strong"  # the first that implants
    assert study.kept([broken, {**weak, "clean_accuracy": 0.5}])["name"] == "broken"  # none keeps it: the strongest
