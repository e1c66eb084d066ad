"""Code that must know something of a plug-in reads what its class declares, never its name (issue 31): each test
registers a toy plug-in (or flips a built-in one's declaration) and fails if the declaration is ignored."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from tuneguard.attacks import ATTACKS
from tuneguard.attacks.base import Attack
from tuneguard.attacks.bag_of_words import BagOfWordsAttack
from tuneguard.attacks.result import AttackResult, MIAResult
from tuneguard.errors import TuneguardError
from tuneguard.metrics import evaluate
from tuneguard.regimes import REGIMES
from tuneguard.regimes.base import Regime
from tuneguard.train import METHODS, TrainConfig
from tuneguard.train.methods import LoRA, PrefixTuning, TrainMethod


def register(monkeypatch, registry, name: str, klass: type) -> None:
    """``klass`` registered as ``name`` for this test only (the registry forgets it afterwards)."""
    monkeypatch.setitem(registry._entries, name, f"{__name__}:{klass.__name__}")
    monkeypatch.setitem(registry._loaded, name, klass)


# -- attacks: blind -------------------------------------------------------------------------------------------------

class ToyBlindAttack(Attack):
    name = "toy-blind"
    summary = "a blind baseline under another name"
    blind = True


def scored(scores, labels) -> AttackResult:
    s, y = np.asarray(scores, dtype=float), np.asarray(labels)
    return AttackResult(scores=s, raw=s, raw_name="s", labels=y, params={}, metrics=evaluate(y, s, n_boot=0))


LABELS = [1] * 6 + [0] * 6
WEAK = scored([0.6, 0.4, 0.7, 0.2, 0.5, 0.3, 0.55, 0.45, 0.1, 0.65, 0.35, 0.25], LABELS)  # AUC about 0.6
PERFECT = scored([1.0] * 6 + [0.0] * 6, LABELS)  # tells every member apart: a split that is confounded


def mia(**attacks: AttackResult) -> MIAResult:
    return MIAResult(title="t", settings={}, attacks={n.replace("_", "-"): a for n, a in attacks.items()})


def test_an_attack_declaring_blind_is_kept_out_of_the_verdict_and_flags_the_split(monkeypatch):
    from tuneguard.report.verdict import confounding_warning, is_blind, mia_verdict, model_attacks

    register(monkeypatch, ATTACKS, "toy-blind", ToyBlindAttack)
    result = mia(loss=WEAK, toy_blind=PERFECT)
    assert is_blind("toy-blind") and not is_blind("loss")
    assert set(model_attacks(result)) == {"loss"}
    verdict = mia_verdict(result)
    assert verdict.best_auc.attack == "loss" and all(b.attack == "loss" for b in verdict.strongest)
    assert confounding_warning(result).startswith("The blind toy-blind baseline, which never queries the model")


def test_bag_of_words_is_blind_by_its_declaration_not_its_name(monkeypatch):
    from tuneguard.report.verdict import confounding_warning, model_attacks

    result = mia(loss=WEAK, bag_of_words=PERFECT)
    assert set(model_attacks(result)) == {"loss"} and confounding_warning(result)
    monkeypatch.setattr(BagOfWordsAttack, "blind", False)
    assert set(model_attacks(result)) == {"loss", "bag-of-words"} and confounding_warning(result) is None


def test_defend_compare_never_picks_an_attack_declaring_blind(monkeypatch):
    from tuneguard.defenses.compare import strongest
    from tuneguard.privacy_target import Target

    register(monkeypatch, ATTACKS, "toy-blind", ToyBlindAttack)
    cell = {"auc": {"ratio": 0.7, "toy-blind": 0.99}, "tpr_at_1pct": {"ratio": 0.2, "toy-blind": 0.9}}
    assert strongest(cell, Target("tpr", 0.05, 0.01))["attack"] == "ratio"


# -- regimes: reference_point and trains, as the run records them -----------------------------------------------------

class ToyReference(Regime):
    name = "toy-reference"
    summary = "a reference point under another name, trained on nothing"
    reference_point = True
    trains = False


def column(regime, kind, ppl, auc, **extra):
    return {"dataset": "A", "regime": regime, "kind": kind, "auc": {"loss": auc}, "average_auc": auc,
            "ppl_domain": ppl, "ppl_general": 20.0, "max_length": 32, "not_applicable": {}, "train_size": 8,
            **extra}


def summary_of(cells: dict, settings: dict) -> dict:
    return {"name": "t", "model": "tiny-gpt2", "regimes": list(cells), "cells": {"A": cells},
            "settings": {"regimes": settings}}


def setting(kind, **declared):
    return {"kind": kind, "options": {}, "train": {"method": "full"}, "knob": None, **declared}


def test_the_frontier_draws_the_columns_recorded_as_reference_points():
    from tuneguard.report.experiment import frontier_series

    cells = {"base": column("base", "toy-reference", 30.0, 0.5, train_size=0),
             "full": column("full", "full", 12.0, 0.9), "lora": column("lora", "lora", 14.0, 0.7)}
    settings = {"base": setting("toy-reference", reference_point=True, trains=False),
                "full": setting("full", reference_point=False, trains=True),
                "lora": setting("lora", reference_point=False, trains=True)}
    data = frontier_series(summary_of(cells, settings))["A"]
    assert [p["regime"] for p in data["references"]] == ["base"]  # the recorded flag, not the kind's name
    assert sorted(line["label"] for line in data["lines"]) == ["full", "lora"]
    # A results file saved before the flag was recorded: pretrained and full fine-tuning are the reference points.
    for s in settings.values():
        del s["reference_point"], s["trains"]
    cells["base"]["kind"] = settings["base"]["kind"] = "pretrained"
    data = frontier_series(summary_of(cells, settings))["A"]
    assert [p["regime"] for p in data["references"]] == ["base", "full"]


def test_the_table_reads_whether_a_column_trains_from_its_recorded_declaration():
    from tuneguard.report.experiment import experiment_table
    from tuneguard.report.table import DASH

    soft = {"train_size": 8, "paraphrased": 3, "on_failure": "original", "recipe": {}, "never_trained_share": 0.0}
    cells = {"base": column("base", "toy-reference", 30.0, 0.5, train_size=5),
             "soft": column("soft", "soft", 16.0, 0.55, soft=soft, retained={"all": {"share": 0.5, "chance": 0.4}})}
    settings = {"base": setting("toy-reference", reference_point=True, trains=False),
                "soft": setting("soft", reference_point=False, trains=True)}
    rows = {line.split("  ")[0].strip(): line.split() for line in experiment_table(summary_of(cells, settings))
            .splitlines()}
    assert rows["texts trained on"][3] == "0"  # declared trains = False: no text, whatever train_size says
    assert rows["retained-token share (chance)"][3] == DASH and rows["member tokens never trained on"][5] == DASH


def test_the_run_records_each_regimes_declarations(tmp_path, monkeypatch):
    from tuneguard.experiment import load_experiment, settings_of
    from tuneguard.report.experiment import frontier_series

    register(monkeypatch, REGIMES, "toy-reference", ToyReference)
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": f"record {i}"}) for i in range(8)))
    (tmp_path / "exp.toml").write_text('name = "t"\nmodel = "tiny-gpt2"\nout = "out"\nattacks = ["loss"]\n'
                                       '[[datasets]]\nname = "A"\npath = "a.jsonl"\nmembers = 2\nnonmembers = 2\n'
                                       '[regimes]\nbase = { kind = "toy-reference" }\nfull = {}\n')
    settings = settings_of(load_experiment(tmp_path / "exp.toml"))
    assert settings["regimes"]["base"]["reference_point"] is True and settings["regimes"]["base"]["trains"] is False
    assert settings["regimes"]["full"]["reference_point"] is True and settings["regimes"]["full"]["trains"] is True
    cells = {"base": column("base", "toy-reference", 30.0, 0.5), "full": column("full", "full", 12.0, 0.9)}
    data = frontier_series({"regimes": ["base", "full"], "cells": {"A": cells}, "settings": settings})["A"]
    assert [p["regime"] for p in data["references"]] == ["base", "full"]


# -- regimes: what defend compare reads -----------------------------------------------------------------------------

class Plain(Regime):
    name = "toy-plain"
    summary = "trains plainly"


class PerSample(Plain):
    per_sample_gradients = True


class WithCommand(Plain):
    command = "tuneguard toy"

    def command_options(self):
        return {"level": 3}, ["--extra x"]


def test_defend_compare_costs_and_commands_come_from_the_regimes_declarations():
    from tuneguard.defenses.compare import DP_COST, _regime_options, column_seconds
    from tuneguard.experiment import Column

    train = TrainConfig(epochs=2)
    tokens = {"members": 100, "nonmembers": 50, "general": 50}
    forward = sum(tokens.values()) / 10.0
    plain = column_seconds(Column("a", "lora", Plain(), train), tokens, 10, 10.0) - forward
    clipped = column_seconds(Column("b", "lora", PerSample(), train), tokens, 10, 10.0) - forward
    assert clipped == pytest.approx(DP_COST * plain)  # the name "lora" is not what decides
    assert _regime_options(Column("c", "full", WithCommand(), train)) == ("tuneguard toy", {"level": 3},
                                                                          ["--extra x"])
    with pytest.raises(TuneguardError, match="no final command for regime 'full'"):
        _regime_options(Column("d", "full", Plain(), train))


def test_the_built_in_regimes_declare_what_they_declared_by_name_before():
    references = {n for n in REGIMES if REGIMES.get(n).reference_point}
    assert references == {"pretrained", "full"}
    assert [n for n in REGIMES if REGIMES.get(n).per_sample_gradients] == ["dp"]
    assert [n for n in REGIMES if REGIMES.get(n).paraphrases] == ["soft"]
    assert {n: REGIMES.get(n).command for n in REGIMES} == {
        "pretrained": None, "full": "tuneguard finetune", "lora": "tuneguard finetune", "soft": "tuneguard defend soft",
        "dp": "tuneguard defend dp", "goldfish": "tuneguard defend goldfish"}


# -- training methods: mergeable, peft_type -------------------------------------------------------------------------

class Sentinel(Exception):
    pass


class FakePeftModel:
    peft_config = {"default": None}

    def merge_and_unload(self):
        raise Sentinel


def test_the_soft_warm_start_merges_exactly_the_methods_declared_mergeable(monkeypatch, tmp_path):
    from tuneguard.defenses.soft import _warm_start

    warm = SimpleNamespace(model=FakePeftModel())
    monkeypatch.setattr(LoRA, "mergeable", False)
    with pytest.raises(TuneguardError, match="training method 'lora' cannot be merged"):
        _warm_start(warm, tmp_path, TrainConfig(method="lora"))
    monkeypatch.setattr(PrefixTuning, "mergeable", True)
    with pytest.raises(Sentinel):  # declared mergeable: merged, whatever its name
        _warm_start(warm, tmp_path, TrainConfig(method="prefix"))


class ToyMethod(TrainMethod):
    name = "toy-method"
    summary = "a peft method under another name"
    peft_type = "TOY_PEFT"

    @classmethod
    def train_options(cls, adapter_config):
        return {"num_virtual_tokens": adapter_config["tokens"]}


def adapter_target(tmp_path, config: dict):
    from tuneguard.models import LoadedModel

    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    return LoadedModel(None, None, ref=str(tmp_path))


def test_spv_reads_an_adapters_method_from_the_declared_peft_types(monkeypatch, tmp_path):
    from tuneguard.attacks.spv.reference import target_setup

    register(monkeypatch, METHODS, "toy-method", ToyMethod)
    assert target_setup(adapter_target(tmp_path, {"peft_type": "toy_peft", "tokens": 7})) == {
        "method": "toy-method", "num_virtual_tokens": 7}
    assert target_setup(adapter_target(tmp_path, {"peft_type": "LORA", "r": 4, "lora_alpha": 16,
                                                  "target_modules": ["q", "c"]})) == {
        "method": "lora", "lora_r": 4, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["c", "q"],
        "lora_layers": None}
    assert target_setup(adapter_target(tmp_path, {"peft_type": "LORA", "layers_to_transform": 3}))["lora_layers"] == [3]
    assert target_setup(adapter_target(tmp_path, {"peft_type": "PREFIX_TUNING"})) == {
        "method": "prefix", "num_virtual_tokens": 20}
    with pytest.raises(TuneguardError, match="method LOHA has no tuneguard trainer"):
        target_setup(adapter_target(tmp_path, {"peft_type": "LOHA"}))


# -- SPV-MIA's reference kinds: one declaration ---------------------------------------------------------------------

def test_spv_reference_kinds_are_declared_once(monkeypatch):
    from tuneguard.attacks.spv import pipeline
    from tuneguard.attacks.spv.pipeline import REFERENCES, SPVConfig, build_reference, reference_texts

    reference = next(f for f in SPVConfig.describe() if f.name == "reference")
    assert reference.allowed == "one of " + ", ".join(REFERENCES)
    for name, kind in REFERENCES.items():
        if kind.needs:
            with pytest.raises(TuneguardError, match=f"reference={name} needs {kind.needs}: "):
                build_reference(SimpleNamespace(ref="t"), SPVConfig(reference=name))
    assert reference_texts(SPVConfig(reference="data", reference_data=["a text"])) == ("reference data", ["a text"])
    assert reference_texts(SPVConfig(reference="base", prompts=["a prompt"])) is None
    # A kind's declared needs are what is checked.
    monkeypatch.setitem(REFERENCES, "none", pipeline.Reference("no calibration", "base", "--param spv-mia.base=M"))
    with pytest.raises(TuneguardError, match="reference=none needs base"):
        build_reference(SimpleNamespace(ref="t"), SPVConfig(reference="none"))


def test_the_spv_attack_reads_the_pipelines_reference_kinds(tmp_path):
    # The messages the attack gave from its own table before it read the pipeline's, word for word.
    for reference, message in (
            ("self-prompt", "spv-mia reference=self-prompt needs prompts: the attacker's public prompt pool from the "
                            "target's domain, disjoint from the evaluated texts: --param spv-mia.prompts=FILE"),
            ("data", "spv-mia reference=data needs reference_data: --param spv-mia.reference_data=FILE"),
            ("model", "spv-mia reference=model needs reference_model: --param spv-mia.reference_model=MODEL")):
        with pytest.raises(TuneguardError) as caught:
            ATTACKS.make("spv-mia", reference=reference).check_needs(["spv-mia"])
        assert str(caught.value) == message
    for reference in ("base", "none"):
        attack = ATTACKS.make("spv-mia", reference=reference, prompts=["a prompt"])
        attack.check_needs(["spv-mia"])
        assert attack.attacker_texts() == []  # a prompt pool the reference does not read is not the attacker's data
    pool = tmp_path / "pool.txt"
    pool.write_text("first prompt\nsecond prompt\n")
    assert ATTACKS.make("spv-mia", prompts=str(pool)).attacker_texts() == [
        ("the spv-mia prompt pool (pool.txt)", ["first prompt", "second prompt"])]
    assert ATTACKS.make("spv-mia", reference="data", reference_data=["a text"]).attacker_texts() == [
        ("the spv-mia reference data", ["a text"])]


# -- DP-SGD's settings: one declaration -----------------------------------------------------------------------------

def test_the_dp_regime_takes_dp_sgds_own_declarations():
    import dataclasses

    from tuneguard.defenses.dp_sgd import DPConfig, dp_config_of, dp_setting
    from tuneguard.dpaudit.audit import DPAuditParams
    from tuneguard.params import Params
    from tuneguard.regimes.dp import DPOptions

    config = {i.name: i for i in DPConfig.describe()}
    options = {i.name: i for i in DPOptions.describe()}
    for option, field in (("epsilon", "target_epsilon"), ("delta", "delta"), ("max_grad_norm", "max_grad_norm")):
        assert dataclasses.replace(options[option], name=field) == config[field]
    assert next(i for i in DPAuditParams.describe() if i.name == "max_grad_norm") == config["max_grad_norm"]
    dp = DPOptions.create("regime 'dp'", {"epsilon": 4.0, "delta": 1e-3, "max_grad_norm": 0.5}).dp_config()
    assert dp == DPConfig(target_epsilon=4.0, delta=1e-3, max_grad_norm=0.5)
    with pytest.raises(TuneguardError, match="regime 'dp': parameter 'epsilon' must be > 0"):
        DPOptions.create("regime 'dp'", {"epsilon": 0})

    @dataclasses.dataclass
    class Partial(Params):  # options that forgot a DPConfig setting would silently keep its default
        epsilon: float = dp_setting("target_epsilon")

    with pytest.raises(TypeError, match="delta, max_grad_norm"):
        dp_config_of(Partial())
