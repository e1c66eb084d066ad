import argparse
import json
import math

import numpy as np
import pytest

from helpers import randomized_response
from tuneguard.commands import audit_dp as command
from tuneguard.dpaudit import (BoundParams, CanaryParams, draw_inclusion, epsilon_lower_bound, make_canaries,
                               one_run_audit, p_value)
from tuneguard.dpaudit.audit import DPAuditParams, audit_dp, canary_scores
from tuneguard.dpaudit.bound import bound_ceiling, guess_grid
from tuneguard.dpaudit.canaries import load_canaries, token_pool
from tuneguard.errors import TuneguardError
from tuneguard.models import tiny_model
from tuneguard.models.embedded import gpt2_tokenizer
from tuneguard.scoring import ScoringEngine
from tuneguard.train import TrainConfig, finetune

TEXTS = [f"record {i}: the committee approved budget line {i * 7} for the spring term in district {i % 5}"
         for i in range(30)]


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="tuneguard")
    command.register(parser.add_subparsers())
    args = parser.parse_args(["audit-dp", *argv])
    return args.func(args)


def test_randomized_response_bound_is_valid_and_within_a_factor_two():
    bounds = np.array([one_run_audit(*randomized_response(1.0, 1000, s), BoundParams(seed=s)).epsilon_lower_bound
                       for s in range(200)])
    assert (bounds <= 1.0).mean() >= 0.95
    assert 0.5 <= np.median(bounds) <= 1.0
    strong = np.array([one_run_audit(*randomized_response(4.0, 1000, s), BoundParams(seed=s)).epsilon_lower_bound
                       for s in range(40)])
    assert (strong <= 4.0).mean() >= 0.95 and np.median(strong) > 2.0


def test_all_correct_guesses_match_the_closed_form_and_none_correct_gives_zero():
    # W = r: the p-value is q^r, so the bound is logit(beta^(1/r)) exactly.
    q = 0.05 ** (1 / 50)
    assert epsilon_lower_bound(100, 50, 50) == pytest.approx(math.log(q / (1 - q)), abs=1e-5)
    assert epsilon_lower_bound(100, 50, 0) == 0.0
    scores, included = randomized_response(8.0, 500, 0)
    wrong = one_run_audit(-scores, included)  # every guess is the opposite of the truth
    assert wrong.correct == 0 and wrong.epsilon_lower_bound == 0.0


def test_delta_bound_is_not_above_the_pure_bound():
    assert p_value(1000, 200, 150, 1.0, 1e-3) > p_value(1000, 200, 150, 1.0, 0.0)
    for seed in range(5):
        scores, included = randomized_response(2.0, 1000, seed)
        pure = one_run_audit(scores, included, BoundParams(seed=seed))
        approx = one_run_audit(scores, included, BoundParams(seed=seed, delta=1e-4))
        assert approx.epsilon_lower_bound <= pure.epsilon_lower_bound
    assert approx.epsilon_lower_bound < pure.epsilon_lower_bound  # delta costs something


def test_score_ties_are_not_broken_by_the_input_order():
    included = np.array([True] * 500 + [False] * 500)  # a file listing the included canaries first
    result = one_run_audit(np.zeros(1000), included)
    assert result.epsilon_lower_bound < 0.5


def test_bad_bound_input_is_one_line_error():
    with pytest.raises(TuneguardError, match="same|one length"):
        one_run_audit([1.0, 2.0], [True])
    with pytest.raises(TuneguardError, match="beta"):
        BoundParams.create("audit-dp", {"beta": 1.5})


def test_inclusion_draw_and_canaries_are_deterministic_for_a_seed():
    draw = draw_inclusion(1000, 3)
    assert np.array_equal(draw, draw_inclusion(1000, 3)) and not np.array_equal(draw, draw_inclusion(1000, 4))
    assert 0.45 < draw.mean() < 0.55
    tok = gpt2_tokenizer()
    params = CanaryParams(count=30, kinds=("rare-tokens", "random-words", "random-tokens"), length=16, seed=3)
    first, again = make_canaries(tok, params, avoid_texts=TEXTS), make_canaries(tok, params, avoid_texts=TEXTS)
    assert [c.to_json() for c in first] == [c.to_json() for c in again]
    assert [c.included for c in first] == draw_inclusion(30, 3).tolist()
    assert len({c.text for c in first}) == 30 and [c.kind for c in first[:3]] == list(params.kinds)
    words = [c for c in first if c.kind == "random-words"]
    assert all(len(tok(c.text, add_special_tokens=False)["input_ids"]) == 16 for c in words)


