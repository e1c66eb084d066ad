"""The neighbourhood and SPV-MIA attacks through the attack interface: sign, shared neighbours, cut texts, params."""

from __future__ import annotations

import numpy as np
import pytest

from tuneguard.attacks import ATTACKS, run_attacks
from tuneguard.attacks.base import AttackContext
from tuneguard.errors import TuneguardError
from tuneguard.models import tiny_model
from tuneguard.neighbours.lm_fill import LMFillNeighbours
from tuneguard.scoring import ScoringEngine
from tuneguard.train import TrainConfig, finetune

# Unrelated everyday sentences: a member is memorised on its own, not through a template shared with non-members.
TEXTS = [
    "The old lighthouse keeper painted the railing green every spring before the storms arrived from the north sea",
    "Our bakery sells rye bread on Mondays and sourdough on Fridays, and the queue often reaches the corner shop",
    "A small comet passed close to Jupiter last winter and astronomers measured its tail with a borrowed telescope",
    "The committee voted to move the annual chess tournament from the library hall to the school gymnasium",
    "Farmers in the valley planted sunflowers after the wheat harvest failed because of the long summer drought",
    "She repaired the bicycle chain with a paperclip and rode twenty miles to deliver the letter before noon",
    "Researchers found that octopuses in warm water change colour faster than those living in colder currents",
    "The city council approved a new tram line that will connect the harbour with the university campus",
    "He learned to play the violin at forty and now performs with a folk band at weddings every weekend",
    "Heavy snow closed the mountain pass for three days, so the supply trucks waited in the village square",
    "The museum displays a Roman coin found by a child digging in her grandmother's vegetable garden",
    "Engineers tested the bridge by driving twelve loaded lorries across it at dawn while traffic was stopped",
]
MEMBERS, NONMEMBERS = TEXTS[:6], TEXTS[6:]
# The attacker's public pool for the self-prompt reference: same kind of text, disjoint from the evaluated texts.
POOL = [
    "The fishermen mended their nets on the pier while gulls circled above the boats waiting for scraps",
    "A new bookshop opened beside the station and offers free coffee to anyone who reads for an hour",
    "The orchestra rehearsed the symphony twice before the concert because the conductor had a fever",
    "Volunteers cleaned the river banks on Sunday and collected forty bags of plastic and old tyres",
]


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """A tiny GPT-2 fully fine-tuned from ``tiny-gpt2`` on MEMBERS until it has memorised them."""
    cfg = TrainConfig(method="full", epochs=10, lr=2e-2, batch_size=3, max_length=64)
    return finetune("tiny-gpt2", MEMBERS, tmp_path_factory.mktemp("overfit"), cfg, progress=False).model


def context(model, *, reference=None, max_length=None) -> AttackContext:
    engine = lambda m: ScoringEngine(m, max_length=max_length, progress=False)  # noqa: E731
    return AttackContext(texts=TEXTS, labels=np.array([1] * 6 + [0] * 6), target=engine(model),
                         reference=engine(reference) if reference is not None else None, progress=False)


def test_scores_have_the_member_sign_through_run_attacks(overfit, tmp_path):
    params = {"neighbourhood": {"n": 4},
              "spv-mia": {"prompts": POOL, "n_texts": 8, "prompt_tokens": 4, "total_tokens": 24,
                          "generation_batch_size": 4, "n_neighbours": 4, "out_dir": str(tmp_path / "spv")}}
    result = run_attacks(overfit, MEMBERS, NONMEMBERS, attacks=["loss", "neighbourhood", "spv-mia"], params=params,
                         n_boot=0, progress=False)
    for name in ("neighbourhood", "spv-mia"):
        assert result.attacks[name].auc > 0.8, name
        assert np.isfinite(result.attacks[name].scores).all()
    note = result.attacks["spv-mia"].note
    assert "reference: self-prompt" in note and "forward passes per record" in note
    # The same neighbours were scored by the target in both attacks: spv-mia's target passes were all cache hits.
    assert "(target 0," in note
    # Its cost breakdown reaches results.json: every stage timed, the passes counted.
    cost = result.attacks["spv-mia"].cost
    assert {"generate", "neighbour", "score"} <= set(cost["stage_seconds"])
    assert cost["records"] == len(result.attacks["spv-mia"].scores)


