"""The fine-tuning attacks that compare target and base token by token (EZ-MIA, WBC, hard tokens) and GradNorm:
formulas against hand-computed values, target == reference, orientation on an over-fitted toy, the token-id check,
their cost in forward passes, and the suite."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import FakeEngine, context, run, sentences, ts, with_bos

from tuneguard.attacks import ALL_ATTACKS, ATTACKS, resolve_attacks, run_attacks
from tuneguard.attacks.ez_mia import EDGE_HIGH, ez_score
from tuneguard.attacks.gradnorm import chosen_tensors
from tuneguard.attacks.ht_mia import ht_score
from tuneguard.attacks.wbc import CODE_WINDOWS, PAPER_WINDOWS, wbc_score
from tuneguard.errors import TuneguardError
from tuneguard.models import load_model, tiny_model
from tuneguard.scoring import ScoringEngine
from tuneguard.train import TrainConfig, finetune

TOKEN_LEVEL = ("ez-mia", "wbc", "ht-mia")


def pair_context(target: dict, reference: dict, texts: list[str], labels=None):
    return context(target, texts, labels, reference=FakeEngine(reference))


# -- EZ-MIA -------------------------------------------------------------------------------------------------------

D = np.array([0.5, -1.0, 2.0, -0.5, 3.0])
WRONG = np.array([True, True, True, False, True])


def test_ez_mia_by_hand():
    # code: the first scored position is dropped -> errors d = -1, 2, 3: P = 5, N = 1.
    assert ez_score(D, WRONG, "code") == (5.0, False)
    # paper: every position -> errors d = 0.5, -1, 2, 3: P = 5.5, N = 1.
    assert ez_score(D, WRONG, "paper") == (5.5, False)
    # A tie (d = 0) at an error position counts in neither sum.
    assert ez_score(np.array([9.0, 0.0, -2.0, 1.0]), np.ones(4, bool), "code") == (0.5, False)


@pytest.mark.parametrize("d, wrong", [
    (np.array([1.0, -1.0, 2.0]), np.array([True, False, True])),  # |E| = 1 once position 0 is dropped
    (np.array([1.0, 2.0, 0.0, 3.0]), np.ones(4, bool)),  # N = 0: no negative difference
    (np.zeros(5), np.ones(5, bool)),  # d = 0 everywhere (target == reference)
    (np.zeros(0), np.zeros(0, bool)),  # no scored token
])
def test_ez_mia_edge_cases(d, wrong):
    assert ez_score(d, wrong, "code") == (0.0, True)
    assert ez_score(d, wrong, "paper") == (EDGE_HIGH, True)


def test_ez_mia_paper_edge_is_only_no_error_or_no_negative_difference():
    # One error position where the target fell below its base: the code's edge case (|E| < 2), but in the paper's
    # appendix an ordinary text (P = 0, N = 1): score 0, not the strongest member evidence.
    d, wrong = np.array([0.3, -1.0, 0.2]), np.array([False, True, False])
    assert ez_score(d, wrong, "paper") == (0.0, False)
    assert ez_score(d, wrong, "code") == (0.0, True)


def test_ez_mia_a_tie_with_the_top_token_is_not_an_error():
    # bf16 logits tie often: the argmax may name another token while the true token has the top log-prob. An error
    # is a true-token log-prob below the position's max, so the tie at position 2 is correct whatever argmax says.
    ids = [4, 5, 6, 7, 8]
    lp = np.array([-1.0, -2.0, -1.0, -0.5, -1.0])
    tied = ts(lp, ids=ids, argmax=np.where(WRONG, 0, ids), max_lp=np.where(WRONG, lp + 0.5, lp))
    tied.max_logprob[2] = lp[2]
    reference = ts(lp - D, ids=ids)
    # errors 0, 1, 4: d = 0.5, -1, 3 -> P = 3.5, N = 1 (with position 2 counted as an error it would be 5.5).
    assert ATTACKS.get("ez-mia").score(tied, reference, "paper") == (3.5, False)


def test_ez_mia_attack_uses_the_targets_top1_and_counts_edge_cases():
    ids = [4, 5, 6, 7, 8]
    lp = np.array([-1.0, -2.0, -1.0, -0.5, -1.0])
    # The target's top-1 is wrong where WRONG says so: another token, with a higher log-prob than the true one.
    target = {"a": ts(lp, ids=ids, argmax=np.where(WRONG, 0, ids), max_lp=np.where(WRONG, lp + 0.5, lp)),
              "b": ts([-1.0, -1.0], ids=[1, 2])}  # top-1 right everywhere: no error position
    reference = {"a": ts(np.array([-1.0, -2.0, -1.0, -0.5, -1.0]) - D, ids=ids), "b": ts([-2.0, -2.0], ids=[1, 2])}
    out = run("ez-mia", pair_context(target, reference, ["a", "b"]))
    np.testing.assert_allclose(out.scores, [5.0, 0.0])
    assert out.extra["edge_cases"] == 1 and out.note.startswith("1 of 2 texts are edge cases")
    paper = run("ez-mia", pair_context(target, reference, ["a", "b"]), edge="paper")
    np.testing.assert_allclose(paper.scores, [5.5, EDGE_HIGH])
    assert "strongest member evidence" in paper.note


def test_ez_mia_ensemble_column_is_log_scaled():
    out = SimpleNamespace(scores=np.array([0.0, 1.0, EDGE_HIGH]))
    column = ATTACKS.get("ez-mia").ensemble_columns(None, out)["ez-mia"]
    assert np.isfinite(column).all() and column[0] == 0.0 and column[1] == pytest.approx(np.log(2))


# -- WBC ----------------------------------------------------------------------------------------------------------

def test_wbc_window_lists():
    assert CODE_WINDOWS == (2, 3, 4, 6, 9, 13, 18, 25, 32, 40)
    assert PAPER_WINDOWS == (2, 3, 4, 5, 8, 11, 15, 21, 29, 40)  # round(2·20^((k-1)/9)), k = 1..10


@pytest.mark.parametrize("d, windows, statistic, expected", [
    ([1.0, -2.0, 3.0], (2,), "sign", 0.5),  # S = -1, 1
    ([1.0, -2.0, 3.0], (2, 3), "sign", 0.75),  # w=3: S = 2 -> 1
    ([1.0, -1.0, 0.0], (2,), "sign", 0.0),  # S = 0, -1: a tie votes non-member
    ([0.5], (2, 3), "sign", 1.0),  # shorter than the smallest window: the whole text is the window
    ([-0.5], (2,), "sign", 0.0),
    ([1.0, -2.0, 3.0], (2,), "mean", 0.0),
    ([1.0, -2.0, 3.0, 4.0], (2,), "median", 1.0),  # S = -1, 1, 7
    ([1.0, -2.0, 3.0], (2, 3), "min", (-1.0 + 2.0) / 2),
    ([0.0] * 6, CODE_WINDOWS, "sign", 0.0),  # target == reference
])
def test_wbc_by_hand(d, windows, statistic, expected):
    assert wbc_score(np.array(d), windows, statistic) == pytest.approx(expected)


def test_wbc_of_no_token_is_nan():
    assert np.isnan(wbc_score(np.zeros(0), CODE_WINDOWS))


def test_wbc_attack_and_its_windows():
    target = {"a": ts([-1.0, -3.0, -1.0]), "b": ts([-1.0, -1.0, -1.0])}
    reference = {"a": ts([-2.0, -1.0, -4.0]), "b": ts([-1.0, -1.0, -1.0])}  # d = (1, -2, 3) and (0, 0, 0)
    ctx = pair_context(target, reference, ["a", "b"])
    out = run("wbc", ctx, windows=[2, 4])
    np.testing.assert_allclose(out.scores, [0.75, 0.0])
    assert out.extra["windows"] == [2, 4] and out.note.startswith("2 of 2 texts have fewer scored tokens")
    assert run("wbc", ctx, windows="paper").extra["windows"] == list(PAPER_WINDOWS)
    np.testing.assert_allclose(run("wbc", ctx, windows=[2], statistic="mean").scores, [0.0, 0.0])
    with pytest.raises(TuneguardError, match="parameter 'windows' must be code, paper or a list"):
        ATTACKS.make("wbc", windows=[0])


# -- hard tokens --------------------------------------------------------------------------------------------------

LPT = [-1.0, -5.0, -3.0, -5.0, -0.5]
LPR = [-2.0, -4.0, -4.0, -6.0, -1.0]  # d = 1, -1, 1, 1, 0.5
MAXLP = [-0.1, -0.2, -3.0, -0.05, -1.0]


@pytest.mark.parametrize("k, by, expected", [
    (0.2, "logprob", (-1.0, 0.0)),  # ⌈1⌉ = 1 hard position; -5 ties at 1 and 3: the earlier one (d = -1)
    (0.4, "logprob", (0.0, 0.5)),  # positions 1 and 3
    (0.5, "logprob", (1 / 3, 2 / 3)),  # ⌈2.5⌉ = 3: positions 1, 3, 2
    (0.4, "confidence", (0.75, 1.0)),  # lowest max log-prob: positions 2 (-3) and 4 (-1)
    (1.0, "logprob", (2.5 / 5, 4 / 5)),
])
def test_ht_mia_by_hand(k, by, expected):
    got = ht_score(ts(LPT, max_lp=MAXLP), ts(LPR), k, by)
    assert got == pytest.approx(expected)


def test_ht_mia_attack_statistics_and_nothing_to_score():
    assert all(np.isnan(ht_score(ts([]), ts([]), 0.2)))
    target, reference = {"a": ts(LPT, max_lp=MAXLP), "b": ts([-1.0])}, {"a": ts(LPR), "b": ts([-1.0])}
    ctx = pair_context(target, reference, ["a", "b"])
    mean = run("ht-mia", ctx, k=0.4)
    np.testing.assert_allclose(mean.scores, [0.0, 0.0])
    np.testing.assert_allclose(mean.extra["fraction_positive"], [0.5, 0.0])
    fraction = run("ht-mia", ctx, k=0.4, statistic="fraction")
    np.testing.assert_allclose(fraction.scores, [0.5, 0.0])


# -- the token-id check -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TOKEN_LEVEL)
def test_token_level_attacks_refuse_other_token_ids(name):
    target, reference = {"a": ts([-1.0, -2.0], ids=[3, 4]), "b": ts([-1.0])}, {"a": ts([-1.0, -2.0], ids=[3, 5]),
                                                                               "b": ts([-1.0])}
    with pytest.raises(TuneguardError, match=rf"attack '{name}' compares target and reference token by token, but "
                                             r"fake scored other token ids than fake for 1 of 2 texts \(e.g. text 0\)"):
        run(name, pair_context(target, reference, ["a", "b"]))


def test_a_reference_with_another_tokenizer_is_refused_before_any_forward_pass(monkeypatch):
    tiny = tiny_model("gpt2")
    members, nonmembers = sentences(4, seed=50, clauses=1), sentences(4, seed=51, clauses=1)

    def no_pass(*args, **kwargs):
        raise AssertionError("a forward pass ran before the check")

    monkeypatch.setattr(ScoringEngine, "_forward", no_pass)
    # Same vocabulary, but the reference's tokenizer adds a BOS token: every text is scored over other token ids.
    with pytest.raises(TuneguardError, match=r"ez-mia, wbc compare target and reference token by token, but the "
                                             r"reference tiny-gpt2\+bos tokenises 8 of 8 texts differently"):
        run_attacks(tiny, members, nonmembers, attacks="loss,ratio,ez-mia,wbc", reference=with_bos(tiny), n_boot=0,
                    progress=False)


# -- on real engines ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A tiny GPT-2 over-fitted on its members, and a same-domain reference fine-tuned the same way on disjoint texts.

    The random tiny base knows nothing of the template, so fine-tuning raises every template token over it (d > 0
    almost everywhere, for members and non-members alike): against that base EZ-MIA finds no negative difference
    and WBC's votes saturate. A reference that learned the domain but not the members leaves the members' own
    gain, as the EZ-MIA paper's same-domain SFT reference does.
    """
    texts = sentences(48, seed=0, clauses=2)
    members, nonmembers, other = texts[:16], texts[16:32], texts[32:]
    base = tiny_model("gpt2")
    config = TrainConfig(method="full", lr=3e-3, epochs=6, batch_size=4, max_length=64)
    target = finetune(base, members, tmp_path_factory.mktemp("target"), config, progress=False).model
    domain = finetune(base, other, tmp_path_factory.mktemp("domain"), config, progress=False).model
    return SimpleNamespace(base=base, target=target, domain=domain, members=members, nonmembers=nonmembers)


