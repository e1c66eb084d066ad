"""The contract every plug-in of every registry keeps (scikit-learn's ``parametrize_with_checks`` in spirit): a name
and kind that match its registration, a summary, declared parameters with help that validate with the one shared
wording (a bad value refused by the constructor before any work), and, per kind, an output of the right shape that
is deterministic, cached where the kind caches, and points the documented way.

A new plug-in that needs a model gets a tiny one in this file's ``*_OPTIONS`` (the test says so when it is missing);
entries that need something absent here (WordNet) are skipped, saying why.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from functools import cache

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from helpers import NEIGHBOUR_TEXTS, BagEmbedder, FakeChat, ReverseParaphraser, sentences, spy, tiny_t5
from tuneguard import wordnet
from tuneguard.adapters.adapter_files import read_adapter
from tuneguard.adapters.detectors import DETECTORS
from tuneguard.adapters.synthetic import write_synthetic_adapter
from tuneguard.attacks import ATTACKS, run_attacks
from tuneguard.attacks.shadows import ShadowSpec
from tuneguard.errors import TuneguardError
from tuneguard.models import LoadedModel, load_model, tiny_model
from tuneguard.neighbours import NEIGHBOURS
from tuneguard.paraphrase import PARAPHRASERS
from tuneguard.paraphrase.base import attempt_seed
from tuneguard.params import Params
from tuneguard.plugin import Plugin
from tuneguard.regimes import REGIMES
from tuneguard.scoring import ScoringEngine
from tuneguard.seed import set_seed
from tuneguard.train import METHODS, TrainConfig, finetune

REGISTRIES = [ATTACKS, NEIGHBOURS, PARAPHRASERS, DETECTORS, REGIMES, METHODS]
ENTRIES = [pytest.param(reg, name, id=f"{reg.kind}:{name}") for reg in REGISTRIES for name in reg]


@pytest.mark.parametrize("registry, name", ENTRIES)
def test_every_plugin_declares_itself(registry, name):
    klass = registry.get(name)
    assert issubclass(klass, Plugin) and issubclass(klass, registry.base)
    assert klass.name == name and klass.kind == registry.kind and klass.summary.strip()
    assert klass.help().startswith(f"{name}: {klass.summary}")
    assert dataclasses.is_dataclass(klass.Params) and issubclass(klass.Params, Params)
    for info in klass.Params.describe():
        assert info.help, f"{klass.label()}: parameter {info.name!r} has no help"


@pytest.mark.parametrize("registry, name", ENTRIES)
def test_parameters_validate_with_one_wording(registry, name):
    klass = registry.get(name)
    with pytest.raises(TuneguardError) as err:
        klass.Params.create(klass.label(), {"no_such_option": 1})
    assert str(err.value).startswith(f"{registry.kind} '{name}' has no parameter 'no_such_option' (parameters: ")
    required = [f.name for f in dataclasses.fields(klass.Params)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if not required:  # the defaults are valid and survive their own JSON form
        defaults = klass.Params.create(klass.label())
        assert klass.Params.create(klass.label(), defaults.to_dict()) == defaults


def bad_values(klass: type[Plugin]) -> list[tuple[str, object]]:
    """(parameter, a value its declared choices or bounds refuse) for each declared parameter that has either."""
    hints = typing.get_type_hints(klass.Params)
    out = []
    for field in dataclasses.fields(klass.Params):
        meta = field.metadata
        if meta.get("choices") is not None:
            if not all(isinstance(c, str) for c in meta["choices"]):
                continue
            bad: object = "no-such-choice"
        elif meta.get("gt") is not None:
            bad = meta["gt"]
        elif meta.get("ge") is not None:
            bad = meta["ge"] - 1
        elif meta.get("lt") is not None:
            bad = meta["lt"]
        elif meta.get("le") is not None:
            bad = meta["le"] + 1
        else:
            continue
        hint = hints[field.name]
        arms = [a for a in typing.get_args(hint) if a is not type(None)] \
            if typing.get_origin(hint) in (typing.Union, types.UnionType) else [hint]
        if not any(a in (int, float, str) for a in arms):  # a list of values: one bad item
            bad = [bad]
        out.append((field.name, bad))
    return out


BOUNDED = [pytest.param(reg, name, id=f"{reg.kind}:{name}") for reg in REGISTRIES for name in reg
           if bad_values(reg.get(name))]


@pytest.mark.parametrize("registry, name", BOUNDED)
def test_a_bad_value_is_refused_with_one_wording_before_any_work(registry, name):
    klass = registry.get(name)
    allowed = {info.name: info.allowed for info in klass.Params.describe()}
    # A detector that reads a base model is given one that does not exist: the parameters are checked first.
    args = ("no-such-model",) if getattr(klass, "needs_base", False) else ()
    for param, bad in bad_values(klass):
        message = f"{registry.kind} '{name}': parameter '{param}' must be {allowed[param]}, got {bad!r}"
        with pytest.raises(TuneguardError) as err:
            klass.Params.create(klass.label(), {param: bad})
        assert str(err.value) == message
        # The constructor refuses it too, before it loads or checks anything else (a model it needs, WordNet).
        with pytest.raises(TuneguardError) as err:
            klass(*args, **{param: bad})
        assert str(err.value) == message


# -- attacks: shape, determinism, orientation on a model over-fitted on its members ------------------------------

# Attacks whose members-score-higher orientation the over-fitted toy shows (see test_attacks for the measured AUCs;
# ReCall, CON-ReCall and DC-PDD do not separate on a 2-layer model and are checked for shape only).
ORIENTED = {"loss", "zlib", "lowercase", "min-k", "min-k++", "ratio", "ensemble"}
SLOW = {"neighbourhood", "spv-mia"}  # generate texts with a second model: covered by their own tests


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    texts = sentences(40, seed=3, clauses=2)
    members, nonmembers, corpus = texts[:14], texts[14:28], texts[28:]
    base = tiny_model("gpt2")
    config = TrainConfig(method="full", lr=3e-3, epochs=15, batch_size=4, max_length=48)
    target = finetune(base, members, tmp_path_factory.mktemp("overfit"), config, progress=False).model
    return base, target, members, nonmembers, corpus


def _suite(overfit, cache):
    base, target, members, nonmembers, corpus = overfit
    names = [n for n in ATTACKS if n not in SLOW]
    # The corpus is disjoint from the evaluated texts: it is also the population two shadow models train on.
    return run_attacks(target, members, nonmembers, attacks=names, reference=base, corpus=corpus, n_shots=2,
                       n_boot=0, cache=cache, progress=False, shadows=ShadowSpec(corpus, k=2))


def test_every_attack_keeps_the_contract(overfit, monkeypatch):
    first = _suite(overfit, cache=True)  # computes every score and writes the score cache
    # The second run must read every score back: a forward pass or a write to the cache is a recomputation.
    passes = spy(monkeypatch, ScoringEngine, "_forward")
    contexts = spy(monkeypatch, ScoringEngine, "_context_cache")
    stores = spy(monkeypatch, ScoringEngine, "_store")
    again = _suite(overfit, cache=True)
    assert not passes and not contexts and not stores, "the second run recomputed scores instead of reading them"
    computed = first.cost["forward_passes"]
    assert "score_cache" not in first.settings and min(computed.values()) > 0
    assert again.cost["forward_passes"] == dict.fromkeys(computed, 0)
    assert again.settings["score_cache"] == {k: {"from_cache": n, "computed": 0} for k, n in computed.items()}
    fresh = _suite(overfit, cache=False)  # computes every score again, reading nothing
    assert passes and fresh.cost["forward_passes"] == computed and "score_cache" not in fresh.settings

    assert set(first.attacks) == {n for n in ATTACKS if n not in SLOW}
    for name, result in first.attacks.items():
        n = len(result.labels)
        assert result.scores.shape == result.raw.shape == (n,) and result.raw_name, name
        assert np.isfinite(result.scores).any(), name
        # Same inputs, same numbers: read from the score cache, or computed afresh (bit for bit on the CPU).
        np.testing.assert_array_equal(result.scores, again.attacks[name].scores, err_msg=name)
        np.testing.assert_array_equal(result.scores, fresh.attacks[name].scores, err_msg=name)
        assert result.params == ATTACKS.get(name).Params.create(name).to_dict(), name
        if name in ORIENTED:
            finite = np.isfinite(result.scores)
            assert roc_auc_score(result.labels[finite], result.scores[finite]) > 0.6, name


# -- detectors: every statistic they declare, from a real adapter file ----------------------------------------------

@pytest.mark.parametrize("name", [n for n in DETECTORS if not DETECTORS.get(n).needs_base])
def test_every_weight_only_detector_reports_its_statistics(name, tmp_path):
    adapter = read_adapter(write_synthetic_adapter(tmp_path / "a", r=4, layers=2))
    detector = DETECTORS.make(name)
    first, again = detector.score(adapter), detector.score(adapter)
    klass = DETECTORS.get(name)
    assert klass.default_statistic in klass.statistics
    assert set(klass.statistics) <= set(first.statistics)
    assert first.statistics == again.statistics


# -- what a model-backed plug-in is given here, and what cannot run here ----------------------------------------------

def needs_wordnet() -> None:
    if not wordnet.wordnet_available():
        pytest.skip("WordNet is not installed (apt-get install wordnet-base wordnet-sense-index): the wordnet "
                    "plug-ins read it")


@cache
def _t5():
    return tiny_t5(NEIGHBOUR_TEXTS)


# Options that make each plug-in run offline and fast (tiny models built in code).
NEIGHBOUR_OPTIONS = {
    "t5": lambda: {"model": _t5(), "max_new_tokens": 24, "max_tries": 2},
    "lm-fill": lambda: {"model": tiny_model("gpt2"), "max_span_tokens": 4},
    "wordnet": lambda: needs_wordnet() or {},
}


def neighbour_generator(name: str, **params):
    klass = NEIGHBOURS.get(name)
    if klass.takes_model() and name not in NEIGHBOUR_OPTIONS:
        pytest.fail(f"{klass.label()} takes a model: give it a tiny one in NEIGHBOUR_OPTIONS")
    return NEIGHBOURS.make(name, progress=False, **NEIGHBOUR_OPTIONS.get(name, dict)(), **params)


# -- neighbour generators: shape, seeds, the disk cache ---------------------------------------------------------------

@pytest.mark.parametrize("name", NEIGHBOURS.names())
def test_every_neighbour_generator_keeps_the_contract(name, monkeypatch):
    texts, n = NEIGHBOUR_TEXTS, 2
    first = neighbour_generator(name, seed=0, cache=False).generate(texts, n)
    # One row of n per text, in order; a neighbour differs from its text, and every missing one is a failure.
    assert first.texts == texts and first.generator == name and len(first.neighbours) == len(texts)
    assert all(len(row) == n for row in first.neighbours)
    for text, row in zip(texts, first.neighbours):
        assert all(x is None or (isinstance(x, str) and x and x != text) for x in row)
    missing = [(i, j) for i, row in enumerate(first.neighbours) for j, x in enumerate(row) if x is None]
    assert first.failures == missing
    # Same seed, same neighbours (a fresh generator); another seed, other neighbours.
    again = neighbour_generator(name, seed=0, cache=False).generate(texts, n)
    assert (again.neighbours, again.failures) == (first.neighbours, first.failures)
    if name != "t5":  # a random T5 fills few spans (see test_neighbours_t5): only the others must produce
        assert not first.failures
        assert neighbour_generator(name, seed=1, cache=False).generate(texts, n).neighbours != first.neighbours
    # The cache changes nothing, and a second generator with the same settings reads it: no neighbour is redone.
    writer = neighbour_generator(name, seed=0)
    assert writer.generate(texts, n).neighbours == first.neighbours
    reader = neighbour_generator(name, seed=0)
    calls = spy(monkeypatch, type(reader), "perturb_batch")
    assert reader.generate(texts, n).neighbours == first.neighbours and not calls
    assert isinstance(reader.settings(), dict) and reader.cache_path() == writer.cache_path()
    assert neighbour_generator(name, seed=1).cache_path() != writer.cache_path()


# -- paraphrasers: shape, seeds, the disk cache ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def chat_server():
    """The ``openai`` paraphraser's endpoint: a fake chat server on 127.0.0.1 (never the internet)."""
    with FakeChat() as server:
        yield server