def test_spv_mia_reuses_the_neighbourhood_attacks_neighbours(overfit, monkeypatch):
    ctx = context(overfit)
    first = ATTACKS.make("neighbourhood", n=3).run(ctx)
    monkeypatch.setattr(LMFillNeighbours, "perturb_batch", lambda *a: pytest.fail("made neighbours again"))
    spv = ATTACKS.make("spv-mia", reference="none", n_neighbours=3).run(ctx)
    assert spv.extra["neighbours"].neighbours == first.extra["neighbours"].neighbours
    assert spv.extra["cost"]["forward_passes"] == {"target": 0, "reference": 0}
    # Without calibration SPV-MIA's log-prob form is the neighbourhood score.
    logprob = ATTACKS.make("spv-mia", reference="none", n_neighbours=3, form="logprob").run(ctx)
    assert np.allclose(logprob.scores, first.scores)


def test_spv_mia_scores_the_same_neighbours_on_both_models(overfit, monkeypatch):
    seen: dict[str, list[list[str]]] = {}
    real = ScoringEngine.ll

    def spy(self, texts, **kw):
        seen.setdefault(self.name, []).append(list(texts))
        return real(self, texts, **kw)

    monkeypatch.setattr(ScoringEngine, "ll", spy)
    reference = tiny_model("gpt2", seed=1)
    ctx = context(overfit, reference=reference)
    out = ATTACKS.make("spv-mia", reference="base", base="tiny-gpt2", n_neighbours=2).run(ctx)
    target_calls, reference_calls = seen[overfit.ref], seen["tiny-gpt2"]
    assert target_calls == reference_calls and len(target_calls[1]) == 2 * len(TEXTS)
    assert np.allclose(out.scores, -(out.extra["v_target"] - out.extra["v_reference"]))
    assert out.extra["cost"]["forward_passes"] == {"target": 3 * len(TEXTS), "reference": 3 * len(TEXTS)}


def test_texts_are_cut_to_the_scored_length_before_perturbing(overfit):
    ctx = context(overfit, max_length=12)
    out = ATTACKS.make("neighbourhood", n=2, generator="random-fill").run(ctx)
    tok = overfit.tokenizer
    assert all(len(tok(t)["input_ids"]) <= 12 for t in out.extra["neighbours"].texts)
    assert "texts cut to 12 tokens" in out.note
    assert np.isfinite(out.scores).all()


@pytest.mark.parametrize("attack, params, message", [
    ("neighbourhood", {"n": 0}, "parameter 'n' must be >= 1, got 0"),
    ("neighbourhood", {"generator": "t5"}, "T5 model"),
    ("neighbourhood", {"generator": "wordnet", "span_length": 3}, "no parameter 'span_length'"),
    ("neighbourhood", {"generator": "nope"}, "unknown neighbour generator 'nope'"),
    ("neighbourhood", {"generator": "random-fill", "model": "tiny-gpt2"}, "uses no model"),
    ("neighbourhood", {"k": 1}, "no parameter 'k'"),
    ("spv-mia", {"form": "log"}, "form"),
    ("spv-mia", {"reference": "other"}, "reference"),
    ("spv-mia", {"neighbours": "nope"}, "unknown neighbour generator"),
    ("spv-mia", {"neighbour_options": {"spans": 2}}, "no parameter 'spans'"),
    ("spv-mia", {}, "needs prompts"),  # the self-prompt reference needs the attacker's prompt pool
    ("spv-mia", {"reference": "data"}, "needs reference_data"),
    ("spv-mia", {"reference": "model"}, "needs reference_model"),
])
def test_params_are_validated_before_any_model_loads(attack, params, message):
    with pytest.raises(TuneguardError, match=message):
        run_attacks("/nonexistent/model", TEXTS[:3], TEXTS[3:6], attacks=[attack], params={attack: params})


def test_spv_mia_self_prompt_needs_a_prompt_pool(overfit):
    with pytest.raises(TuneguardError, match="prompts"):
        ATTACKS.make("spv-mia", n_neighbours=1).run(context(overfit))