def test_members_score_higher_against_a_same_domain_reference(tuned):
    out = run_attacks(tuned.target, tuned.members, tuned.nonmembers, attacks=["ratio", *TOKEN_LEVEL],
                      reference=tuned.domain, n_boot=0, progress=False)
    auc = {name: r.auc for name, r in out.attacks.items()}
    # Measured: ez-mia 0.76, wbc 0.75, ht-mia 0.82 (ratio 0.72).
    for name in TOKEN_LEVEL:
        assert auc[name] > 0.65, auc
    # Against the base, the hard tokens still separate (0.85); EZ-MIA and WBC see the saturation described above.
    base = run_attacks(tuned.target, tuned.members, tuned.nonmembers, attacks="ht-mia", n_boot=0, progress=False)
    assert base.settings["reference"] == "tiny-gpt2" and base.attacks["ht-mia"].auc > 0.7


@pytest.mark.parametrize("name, params", [("ez-mia", {}), ("ez-mia", {"edge": "paper"}), ("wbc", {}),
                                          ("wbc", {"statistic": "median"}), ("ht-mia", {}),
                                          ("ht-mia", {"statistic": "fraction"})])
def test_reference_equal_to_the_target_gives_auc_one_half(tuned, name, params):
    out = run_attacks(tuned.target, tuned.members, tuned.nonmembers, attacks=name, reference=tuned.target,
                      params={name: params}, n_boot=0, progress=False)
    result = out.attacks[name]
    assert result.auc == 0.5 and len(set(result.scores)) == 1
    assert "reference model is the target itself" in result.not_applicable