PARAPHRASER_OPTIONS = {
    "local": lambda server: {"model": tiny_model("gpt2"), "max_new_tokens": 8},
    "openai": lambda server: {"base_url": server.url, "model": "fake-model", "backoff": 0.01},
    "wordnet": lambda server: needs_wordnet() or {},
}
PARAPHRASED = ["The committee approved the new budget after a long debate about school funding.",
               "Rivers carry small stones from the mountains to the distant sea every spring."]


@pytest.mark.parametrize("name", PARAPHRASERS.names())
def test_every_paraphraser_keeps_the_contract(name, chat_server, monkeypatch):
    klass = PARAPHRASERS.get(name)
    if any(f.name == "model" for f in dataclasses.fields(klass.Params)) and name not in PARAPHRASER_OPTIONS:
        pytest.fail(f"{klass.label()} takes a model: give it a tiny one in PARAPHRASER_OPTIONS")
    options = PARAPHRASER_OPTIONS.get(name, lambda server: {})(chat_server)

    def make(**params):
        return PARAPHRASERS.make(name, progress=False, **options, **params)

    first = make(seed=0, cache=False).paraphrase(PARAPHRASED)
    # One answer per text, in order: a non-empty stripped text, or None where nothing came out (not all None).
    assert len(first) == len(PARAPHRASED) and any(first)
    assert all(p is None or (isinstance(p, str) and p and p == p.strip()) for p in first)
    # Same seed, same paraphrases; attempt k of a text is drawn with the seed of (seed, text, k), whatever the batch.
    fresh = make(seed=0, cache=False, batch_size=1)
    seeds = spy(monkeypatch, type(fresh), "rewrite_batch")
    assert fresh.paraphrase(PARAPHRASED) == first
    fresh.paraphrase(PARAPHRASED, attempt=1)
    assert [s for call in seeds for s in call[3]] == [attempt_seed(0, t, k) for k in (0, 1) for t in PARAPHRASED]
    # The cache changes nothing, and a second paraphraser with the same settings reads it; another attempt is new.
    writer = make(seed=0)
    assert writer.paraphrase(PARAPHRASED) == first
    reader = make(seed=0)
    seeds.clear()
    assert reader.paraphrase(PARAPHRASED) == first and not seeds
    reader.paraphrase(PARAPHRASED, attempt=1)
    assert len(seeds) == 1
    assert isinstance(reader.settings(), dict) and reader.identity() == writer.identity() != make(seed=1).identity()