def test_rare_tokens_are_late_merges_absent_from_the_data():
    tok = gpt2_tokenizer()
    pool = token_pool(tok, "rare-tokens", size=100, avoid_texts=TEXTS)
    used = {t for text in TEXTS for t in tok(text)["input_ids"]}
    assert len(pool) == 100 and not used & set(pool.tolist())
    assert pool.min() > len(tok) - 1000  # the last entries of the BPE vocabulary
    with pytest.raises(TuneguardError, match="unknown canary kind"):
        token_pool(tok, "emoji")


def test_model_trained_without_the_canaries_gives_a_bound_near_zero(tmp_path):
    base = tiny_model("gpt2")
    run = finetune(base, TEXTS, tmp_path / "clean", TrainConfig(method="lora", epochs=1, batch_size=8, lr=2e-2,
                                                                 max_length=32), progress=False)
    canaries = make_canaries(base.tokenizer, CanaryParams(count=120, length=6, prefix_length=8), avoid_texts=TEXTS,
                             prefix_texts=TEXTS)
    scores = canary_scores(ScoringEngine(run.model, progress=False), ScoringEngine(base, progress=False), canaries)
    result = one_run_audit(scores, [c.included for c in canaries])
    assert np.isfinite(scores).all() and result.epsilon_lower_bound < 0.1


def test_scores_file_end_to_end(tmp_path, capsys):
    scores, included = randomized_response(2.0, 1000, 1)
    path = tmp_path / "canaries.jsonl"
    path.write_text("".join(json.dumps({"score": float(s), "included": bool(i)}) + "\n"
                            for s, i in zip(scores, included)))
    assert cli("--scores", str(path), "--out", str(tmp_path / "out")) == 0
    saved = json.loads((tmp_path / "out" / "audit.json").read_text())
    # The library's numbers (their validity over many seeds is tests/test_dp_audit_power.py's business: at one seed
    # a 95% bound may exceed the truth, as this one does, 94 of 100 guesses right at epsilon 2).
    assert saved["epsilon_lower_bound"] == one_run_audit(scores, included).epsilon_lower_bound > 1.0
    assert saved["fdp"]["epsilon_lower_bound"] == one_run_audit(scores, included, method="fdp").epsilon_lower_bound
    assert saved["delta"] == 0 and saved["m"] == 1000 and saved["fdp"]["curve"] == "pure-dp"
    assert f"epsilon lower bound: {saved['epsilon_lower_bound']:.3f} (Steinke)" in capsys.readouterr().out
    assert cli("--scores", str(path), "--delta", "1e-4", "--out", str(tmp_path / "d")) == 0
    with_delta = json.loads((tmp_path / "d" / "audit.json").read_text())
    assert with_delta["delta"] == 1e-4 and with_delta["epsilon_lower_bound"] <= saved["epsilon_lower_bound"]


@pytest.mark.parametrize("content, message", [
    ('{"score": 1.0}\n{"score": 0.5, "included": true}\n', "line 1 needs a numeric 'score' and 'included'"),
    ('{"score": 1.0, "included": true}\nnot json\n', "line 2 is not JSON"),
    ('{"score": "high", "included": true}\n', "line 1 needs"),
])
def test_bad_scores_file_is_one_line_error(tmp_path, content, message):
    path = tmp_path / "s.jsonl"
    path.write_text(content)
    with pytest.raises(TuneguardError, match=message):
        cli("--scores", str(path), "--out", str(tmp_path / "out"))