def test_token_level_attacks_add_no_forward_pass(tuned):
    def passes(attacks):
        return run_attacks(tuned.target, tuned.members, tuned.nonmembers, attacks=attacks, reference=tuned.base,
                           n_boot=0, cache=False, progress=False).cost

    alone, together = passes("loss,ratio"), passes(["loss", "ratio", *TOKEN_LEVEL])
    n = len(tuned.members) + len(tuned.nonmembers)
    assert alone["forward_passes"] == together["forward_passes"] == {"target": n, "reference": n}
    assert together["forward_passes_by_attack"]["ratio"] == {"target": 0, "reference": n}  # the reference's pass
    for name in TOKEN_LEVEL:
        assert together["forward_passes_by_attack"][name] == {"target": 0, "reference": 0}, name


def test_the_default_suite_and_the_extended_ensemble_take_them(tuned):
    suite = resolve_attacks("all")
    assert suite[suite.index("ratio") + 1:suite.index("ratio") + 4] == list(TOKEN_LEVEL)
    assert "gradnorm" not in ALL_ATTACKS  # a backward pass per text: opt-in
    out = run_attacks(tuned.target, tuned.members, tuned.nonmembers, attacks=["ratio", *TOKEN_LEVEL, "ensemble"],
                      params={"ensemble": {"features": "extended"}}, n_boot=0, progress=False)
    assert out.attacks["ensemble"].note.endswith("over: ratio, ez-mia, wbc, ht-mia")
    soft = run_attacks(tuned.target, tuned.members, tuned.nonmembers, attacks=["ratio", *TOKEN_LEVEL, "ensemble"],
                       n_boot=0, progress=False)
    assert soft.attacks["ensemble"].note.endswith("over: ratio")  # SOFT's features stay SOFT's


