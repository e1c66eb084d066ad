"""The owner's self-audit with shadow fine-tunes: the shadow cache (trained once, keyed by what decides it, resumable
per shadow), the population refused where it holds an evaluated text, RMIA and LiRA (offline) against hand-computed
values and the reference-attack identity, their orientation on an over-fitted tiny model, the report's cost line,
and the extended ensemble's row in `all`."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tuneguard import cli
from tuneguard.attacks import ATTACKS, resolve_suite, run_attacks
from tuneguard.attacks.lira import lira_scores, statistic
from tuneguard.attacks.rmia import dominated, log_lr, out_probability, tie_broken, tune_a
from tuneguard.attacks.shadows import ShadowSpec, membership, train_shadows
from tuneguard.errors import TuneguardError
from tuneguard.models import tiny_model
from tuneguard.report.mia import cost_text, shadow_cost_line
from tuneguard.train import TrainConfig, finetune
from helpers import FakeEngine, context, run, sentences, ts, write_jsonl

RECIPE = TrainConfig(method="full", epochs=1, lr=1e-3, batch_size=4, max_length=16)


class FakeShadows:
    """Stands in for ShadowScorer: fixed LL per text and shadow (``table[text]`` = one LL per shadow)."""

    def __init__(self, table: dict[str, list[float]], population: list[str], keep) -> None:
        self.table, self.population, self.keep = table, population, np.asarray(keep, dtype=bool)
        self.k = len(self.keep)

    def ll(self, texts):
        return np.array([self.table[t] for t in texts], dtype=float).T


def fake_context(target: dict[str, float], shadows: FakeShadows, labels=None):
    """An attack context whose target scores each text with the log-likelihood ``target[text]``."""
    evaluated = [t for t in target if t not in shadows.population]
    return context({t: ts([v]) for t, v in target.items()}, evaluated, labels, shadows=shadows)


# -- RMIA, by hand -----------------------------------------------------------------------------------------------

# Evaluated texts x1, x2 (OUT for both shadows) and a population z1..z3, each text in exactly one of the 2 shadows.
PROB = {"x1": 0.5, "x2": 0.2, "z1": 0.4, "z2": 0.15, "z3": 0.2}  # Pr(.|target)
SHADOW_PROB = {"x1": [0.2, 0.3], "x2": [0.1, 0.3], "z1": [0.9, 0.4], "z2": [0.3, 0.8], "z3": [0.7, 0.1]}
KEEP = [[True, False, True], [False, True, False]]  # shadow i trained on z_j


def rmia_fixture() -> tuple[dict[str, float], FakeShadows]:
    shadows = FakeShadows({t: list(np.log(p)) for t, p in SHADOW_PROB.items()}, ["z1", "z2", "z3"], KEEP)
    return {t: math.log(p) for t, p in PROB.items()}, shadows


def test_rmia_matches_the_hand_computed_offline_ratio_and_population_comparison():
    # a = 0.5: Pr(v) = ((1 + a) Pr_OUT(v) + 1 - a) / 2 = 0.75 Pr_OUT(v) + 0.25.
    # x1: Pr_OUT = (0.2 + 0.3) / 2 = 0.25 -> Pr = 0.4375, LR = 0.5 / 0.4375 = 1.142857
    # x2: Pr_OUT = 0.2 -> Pr = 0.4, LR = 0.5
    # z1: OUT for shadow 1 only: 0.4 -> Pr = 0.55, LR = 0.4 / 0.55 = 0.727; z2: 0.3 -> 0.475, LR = 0.316;
    # z3: 0.1 -> 0.325, LR = 0.615.
    target, shadows = rmia_fixture()
    out = run("rmia", fake_context(target, shadows, [1, 0]), a=0.5)
    np.testing.assert_allclose(out.raw, np.log([0.5 / 0.4375, 0.2 / 0.4]))
    # gamma 1: x1 beats every z, x2 beats z2 alone; the score is (#z dominated + t(log LR)) / 4.
    t = 0.5 + np.arctan(out.raw) / np.pi
    np.testing.assert_allclose(out.scores, (np.array([3, 1]) + t) / 4)
    # gamma 2: x1 dominates z when LR(z) < 0.571 (z2 only); x2 when LR(z) < 0.25 (none).
    out = run("rmia", fake_context(target, shadows, [1, 0]), a=0.5, gamma=2)
    np.testing.assert_allclose(out.scores, (np.array([1, 0]) + t) / 4)
    assert "a = 0.5 (given), gamma = 2" in out.note


def test_rmia_building_blocks():
    ll = np.log([[0.2, 0.9], [0.4, 0.3]])
    np.testing.assert_allclose(out_probability(ll), [0.3, 0.6])
    out = np.array([[True, False], [False, False]])
    np.testing.assert_allclose(out_probability(ll, out), [0.2, np.nan])  # no OUT shadow for the second text
    # a = 1: Pr(x) = Pr_OUT(x); a = 0: Pr(x) = (Pr_OUT(x) + 1) / 2.
    np.testing.assert_allclose(log_lr(np.log([0.5]), np.array([0.25]), 1.0), [math.log(2)])
    np.testing.assert_allclose(log_lr(np.log([0.5]), np.array([0.25]), 0.0), [math.log(0.5 / 0.625)])
    # Strictly greater: a z with the same LR is not dominated; a NaN x stays NaN.
    np.testing.assert_allclose(dominated(np.array([0.0, 1.0, np.nan]), np.array([0.0, 0.5, np.nan]), 1.0),
                               [0.0, 1.0, np.nan])


def test_texts_that_dominate_the_same_population_are_ordered_by_their_ratio():
    """Beyond the population's largest LR every text shares 1: a block of ties exactly where TPR at a low FPR is
    read. The tie-break orders it by log LR(x) and keeps the share's order across steps."""
    log_lr_z = np.array([0.0, 1.0])
    log_lr_x = np.array([5.0, 2.0, 0.5, 30.0, np.nan])
    share = dominated(log_lr_x, log_lr_z, 1.0)
    np.testing.assert_allclose(share, [1, 1, 0.5, 1, np.nan])
    scores = tie_broken(share, log_lr_x, 2)
    assert list(np.argsort(scores[:4])) == [2, 1, 0, 3] and np.isnan(scores[4])
    np.testing.assert_array_equal(np.floor(scores[:4] * 3) / 2, share[:4])  # the paper's share reads back
    assert np.all((scores[:4] > 0) & (scores[:4] < 1))


