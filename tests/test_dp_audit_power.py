"""Issue 28: a DP audit with power: the f-DP bound (hand-computed cases, validity on mechanisms of known epsilon),
guesses fixed in advance, secret canaries that share no token, the mechanism fixed before the draw, and a planted
bug the audit must catch."""

import argparse
import json
import math

import numpy as np
import pytest
from scipy.special import logit, ndtr, ndtri

from helpers import randomized_response
from tuneguard.defenses.dp_sgd import AuditPlan, DPConfig, dp_finetune, parse_bug
from tuneguard.dpaudit import BoundParams, CanaryParams, epsilon_lower_bound, make_canaries, one_run_audit
from tuneguard.dpaudit.audit import DPAuditParams, audit_dp, trained_log_likelihood
from tuneguard.dpaudit.bound import (bound_ceiling, fdp_epsilon_lower_bound, fdp_total, gaussian_mu, guess_grid,
                                     tradeoff_inverse)
from tuneguard.errors import TuneguardError
from tuneguard.models import tiny_model
from tuneguard.models.embedded import gpt2_tokenizer
from tuneguard.scoring import ScoringEngine
from tuneguard.train import TrainConfig
from tuneguard.train.batching import IGNORE, encode_examples

BETA = 0.05
TEXTS = [f"patient {i} was seen in clinic {i % 4} with a cough that began {i + 2} days before the visit"
         for i in range(40)]