# -- GradNorm -----------------------------------------------------------------------------------------------------

def direct_gradnorm(model, engine, text, p):
    """G by hand: Hugging Face's loss (the mean NLL of x_2..x_n), backward, the mean p-norm of every gradient."""
    ids, _, _ = engine.encode(text)
    model.zero_grad()
    x = torch.tensor([ids])
    model(input_ids=x, labels=x).loss.backward()
    norms = [t.grad.norm(p) for t in model.parameters() if t.grad is not None]
    model.zero_grad()
    return float(torch.stack(norms).double().mean())


@pytest.mark.parametrize("p", [1, 2, "inf"])
def test_gradnorm_by_hand(tuned, p):
    engine = ScoringEngine(tuned.target, cache=False, progress=False)
    texts = tuned.members[:2] + tuned.nonmembers[:2]
    ctx = SimpleNamespace(texts=texts, target=engine)
    out = ATTACKS.make("gradnorm", p=p).run(ctx)
    order = float("inf") if p == "inf" else p
    expected = [direct_gradnorm(tuned.target.model, engine, t, order) for t in texts]
    np.testing.assert_allclose(out.raw, expected, rtol=1e-5)
    np.testing.assert_array_equal(out.scores, -out.raw)  # members sit at a minimum: small G = member
    assert out.extra["cost"] == {"forward_passes": 4, "backward_passes": 4}
    assert len(out.extra["tensors"]) == len(list(tuned.target.model.parameters()))
    assert engine.forward_passes == 0  # its passes are its own, outside the engine
    assert all(t.grad is None for t in tuned.target.model.parameters())