def test_rmia_with_shadows_identical_to_the_base_is_the_reference_attack():
    """Identity: every shadow = the base model and a = 1 give log LR(x) = LL_target(x) - LL_base(x) (ratio's score)
    and an RMIA score that is the population's distribution function of ratio's score (gamma 1): a non-decreasing
    function of it, and with its ties broken by log LR(x) the reference attack's order exactly."""
    rng = np.random.default_rng(0)
    texts = [f"x{i}" for i in range(12)]
    population = [f"z{i}" for i in range(30)]
    base = {t: float(v) for t, v in zip(texts + population, rng.uniform(-4, -1, 42))}
    target = {t: v + float(rng.normal(0.3, 0.4)) for t, v in base.items()}
    shadows = FakeShadows({t: [v] * 4 for t, v in base.items()}, population, membership(30, 4, seed=0))
    labels = [1, 0] * 6
    ctx = fake_context(target, shadows, labels)
    rmia = run("rmia", ctx, a=1.0)
    ratio_ctx = fake_context(target, shadows, labels)
    ratio_ctx.reference = FakeEngine({t: ts([v]) for t, v in base.items()})
    ratio = run("ratio", ratio_ctx).scores
    np.testing.assert_allclose(rmia.raw, ratio)
    ratio_z = np.array([target[z] - base[z] for z in population])
    np.testing.assert_allclose(np.floor(rmia.scores * 31) / 30, [(ratio_z < r).mean() for r in ratio])
    np.testing.assert_array_equal(np.argsort(rmia.scores), np.argsort(ratio))


