"""`tuneguard defend goldfish` and `tuneguard defend dp`: the defences of `tuneguard run` as commands of their own."""

from __future__ import annotations

import json

import pytest

from helpers import write_jsonl
from tuneguard.cli import main
from tuneguard.files import read_json

TEXTS = [f"patient {i} was seen on day {i % 7} with a cough and a mild fever, then sent home to rest" for i in range(8)]
TRAIN = ["--epochs", "1", "--batch-size", "4", "--max-length", "24"]


def _data(tmp_path):
    return write_jsonl(tmp_path / "notes.jsonl", TEXTS)


def _figures(capsys) -> dict:
    out = capsys.readouterr().out.splitlines()
    return json.loads(next(line for line in out if line.startswith("{")))


def test_defend_goldfish_trains_with_the_goldfish_loss_and_records_it(tmp_path, capsys):
    out = tmp_path / "goldfish"
    assert main(["defend", "goldfish", "--model", "tiny-gpt2", "--data", _data(tmp_path), "--k", "3", "--h", "5",
                 *TRAIN, "--out", str(out)]) == 0
    assert _figures(capsys)["method"] == "lora+goldfish"
    record = read_json(out / "run.json")
    assert record["method"] == "lora+goldfish" and record["epochs_done"] == 1
    assert record["config"]["extra"]["goldfish"] == {"k": 3, "h": 5}  # the record says how the loss was masked


def test_defend_dp_spends_at_most_its_epsilon(tmp_path, capsys):
    out = tmp_path / "dp"
    assert main(["defend", "dp", "--model", "tiny-gpt2", "--data", _data(tmp_path), "--epsilon", "4", *TRAIN,
                 "--out", str(out)]) == 0
    dp = _figures(capsys)["dp"]
    assert dp["target_epsilon"] == 4.0 and dp["noise_multiplier"] > 0
    assert dp["epsilon_spent"] == pytest.approx(4.0, rel=0.05)  # the noise is calibrated to the target, not above it
    assert dp["delta"] == pytest.approx(1 / 80)  # 1/(10·n) for n = 8 texts
    record = read_json(out / "run.json")
    assert record["method"] == "lora+dp-sgd"
    # Not finetune's defaults (lr 1e-4, no accumulation): the DP regime's 10x learning rate and 4x batch.
    assert record["config"]["lr"] == pytest.approx(1e-3) and record["config"]["grad_accum"] == 4


def test_defend_dp_refuses_a_method_without_per_sample_gradients_before_reading_the_data(tmp_path, capsys):
    rc = main(["defend", "dp", "--model", "tiny-gpt2", "--data", str(tmp_path / "missing.jsonl"), "--method", "full",
               "--out", str(tmp_path / "dp")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err == ("tuneguard: error: DP-SGD is offered for LoRA only (Opacus has no per-sample gradients for full "
                   'layers): use --method lora / method = "lora"')


def test_defend_soft_passes_the_recipe_options_to_soft(tmp_path, monkeypatch):
    import tuneguard.defenses.soft as soft

    seen = {}

    def fake_run_soft(model, texts, out, *, train, config):
        seen["config"] = config
        raise SystemExit(0)  # stop before any model loads: only the parsed settings matter here

    monkeypatch.setattr(soft, "run_soft", fake_run_soft)
    with pytest.raises(SystemExit):
        main(["defend", "soft", "--model", "tiny-gpt2", "--data", _data(tmp_path), "--select-by", "gain",
              "--rewrite-span", "second-half", "--drop-unrewritten", "--holdout-scored-as-members", "0.25",
              *TRAIN, "--out", str(tmp_path / "soft")])
    config = seen["config"]
    assert (config.select_by, config.rewrite_span, config.drop_unrewritten, config.holdout_scored_as_members,
            config.schedule) == ("gain", "second-half", True, 0.25, "warmup")
    with pytest.raises(SystemExit):
        main(["defend", "soft", "--model", "tiny-gpt2", "--data", _data(tmp_path), "--preset", "authors", *TRAIN,
              "--out", str(tmp_path / "soft2")])
    config = seen["config"]
    assert (config.schedule, config.rewrite_span, config.drop_unrewritten, config.holdout_scored_as_members) == \
        ("authors", "second-half", True, 0.1)
    with pytest.raises(SystemExit) as refused:  # the declared bound, checked while the line is parsed
        main(["defend", "soft", "--model", "tiny-gpt2", "--data", _data(tmp_path), "--holdout-scored-as-members",
              "1.5", "--out", str(tmp_path / "soft3")])
    assert refused.value.code == 2