# -- experiment regimes: the target a column trains, reused when built again -----------------------------------------

# SOFT with the word-order-reversing paraphraser and a bag-of-words gate: no paraphrasing model to load.
REGIME_OPTIONS = {"soft": lambda: {"paraphraser": ReverseParaphraser(), "embedder": BagEmbedder(), "ratio": 0.5}}
REGIME_TRAIN = TrainConfig(method="lora", epochs=1, batch_size=4, max_length=24, lr=1e-3)


def weights(model: LoadedModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.model.state_dict().items()}


@pytest.mark.parametrize("name", REGIMES.names())
def test_every_regime_keeps_the_contract(name, tmp_path, monkeypatch):
    klass = REGIMES.get(name)
    options = REGIME_OPTIONS.get(name, dict)()
    regime = REGIMES.make(name, **options)
    # The TOML options: every declared parameter, and one column at least, each named.
    assert {p.name for p in klass.Params.describe()} <= set(klass.option_names())
    columns = klass.columns(name, {})
    assert columns and all(isinstance(c, str) and c and isinstance(o, dict) for c, o in columns)
    train = regime.train_config(REGIME_TRAIN)
    assert isinstance(train, TrainConfig) and train == regime.train_config(REGIME_TRAIN)

    base, members = tiny_model("gpt2"), sentences(8, seed=7, clauses=1)
    steps = spy(monkeypatch, torch.autograd, "backward")  # every training step, fine-tuning or DP-SGD
    model, facts = regime.build(base, members, tmp_path / "a", train, progress=False)
    assert isinstance(model, LoadedModel) and isinstance(facts["train_size"], int)
    if klass.trains:
        assert steps and 0 < facts["train_size"] <= len(members)
    else:
        assert not steps and facts["train_size"] == 0 and model is base
        return
    # Built again in the same directory, the column is reused: nothing trains, the same model comes back.
    steps.clear()
    again, again_facts = regime.build(base, members, tmp_path / "a", train, progress=False)
    assert not steps and again_facts == facts
    built = weights(model)
    assert all(torch.equal(built[k], v) for k, v in weights(again).items())
    # Same seed, same target (bit for bit on the CPU), built elsewhere from scratch.
    other, _ = REGIMES.make(name, **REGIME_OPTIONS.get(name, dict)()).build(base, members, tmp_path / "b", train,
                                                                            progress=False)
    assert all(torch.equal(built[k], v) for k, v in weights(other).items())