def test_tuning_a_picks_the_best_mean_auc_of_the_grid():
    rng = np.random.default_rng(1)
    keep = membership(60, 4, seed=1)
    difficulty = rng.uniform(-4, -1, 60)
    ll = difficulty + 0.8 * keep + rng.normal(0, 0.2, (4, 60))  # a shadow fits its own texts better
    a, aucs = tune_a(ll, keep)
    assert len(aucs) == 11 and aucs[f"{a:g}"] == max(aucs.values())
    assert aucs[f"{a:g}"] > 0.8  # the shadows' own texts are found


# -- LiRA, by hand -----------------------------------------------------------------------------------------------

def test_lira_matches_the_hand_computed_gaussian_tests():
    target = np.array([1.0, 2.0])
    shadows = np.array([[-1.0, 0.5], [1.0, 1.5]])  # 2 shadows x 2 texts: means 0 and 1, variances 1 and 0.25
    z, p = lira_scores(target, shadows, variance="per-text")
    np.testing.assert_allclose(z, [1.0, 2.0])  # (1 - 0) / 1, (2 - 1) / 0.5
    np.testing.assert_allclose(p, [0.15865525393145707, 0.022750131948179195])  # 1 - Phi(z)
    z, _ = lira_scores(target, shadows, variance="global")  # sigma^2 = (1 + 0.25) / 2
    np.testing.assert_allclose(z, [1 / math.sqrt(0.625)] * 2)
    # The authors' code: median (= mean of two), the std of all four values (0.935), -log N(target; median, std).
    score, _ = lira_scores(target, shadows, variance="global", form="code")
    sigma = math.sqrt(0.875)
    np.testing.assert_allclose(score, [0.5 * math.log(2 * math.pi * sigma ** 2) + 1 / (2 * sigma ** 2)] * 2)
    # Shadows that agree exactly leave the one-sided test undefined: NaN, left out of the metrics.
    z, _ = lira_scores(np.array([0.0]), np.array([[1.0], [1.0]]), variance="per-text")
    assert np.isnan(z).all()


def test_lira_statistic_is_the_logit_of_the_geometric_mean_probability():
    ll = np.log([0.2, 0.5, 1e-300])
    np.testing.assert_allclose(statistic(ll), [math.log(0.25), 0.0, math.log(1e-300)])
    np.testing.assert_allclose(statistic(ll, "ll"), ll)


def test_lira_attack_on_fake_tables():
    target = {"x1": math.log(0.5), "x2": math.log(0.1)}
    shadows = FakeShadows({"x1": [math.log(0.2), math.log(0.3)], "x2": [math.log(0.1), math.log(0.2)]}, [],
                          np.zeros((2, 0)))
    out = run("lira", fake_context(target, shadows, [1, 0]), statistic="ll", variance="per-text")
    s = np.log([[0.2, 0.1], [0.3, 0.2]])
    np.testing.assert_allclose(out.scores, (np.log([0.5, 0.1]) - s.mean(axis=0)) / s.std(axis=0))
    assert out.scores[0] > 0 > out.scores[1]


# -- the shadows: cache, keys, resumption, refusals ---------------------------------------------------------------

def test_shadows_train_once_are_reused_and_are_keyed_by_the_recipe():
    base, population = tiny_model("gpt2"), sentences(12, seed=41, clauses=1)
    first = train_shadows(base, population, RECIPE, k=2, seed=0, progress=False)
    assert first.trained == [0, 1] and first.keep.sum(axis=0).tolist() == [1] * 12  # each text in k/2 shadows
    assert first.keep.sum(axis=1).tolist() == [6, 6]  # each shadow on half of the population
    assert json.loads((first.directory / "shadows.json").read_text())["k"] == 2
    again = train_shadows(base, list(reversed(population)), RECIPE.replace(seed=7), k=2, seed=0, progress=False)
    assert again.trained == [] and again.directory == first.directory  # order and the target's seed decide nothing
    assert again.train_seconds == first.train_seconds  # the recorded cost, reported on reuse too
    other = train_shadows(base, population, RECIPE.replace(lr=2e-3), k=2, seed=0, progress=False)
    assert other.trained == [0, 1] and other.directory != first.directory
    # Each shadow is saved as it finishes: losing one retrains that one only.
    shutil.rmtree(first.path(1))
    assert train_shadows(base, population, RECIPE, k=2, seed=0, progress=False).trained == [1]