@pytest.mark.parametrize("p, least", [(1, 0.65), ("inf", 0.55)])  # measured: 0.73 and 0.63 (loss: 0.90)
def test_gradnorm_members_score_higher(tuned, p, least):
    out = run_attacks(tuned.target, tuned.members, tuned.nonmembers, attacks="gradnorm", params={"gradnorm": {"p": p}},
                      n_boot=0, progress=False)
    assert out.attacks["gradnorm"].auc > least


def test_gradnorm_of_a_lora_target_uses_the_adapter_tensors(tmp_path):
    texts = sentences(6, seed=60, clauses=1)
    config = TrainConfig(method="lora", epochs=1, lr=1e-3, batch_size=3, max_length=32)
    finetune(tiny_model("gpt2"), texts, tmp_path / "lora", config, progress=False)
    target = load_model(tmp_path / "lora")
    names, what = chosen_tensors(target.model, "auto")
    assert names and all("lora_" in n for n in names) and "'default' adapter" in what
    flags = {n: t.requires_grad for n, t in target.model.named_parameters()}
    ctx = SimpleNamespace(texts=texts, target=ScoringEngine(target, cache=False, progress=False))
    out = ATTACKS.make("gradnorm").run(ctx)
    assert out.extra["tensors"] == names and "adapter's tensors" in out.note
    assert np.isfinite(out.scores).all()
    assert {n: t.requires_grad for n, t in target.model.named_parameters()} == flags  # restored
    every = ATTACKS.make("gradnorm", tensors="all").run(ctx)
    assert len(every.extra["tensors"]) > len(names)


# -- imports ------------------------------------------------------------------------------------------------------

def test_importing_the_attacks_imports_no_torch():
    code = ("import sys\nfrom tuneguard.attacks import ATTACKS\n"
            f"for name in {[*TOKEN_LEVEL, 'gradnorm', 'min-k++', 'recall', 'con-recall']!r}:\n"
            "    ATTACKS.get(name).help()\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out