def gaussian_mechanism(epsilon: float, delta: float, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each canary's score is mu·bit + N(0, 1): exactly mu-GDP per canary, mu the one that is (epsilon, delta)-DP."""
    rng = np.random.default_rng(seed)
    included = rng.random(m) < 0.5
    return gaussian_mu(epsilon, delta) * included + rng.standard_normal(m), included


# -- the f-DP bound ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("epsilon", [0.5, 2.0])
def test_fdp_total_with_every_guess_right_is_beta_over_the_binomial_tail(epsilon):
    # Hand-run of the recursion for k = v = 3 under epsilon-DP (g⁻¹(y) = y·e^-eps while small): r = 3β/m, h = 0;
    # i = 2: h = 3β e^-ε/m, r = 3β(1 + 2e^-ε)/m; i = 1: h = 3β(1 + 2e^-ε)e^-ε/m, r = 3β(1 + e^-ε)²/m;
    # i = 0: h = 3β(1 + e^-ε)² e^-ε/m; (r + h)·m/3 = β(1 + e^-ε)³ = β / q³, q = e^ε / (1 + e^ε).
    assert fdp_total(10, 3, 3, BETA, tradeoff_inverse(epsilon, 0.0)) == pytest.approx(BETA * (1 + math.exp(-epsilon))
                                                                                      ** 3, rel=1e-12)


def test_fdp_total_hand_computed_with_a_wrong_guess_and_with_delta():
    # k = 3, v = 2, m = 10, ε = 0.1, δ = 0: r = 2β/m, h = β/m; i = 1: h = max(β, 2β e^-ε)/m = 2β e^-ε/m,
    # r = 2β/m + (2β e^-ε - β)/(2m); i = 0: h = max(h, r e^-ε). Total (r + h)·m/3.
    e = math.exp(-0.1)
    r = 2 * BETA + (2 * BETA * e - BETA) / 2
    h = max(2 * BETA * e, r * e)
    assert fdp_total(10, 3, 2, BETA, tradeoff_inverse(0.1, 0.0)) == pytest.approx((r + h) / 3, rel=1e-12)
    # At ε = 1 the constraint holds with no mass below v: the total is β itself (nothing rejected).
    assert fdp_total(10, 3, 2, BETA, tradeoff_inverse(1.0, 0.0)) == pytest.approx(BETA)
    # k = v = 1 under the (ε, δ) curve: r = β/m, h = g⁻¹(β/m) = max(0, (β/m - δ)e^-ε, 1 - δ - e^ε(1 - β/m)).
    m, eps, delta = 4, 0.3, 0.002
    inverse = max(0.0, (BETA / m - delta) * math.exp(-eps), 1 - delta - math.exp(eps) * (1 - BETA / m))
    assert fdp_total(m, 1, 1, BETA, tradeoff_inverse(eps, delta, "dp")) == pytest.approx(BETA + m * inverse)


def test_fdp_total_hand_computed_on_the_gaussian_curve():
    # k = v = 2, m = 5: r = 2β/m, h = 0; i = 1: h = a = Φ(Φ⁻¹(2β/m) - μ), r = 2β/m + a; i = 0: h = Φ(Φ⁻¹(r) - μ).
    m, eps, delta = 5, 3.0, 1e-5
    mu = gaussian_mu(eps, delta)
    a = ndtr(ndtri(2 * BETA / m) - mu)
    r = 2 * BETA / m + a
    expected = (r + ndtr(ndtri(r) - mu)) * m / 2
    assert fdp_total(m, 2, 2, BETA, tradeoff_inverse(eps, delta)) == pytest.approx(expected, rel=1e-9)
    # mu is the Gaussian mechanism's that is exactly (ε, δ)-DP (Dong, Roth & Su, Cor. 2.13).
    assert ndtr(-eps / mu + mu / 2) - math.exp(eps) * ndtr(-eps / mu - mu / 2) == pytest.approx(delta, rel=1e-6)


@pytest.mark.parametrize("k", [10, 50, 100])
def test_every_guess_right_under_pure_dp_gives_steinkes_closed_form(k):
    # Both reject exactly where q^k < β: the bound is logit(β^(1/k)).
    closed = float(logit(BETA ** (1 / k)))
    assert fdp_epsilon_lower_bound(1000, k, k) == pytest.approx(closed, abs=1e-5)
    assert epsilon_lower_bound(1000, k, k) == pytest.approx(closed, abs=1e-5)
    assert fdp_epsilon_lower_bound(1000, k, 0) == 0.0


def test_fdp_bound_on_randomized_response_is_never_above_its_epsilon_and_close_for_large_m():
    for epsilon in (1.0, 4.0):
        for params in (BoundParams(), BoundParams(delta=1e-5, tradeoff="dp")):  # pure-DP; any (ε, δ)-DP mechanism
            bounds = np.array([one_run_audit(*randomized_response(epsilon, 1000, s), params.replace(seed=s),
                                             method="fdp").epsilon_lower_bound for s in range(100)])
            assert (bounds <= epsilon).mean() >= 1 - BETA
        # m = 20,000: k+ = k- = 1,000 guesses, every one right with probability q.
        large = one_run_audit(*randomized_response(epsilon, 20_000, 0), method="fdp").epsilon_lower_bound
        assert 0.9 * epsilon <= large <= epsilon


def test_gaussian_fdp_bound_is_valid_on_the_gaussian_mechanism_and_beats_steinke():
    params = BoundParams(delta=1e-5)
    for epsilon in (1.0, 4.0):
        fdp, steinke = (np.array([one_run_audit(*gaussian_mechanism(epsilon, 1e-5, 1000, s), params.replace(seed=s),
                                                method=method).epsilon_lower_bound for s in range(60)])
                        for method in ("fdp", "steinke"))
        assert (fdp <= epsilon).mean() >= 1 - BETA and (steinke <= epsilon).mean() >= 1 - BETA
        assert fdp.mean() > 1.3 * steinke.mean()  # measured 0.34 vs 0.26 at ε 1, 2.38 vs 1.57 at ε 4
        large = one_run_audit(*gaussian_mechanism(epsilon, 1e-5, 20_000, 0), params, method="fdp")
        assert 0.6 * epsilon <= large.epsilon_lower_bound <= epsilon  # measured 0.72 and 2.66


def test_ceilings_per_bound():
    # m = 1000, k+ = k- = 50: Steinke 3.47 (δ 1e-5), the Gaussian f-DP 5.55; at δ = 0 both are logit(β^(1/100)).
    m, params = 1000, BoundParams(delta=1e-5)
    assert bound_ceiling(m, params) == pytest.approx(3.465, abs=1e-3)
    assert bound_ceiling(m, params, method="fdp") == pytest.approx(5.549, abs=1e-3)
    pure = params.replace(delta=0.0)
    assert bound_ceiling(m, pure) == pytest.approx(bound_ceiling(m, pure, method="fdp"), abs=1e-5)
    assert bound_ceiling(m, pure) == pytest.approx(float(logit(BETA ** 0.01)), abs=1e-5)


def test_guesses_are_fixed_by_m_before_any_score_and_bonferroni_split():
    assert guess_grid(1000, BoundParams()) == [(50, 50)]
    assert guess_grid(1000, BoundParams(guesses=(0.02, 0.1), two_sided=False)) == [(20, 0), (100, 0)]
    scores, included = randomized_response(3.0, 1000, 0)
    one, two = one_run_audit(scores, included), one_run_audit(scores, included, BoundParams(guesses=(0.05, 0.1)))
    assert (one.grid_size, two.grid_size) == (1, 2)
    row = two.grid[0]  # k = 50 tested at β/2 gives less than at β
    assert row["epsilon"] == pytest.approx(epsilon_lower_bound(1000, 100, row["correct"], beta=BETA / 2), abs=1e-6)
    assert row["epsilon"] < one.epsilon_lower_bound
    # Fewer rankable canaries than planned guesses: the missing ones count as wrong (the test keeps k = 100).
    scores[:950] = np.nan
    short = one_run_audit(scores, included)
    assert short.guesses == 100 and short.correct <= 50


# -- canaries ------------------------------------------------------------------------------------------------------

def test_secret_canaries_prefix_in_distribution_and_only_the_secret_trained_and_scored():
    base = tiny_model("gpt2")
    tok = base.tokenizer
    canaries = make_canaries(tok, CanaryParams(count=30, length=6, prefix_length=8, seed=2), avoid_texts=TEXTS,
                             prefix_texts=TEXTS)
    assert all(c.kind == "secret" and any(t.startswith(c.prefix) for t in TEXTS) for c in canaries)
    assert len({c.prefix for c in canaries}) == 30  # a different real text behind each while they last
    encoded = encode_examples([c.example for c in canaries], tok, 64)
    engine = ScoringEngine(base, progress=False, cache=False)
    behind = engine.score([c.text for c in canaries], [c.prefix for c in canaries])
    for c, e, s in zip(canaries, encoded, behind):
        secret = tok(c.text, add_special_tokens=False)["input_ids"]
        prefix = tok(c.prefix)["input_ids"]
        assert e.labels == [IGNORE] * len(prefix) + secret  # the loss: the secret's tokens only
        assert s.token_ids.tolist() == secret  # the score: the same tokens, read behind the prefix
        # The secret opens a word, so prefix + secret is one text with the same tokens (scored in batches).
        assert tok(c.prefix + c.text)["input_ids"] == prefix + secret
    joined = trained_log_likelihood(engine, canaries)
    assert joined == pytest.approx([s.logprobs.sum() for s in behind], abs=1e-4 * 6)
    # The secret is made of rare tokens: none occurs in the data.
    used = {t for text in TEXTS for t in tok(text)["input_ids"]}
    assert not used & {t for c in canaries for t in tok(c.text, add_special_tokens=False)["input_ids"]}


def test_canaries_share_no_token_and_a_short_vocabulary_is_refused():
    tok = gpt2_tokenizer()
    params = CanaryParams(count=60, kinds=("secret", "rare-tokens", "random-words"), length=10, prefix_length=4)
    canaries = make_canaries(tok, params, avoid_texts=TEXTS, prefix_texts=TEXTS)
    drawn = [set(tok(c.text, add_special_tokens=False)["input_ids"]) for c in canaries]
    # Secret and rare-token canaries draw on one pool: no token of it is in two canaries of either kind.
    rare = [d for d, c in zip(drawn, canaries) if c.kind != "random-words"]
    assert sum(len(d) for d in rare) == len(set().union(*rare))
    assert all(c.prefix == "" for c in canaries if c.kind != "secret")
    with pytest.raises(TuneguardError, match="fewer than the .* need: lower --canaries or --canary-length"):
        make_canaries(tok, CanaryParams(count=2000, kinds=("random-words",), length=50))
    with pytest.raises(TuneguardError, match="pass the training texts"):
        make_canaries(tok, CanaryParams(count=4))


# -- the mechanism: fixed before the draw, and a planted bug -------------------------------------------------------

def test_the_dp_run_is_planned_for_the_population_not_the_drawn_texts(tmp_path):
    base = tiny_model("gpt2")
    train = TrainConfig(method="lora", epochs=1, batch_size=4, lr=1e-2, max_length=16)
    dp = DPConfig(target_epsilon=4.0, delta=1e-5)
    plan = AuditPlan(population=40)
    records = [dp_finetune(base, TEXTS[:n], tmp_path / str(n), train, dp, progress=False, plan=plan).record
               for n in (30, 36)]  # two inclusion vectors: 30 and 36 texts drawn in
    a, b = (r.dp for r in records)
    assert a["sample_rate"] == b["sample_rate"] == 4 / 40 and a["steps"] == b["steps"] == 10
    assert a["noise_multiplier"] == b["noise_multiplier"] and a["epsilon_spent"] == b["epsilon_spent"]
    assert a["audit_plan"]["population"] == 40 and a["audit_plan"]["planted_bug"] is None
    assert records[0].method == "lora+dp-sgd"


def test_planted_bug_specs():
    assert parse_bug("noise=0.1") == ("noise", 0.1) and parse_bug("normalise=sampled") == ("normalise", "sampled")
    for bad in ("noise=1", "noise=-0.1", "noise=x", "normalise=actual", "clip=2"):
        with pytest.raises(TuneguardError, match="must read noise=F"):
            parse_bug(bad)
    with pytest.raises(TuneguardError, match="give at least one epsilon"):
        DPAuditParams(epsilons=(), plant_bug="noise=0.1")


def test_planted_bug_is_audited_above_its_claim_and_the_honest_run_is_not(tmp_path):
    from tuneguard.report.dpaudit import audit_table

    # A tiny model that can memorise: one layer, embeddings large enough for a token's logit to move, LoRA on the
    # MLP, two-token rare-token canaries (cheap). 200 canaries, k+ = k- = 10: the most they certify is 1.82.
    base = tiny_model("gpt2", initializer_range=0.2, n_layer=1)
    train = TrainConfig(method="lora", epochs=5, batch_size=8, grad_accum=2, lr=2e-2, max_length=24, lora_r=16,
                        lora_alpha=32, lora_dropout=0.0, target_modules=["c_fc", "c_proj"])
    options = dict(train=train, canaries=CanaryParams(count=200, kinds=("rare-tokens",), length=2),
                   bound=BoundParams(), progress=False)
    honest = audit_dp(base, TEXTS[:10], tmp_path, audit=DPAuditParams(epsilons=(0.5,), no_dp=False), **options)
    planted = audit_dp(base, TEXTS[:10], tmp_path, audit=DPAuditParams(epsilons=(0.5,), no_dp=False,
                                                                       plant_bug="noise=0"), **options)
    (fair,), (bugged,) = honest.runs, planted.runs
    assert fair.epsilon == pytest.approx(bugged.epsilon) and fair.epsilon <= 0.5  # the same claim
    for bound in ("bound", "fdp", "bound_pure", "fdp_pure"):
        assert getattr(fair, bound).epsilon_lower_bound <= fair.epsilon
        assert getattr(bugged, bound).epsilon_lower_bound > 1.5 * bugged.epsilon  # measured 0.93-1.82, 4 seeds
    record = json.loads((tmp_path / "train" / bugged.name / "run.json").read_text())
    assert bugged.name == "eps-0.5-planted-noise-0" and record["method"] == "lora+dp-sgd+planted-bug"
    assert record["dp"]["audit_plan"] == {"population": 9 + 100, "planted_bug": "noise=0", "noise_multiplier_used": 0}
    assert record["dp"]["noise_multiplier"] > 1  # the claim the accountant still makes
    shown = audit_table(planted)
    assert "PLANTED BUG noise=0: the DP runs audited are NOT your mechanism" in shown and "pure-DP test" in shown


# -- the command: defend dp's settings, the bug refused elsewhere --------------------------------------------------

def _parse(command: str, *argv: str) -> argparse.Namespace:
    from tuneguard.commands import audit_dp, defend

    parser = argparse.ArgumentParser(prog="tuneguard")
    sub = parser.add_subparsers()
    (audit_dp if command == "audit-dp" else defend).register(sub)
    return parser.parse_args([*command.split(), *argv])


def test_audit_dp_takes_defend_dps_settings_and_checks_the_method_first(tmp_path):
    audit = _parse("audit-dp", "--model", "tiny-gpt2", "--data", "x.jsonl", "--out", str(tmp_path))
    defend = _parse("defend dp", "--model", "tiny-gpt2", "--data", "x.jsonl", "--out", str(tmp_path))
    for name in ("lr", "grad_accum", "max_grad_norm", "delta", "batch_size", "epochs", "max_length"):
        assert getattr(audit, name) == getattr(defend, name), name
    assert (audit.lr, audit.grad_accum) == (1e-3, 4)  # the DP regime's 10x and 4x
    args = _parse("audit-dp", "--model", "tiny-gpt2", "--data", str(tmp_path / "absent.jsonl"), "--method", "full",
                  "--out", str(tmp_path))
    with pytest.raises(TuneguardError, match="DP-SGD is offered for LoRA only"):  # before the data is read
        args.func(args)
    with pytest.raises(SystemExit):  # a planted bug is audit-dp's only
        _parse("defend dp", "--model", "tiny-gpt2", "--data", "x.jsonl", "--plant-bug", "noise=0.1", "--out",
               str(tmp_path))