# -- training methods: what trains, what is saved, what loads back ----------------------------------------------------

@pytest.mark.parametrize("name", METHODS.names())
def test_every_training_method_keeps_the_contract(name, tmp_path):
    klass = METHODS.get(name)
    method = METHODS.make(name)
    config = TrainConfig(method=name, epochs=1, batch_size=4, max_length=24, lr=1e-2, lora_dropout=0.0)
    method.check_extra(config)
    with pytest.raises(TuneguardError) as err:
        method.check_extra(config.replace(extra={"no_such_option": 1}))
    assert str(err.value).startswith(f"training method '{name}' has no peft option 'no_such_option' (peft options: ")

    base = tiny_model("llama")
    prepared = []
    for _ in range(2):  # same seed, same initial trainable weights
        set_seed(0)
        prepared.append(method.prepare(copy.deepcopy(base.model), config))
    net = prepared[0]
    trainable = {k: p for k, p in net.named_parameters() if p.requires_grad}
    assert trainable
    assert all(torch.equal(p, dict(prepared[1].named_parameters())[k]) for k, p in trainable.items())
    total = sum(1 for _ in net.parameters())
    assert len(trainable) < total if klass.saves_adapter else len(trainable) == total
    # One step: a finite loss, gradients on the trainable weights only.
    batch = base.tokenizer(sentences(4, seed=1, clauses=1), return_tensors="pt", padding=True)
    loss = net(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)).loss
    loss.backward()
    assert math.isfinite(loss.item())
    assert all((p.grad is not None) == p.requires_grad for p in net.parameters())

    # What finetune saves with this method loads back as the model it trained.
    run = finetune("tiny-llama", sentences(8, seed=2, clauses=1), tmp_path / "run", config.replace(max_steps=2),
                   progress=False)
    saved = {p.name for p in (tmp_path / "run").iterdir()}
    assert ("adapter_config.json" in saved) == klass.saves_adapter and run.record.method == name
    ids = torch.tensor([base.tokenizer("The small cat sees the river.")["input_ids"]])
    with torch.no_grad():
        trained = run.model.model(input_ids=ids).logits
        assert torch.allclose(load_model(tmp_path / "run").model(input_ids=ids).logits, trained, atol=1e-5)
        if klass.saves_adapter and klass.mergeable:  # merging the adapter into the base changes no output
            merged = copy.deepcopy(run.model.model).merge_and_unload()
            assert torch.allclose(merged(input_ids=ids).logits, trained, atol=1e-4)