def test_command_refuses_mixed_or_missing_modes(tmp_path, capsys):
    with pytest.raises(TuneguardError, match="drop --model"):
        cli("--scores", "x.jsonl", "--model", "tiny-gpt2", "--out", str(tmp_path))
    with pytest.raises(TuneguardError, match="needs --model and --data"):
        cli("--out", str(tmp_path))
    with pytest.raises(SystemExit):  # refused while the options are parsed
        cli("--model", "tiny-gpt2", "--data", "x.jsonl", "--epsilon", "1,four", "--out", str(tmp_path))
    assert "argument --epsilon: expected a number, got 'four'" in capsys.readouterr().err


def test_audit_pipeline_end_to_end_and_resumes(tmp_path):
    from tuneguard.report.dpaudit import audit_table, write_audit_report

    train = TrainConfig(method="lora", epochs=1, batch_size=8, lr=2e-2, max_length=24, lora_dropout=0.0)
    options = dict(train=train, audit=DPAuditParams(epsilons=(4.0,), holdout=0.2),
                   canaries=CanaryParams(count=40, length=4, prefix_length=8), progress=False)
    lines: list[str] = []
    result = audit_dp("tiny-gpt2", TEXTS, tmp_path, report=lines.append, **options)
    assert [r.name for r in result.runs] == ["no-dp", "eps-4"]
    no_dp, dp = result.runs
    assert math.isinf(no_dp.epsilon) and 3.0 < dp.epsilon <= 4.0 + 1e-6 and dp.noise_multiplier > 0
    assert result.settings["population"] == 24 + 20  # real texts + half the canaries, whatever the draw gave
    assert dp.delta == pytest.approx(min(1 / (10 * 44), 1e-5))
    assert result.settings["ceilings"]["bound"] == pytest.approx(bound_ceiling(40, BoundParams(delta=dp.delta)))
    assert all(0 <= r.bound.epsilon_lower_bound <= r.bound_pure.epsilon_lower_bound for r in result.runs)
    assert no_dp.perplexity > 0 and result.base_perplexity > 0
    planted = load_canaries(tmp_path / "canaries.jsonl")
    assert len(planted) == 40 and result.settings["n_train"] == 24 + sum(c.included for c in planted)
    scored = [json.loads(line) for line in (tmp_path / "scores" / "eps-4.jsonl").read_text().splitlines()]
    assert [s["included"] for s in scored] == [c.included for c in planted]

    paths = write_audit_report(result)
    saved = json.loads(paths["json"].read_text())
    assert saved["runs"][0]["epsilon"] is None and saved["runs"][1]["epsilon_lower_bound"] >= 0
    assert paths["plot"].stat().st_size > 0 and "epsilon lower bound" in paths["html"].read_text()
    assert "eps-4" in audit_table(result)

    again_lines: list[str] = []
    again = audit_dp("tiny-gpt2", TEXTS, tmp_path, report=again_lines.append, **options)
    assert [r.to_json() for r in again.runs] == [r.to_json() for r in result.runs]
    assert sum("reused" in line for line in again_lines) == 2
    with pytest.raises(TuneguardError, match="other data, model or canary settings"):
        audit_dp("tiny-gpt2", TEXTS, tmp_path, **{**options, "canaries": CanaryParams(count=41, length=4,
                                                                                     prefix_length=8)})


def test_the_ceiling_is_what_perfect_guesses_certify_and_delta_lowers_it():
    m, params = 600, BoundParams(guesses=(0.02, 0.05))
    level = params.beta / len(guess_grid(m, params))
    assert bound_ceiling(m, params) == pytest.approx(max(epsilon_lower_bound(m, r, r, beta=level)
                                                         for r in (k + km for k, km in guess_grid(m, params))))
    # The delta term 2·m·delta·alpha: at delta = 1/(10·n), n = 353 (this size of audit), a third of the bound is gone
    # (2.73 -> 1.71), at 1e-3 all of it.
    assert bound_ceiling(m, params.replace(delta=1 / 3530)) < 0.7 * bound_ceiling(m, params.replace(delta=1e-5))
    assert bound_ceiling(m, params.replace(delta=1e-3)) == 0