def test_membership_puts_each_text_in_half_of_the_shadows_and_each_shadow_on_half_of_the_texts():
    keep = membership(51, 4, seed=3)
    assert keep.shape == (4, 51) and (keep.sum(axis=0) == 2).all() and keep.sum(axis=1).tolist() == [25, 26] * 2
    assert not np.array_equal(keep[0], keep[2])  # the pairs draw their halves independently
    assert np.array_equal(keep, membership(51, 4, seed=3)) and not np.array_equal(keep, membership(51, 4, seed=4))
    assert membership(10, 3, seed=0).sum(axis=1).tolist() == [5, 5, 5]  # an odd k: the last one a half of its own


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """A tiny GPT-2 over-fitted on 10 members (full fine-tuning, recorded), 10 non-members, 20 population texts."""
    texts = sentences(40, seed=5, clauses=2)
    members, nonmembers, population = texts[:10], texts[10:20], texts[20:]
    recipe = TrainConfig(method="full", epochs=8, lr=3e-3, batch_size=5, max_length=48)
    target = finetune(tiny_model("gpt2"), members, tmp_path_factory.mktemp("target"), recipe, progress=False)
    return target.model, members, nonmembers, population


def test_a_population_holding_an_evaluated_text_is_refused(overfit):
    target, members, nonmembers, population = overfit
    with pytest.raises(TuneguardError, match=r"^the shadow population: 1 of its 21 texts are evaluated texts "
                                             r"\(1 non-member\); attacker data must be disjoint"):
        run_attacks(target, members, nonmembers, attacks="loss", shadows=ShadowSpec([*population, nonmembers[3]]),
                    n_boot=0, progress=False)
    with pytest.raises(TuneguardError, match="rmia need shadow models: pass --shadows K --population FILE"):
        run_attacks(target, members, nonmembers, attacks="loss,rmia", n_boot=0, progress=False)
    with pytest.raises(TuneguardError, match="--shadows must be at least 2"):
        ShadowSpec(population, k=1)
    with pytest.raises(TuneguardError, match="holds 2 usable texts; shadow models need at least 4"):
        run_attacks(target, members, nonmembers, attacks="loss", shadows=ShadowSpec(population[:2]), progress=False)


def test_shadow_attacks_score_members_higher_and_the_report_prices_them(overfit, capsys):
    target, members, nonmembers, population = overfit
    result = run_attacks(target, members, nonmembers, attacks="loss", shadows=ShadowSpec(population, k=4),
                         n_boot=0, progress=False)
    assert list(result.attacks) == ["loss", "rmia", "lira"]  # the shadow attacks join the suite
    for name in ("rmia", "lira"):
        a = result.attacks[name]
        assert roc_auc_score(a.labels, a.scores) > 0.7, name  # members score higher (measured: 0.90, 0.80)
    settings, cost = result.settings["shadows"], result.cost["shadows"]
    assert settings["k"] == 4 and settings["variant"] == "offline" and settings["attacks"] == ["rmia", "lira"]
    assert settings["recipe"]["epochs"] == 8 and settings["texts_per_shadow"] == [10] * 4  # the target's recipe
    assert cost["trained_now"] == [0, 1, 2, 3] and len(cost["train_seconds"]) == 4
    n = len(members) + len(nonmembers)
    # Every shadow scores the evaluated texts and the population once; the target scores the population too.
    assert result.cost["forward_passes"] == {"target": n + len(population), "shadows": 4 * (n + len(population))}
    line = shadow_cost_line(result)
    assert line.startswith(f"Shadow models: 4 offline full fine-tunes cost {sum(cost['train_seconds']):.0f} s of "
                           f"training (4 trained in this run, 0 reused from the cache) and {4 * (n + len(population))} "
                           "forward passes; they bought AUC (TPR@1% needs more non-members) ")
    assert line.endswith("without them (loss, the strongest other attack).") and line in cost_text(result)

    again = run_attacks(target, members, nonmembers, attacks="loss", shadows=ShadowSpec(population, k=4),
                        n_boot=0, progress=False)
    assert again.cost["shadows"]["trained_now"] == [] and again.cost["shadows"]["reused"] == [0, 1, 2, 3]
    assert "(0 trained in this run, 4 reused from the cache)" in shadow_cost_line(again)
    np.testing.assert_array_equal(again.attacks["rmia"].scores, result.attacks["rmia"].scores)


def test_shadow_options_on_the_command_line(overfit, tmp_path, capsys):
    target, members, nonmembers, population = overfit

    files = ["--members", write_jsonl(tmp_path / "m.jsonl", members),
             "--nonmembers", write_jsonl(tmp_path / "n.jsonl", nonmembers)]
    base = ["attack", "--target", target.ref, *files, "--attacks", "loss", "--bootstrap", "0"]
    assert cli.main([*base, "--shadows", "2", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tuneguard: error: --shadows needs --population FILE") and err.count("\n") == 1
    assert cli.main([*base, "--shadows", "2", "--population", write_jsonl(tmp_path / "p.jsonl", population),
                     "--param", "rmia.a=1", "--out", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    assert "Shadow models: 2 offline full fine-tunes cost" in printed and "rmia" in printed
    saved = json.loads((tmp_path / "b" / "results.json").read_text())
    assert list(saved["attacks"]) == ["loss", "rmia", "lira"] and saved["attacks"]["rmia"]["params"]["a"] == 1.0
    assert "Shadow models: 2 offline" in (tmp_path / "b" / "report.html").read_text()


def test_audit_refuses_an_overlapping_population_before_training_and_runs_the_shadow_attacks(tmp_path, capsys):
    texts, population = sentences(12, seed=51, clauses=1), sentences(8, seed=52, clauses=1)

    args = ["audit", "--model", "tiny-gpt2", "--data", write_jsonl(tmp_path / "data.jsonl", texts), "--method", "full",
            "--epochs", "1", "--max-length", "16", "--attacks", "loss", "--bootstrap", "0", "--shadows", "2",
            "--param", "lira.form=code"]
    assert cli.main([*args, "--population", write_jsonl(tmp_path / "leaky.jsonl", [*population, texts[0]]),
                     "--out", str(tmp_path / "a")]) == 2
    assert "the shadow population (leaky.jsonl): 1 of its 9 texts are evaluated texts" in capsys.readouterr().err
    assert not (tmp_path / "a" / "target").exists()  # refused before the target was fine-tuned
    assert cli.main([*args, "--population", write_jsonl(tmp_path / "population.jsonl", population),
                     "--out", str(tmp_path / "b")]) == 0
    saved = json.loads((tmp_path / "b" / "results.json").read_text())
    assert list(saved["attacks"]) == ["loss", "rmia", "lira"] and saved["attacks"]["lira"]["params"]["form"] == "code"
    assert saved["settings"]["shadows"]["recipe"]["epochs"] == 1  # the audit's own recipe, from the target's record


# -- the extended ensemble as a row of `all` --------------------------------------------------------------------

def test_all_reports_the_extended_ensemble_beside_softs():
    assert resolve_suite("all").names[-2:] == ["ensemble", "ensemble-extended"]
    assert "threat model: the attacker holds labelled members" in ATTACKS.get("ensemble-extended").summary
    members, nonmembers = sentences(8, seed=31, clauses=1), sentences(8, seed=32, clauses=1)
    result = run_attacks(tiny_model("gpt2"), members, nonmembers, reference=tiny_model("gpt2", seed=1), n_boot=0,
                         attacks="loss,ratio,ez-mia,ensemble,ensemble-extended", progress=False)
    soft, extended = result.attacks["ensemble"], result.attacks["ensemble-extended"]
    assert soft.note.endswith("over: loss, ratio") and extended.note.endswith("over: loss, ratio, ez-mia")
    same = run_attacks(tiny_model("gpt2"), members, nonmembers, attacks="loss,ratio,ez-mia,ensemble",
                       params={"ensemble": {"features": "extended"}}, reference=tiny_model("gpt2", seed=1),
                       n_boot=0, progress=False)
    np.testing.assert_array_equal(extended.scores, same.attacks["ensemble"].scores)
    assert "ensemble-extended" not in same.cost["not_run"]  # fast's extended ensemble is the same computation
