"""Named attack suites (``--attacks fast|all|soft-table``): what each holds, ``fast`` derived from the attacks'
declared passes, its fallback without a reference model, and the report's cost (passes spent, what the attacks of
``all`` not run would add)."""

from __future__ import annotations

import json
import sys
import types

import pytest

from tuneguard import cli
from tuneguard.attacks import ATTACKS, SUITES, make_attacks, resolve_attacks, resolve_suite, run_attacks
from tuneguard.attacks.base import REFERENCE_TEXTS, TARGET_TEXTS, Attack, AttackOutput, Pass
from tuneguard.commands.attack import print_report
from tuneguard.errors import TuneguardError
from tuneguard.models import tiny_model
from tuneguard.report import write_mia_report
from tuneguard.report.mia import cost_text, verdict_text
from helpers import sentences

# `all` before the named suites existed (tuneguard.attacks.DEFAULT_ATTACKS): it must keep this meaning, and since
# issue 29 it also reports the extended ensemble as a row of its own.
ALL_BEFORE = ["loss", "zlib", "lowercase", "min-k", "min-k++", "ratio", "ez-mia", "wbc", "ht-mia", "recall",
              "con-recall", "bag-of-words", "ensemble"]
ALL = [*ALL_BEFORE, "ensemble-extended"]
FAST = ["loss", "zlib", "min-k", "min-k++", "ratio", "ez-mia", "wbc", "ht-mia", "bag-of-words", "ensemble"]
REFERENCE_ATTACKS = {"ratio", "ez-mia", "wbc", "ht-mia"}
MEMBERS, NONMEMBERS = sentences(8, seed=21, clauses=1), sentences(8, seed=22, clauses=1)


@pytest.fixture(scope="module")
def models():
    """A target with no base model recorded, and a reference with its tokenizer (another seeded init)."""
    return tiny_model("gpt2"), tiny_model("gpt2", seed=1)


def test_all_keeps_its_meaning_and_soft_table_is_softs_ten():
    assert resolve_attacks("all") == ALL
    assert resolve_attacks("soft-table") == ["loss", "zlib", "lowercase", "min-k", "min-k++", "ratio", "recall",
                                             "con-recall", "bag-of-words", "ensemble"]
    assert resolve_suite("all").params == {} and resolve_suite("soft-table").params == {}


def test_fast_is_every_attack_reading_only_the_shared_passes():
    suite = resolve_suite("fast")
    assert suite.names == FAST and suite.left_out == {}
    assert suite.params == {"ensemble": {"features": "extended"}}
    # Derived, not listed: the attacks whose declared passes are the target's and the reference's of each text
    # (dc-pdd reads no other pass but needs a corpus only the user can bring).
    shared = [n for n in ATTACKS if ATTACKS.make(n).reads_shared_passes_only()]
    # (ensemble-extended is fast's own ensemble, features=extended, under the name `all` reports it by.)
    assert [n for n in shared if n not in ("dc-pdd", "ensemble-extended")] == FAST
    # Every other attack of `all` not in `fast` declares a pass beyond the shared ones.
    for name in set(ALL) - set(FAST) - {"ensemble-extended"}:
        assert set(ATTACKS.make(name).passes(10)) - {TARGET_TEXTS, REFERENCE_TEXTS}, name


def test_the_fast_ensemble_is_the_extended_one_unless_the_user_says_otherwise():
    assert make_attacks("fast")["ensemble"].params.features == "extended"
    assert make_attacks("all")["ensemble"].params.features == "soft"
    chosen = make_attacks("fast", {"ensemble": {"features": "soft"}})
    assert chosen["ensemble"].params.features == "soft"
    assert "threat model: the attacker holds labelled members and non-members" in ATTACKS.get("ensemble").summary


def _register(monkeypatch, klass: type[Attack]) -> None:
    """Register ``klass`` before the ensemble, as one more ``ATTACKS.register`` line would."""
    module = types.ModuleType("suite_toy_module")
    setattr(module, klass.__name__, klass)
    monkeypatch.setitem(sys.modules, "suite_toy_module", module)
    entries = list(ATTACKS._entries.items())
    at = [name for name, _ in entries].index("ensemble")
    monkeypatch.setattr(ATTACKS, "_entries", dict([*entries[:at], (klass.name, f"suite_toy_module:{klass.__name__}"),
                                                   *entries[at:]]))


def test_a_new_two_pass_attack_joins_fast_by_its_declaration(monkeypatch):
    class TwoPass(Attack):
        name = "toy-two-pass"
        summary = "LL_target(x) + LL_ref(x)"
        needs = frozenset({"reference"})

        def run(self, ctx):
            ll = ctx.target_ll() + ctx.reference.ll(ctx.texts)
            return AttackOutput(scores=ll, raw=ll, raw_name="sum")

    _register(monkeypatch, TwoPass)
    assert resolve_attacks("fast") == [*FAST[:-1], "toy-two-pass", "ensemble"]
    assert resolve_attacks("all") == ALL  # `all` is a fixed list
    # Without a reference it is left out with the others that need one.
    assert set(resolve_suite("fast", reference=False).left_out) == REFERENCE_ATTACKS | {"toy-two-pass"}
    # The leak monitor's checks may run it too: they take fast's attacks but those fit on labels.
    from tuneguard.integrations.leak import live_attacks

    assert live_attacks() == (*FAST[:-2], "toy-two-pass")  # not bag-of-words, not the ensemble


def test_an_attack_declaring_another_pass_stays_out_of_fast(monkeypatch):
    class Upper(Attack):
        name = "toy-upper"
        summary = "LL(upper(x))"

        def run(self, ctx):
            ll = ctx.target.ll([t.upper() for t in ctx.texts])
            return AttackOutput(scores=ll, raw=ll, raw_name="LL(upper)")

        def passes(self, n_texts):
            return {TARGET_TEXTS: n_texts, Pass("target", "upper-cased texts"): n_texts}

    _register(monkeypatch, Upper)
    assert "toy-upper" not in resolve_attacks("fast")


def test_suites_mix_with_names_and_unknown_names_are_one_line():
    assert resolve_attacks("fast,lowercase") == [*FAST[:2], "lowercase", *FAST[2:]]
    with pytest.raises(TuneguardError, match=r"unknown attack 'quick': choose from loss, .*, or a suite: fast, all, "
                                             r"soft-table$"):
        resolve_attacks("quick")
    assert set(SUITES) == {"fast", "all", "soft-table"}


def test_without_a_reference_fast_drops_exactly_the_reference_attacks():
    suite = resolve_suite("fast", reference=False)
    assert set(suite.left_out) == REFERENCE_ATTACKS
    assert suite.names == [n for n in FAST if n not in REFERENCE_ATTACKS]
    assert all("needs a reference model" in why for why in suite.left_out.values())
    # An attack named on its own is kept (the runner refuses it), and `all` does not fall back.
    assert "ratio" in resolve_suite("fast,ratio", reference=False).names
    assert resolve_suite("all", reference=False).names == ALL


def test_run_without_a_reference_falls_back_and_every_report_says_so(models, tmp_path, capsys):
    target, _ = models
    result = run_attacks(target, MEMBERS, NONMEMBERS, attacks="fast", n_boot=0, progress=False)
    assert list(result.attacks) == ["loss", "zlib", "min-k", "min-k++", "bag-of-words", "ensemble"]
    assert set(result.settings["left_out"]) == REFERENCE_ATTACKS
    n = len(MEMBERS) + len(NONMEMBERS)
    assert result.cost["forward_passes"] == {"target": n}
    # What was left out would cost the reference's pass of every text.
    assert result.cost["not_run"]["ratio"]["forward_passes"] == {"reference": n}
    warning = next(w for w in result.warnings if w.startswith("left out"))
    assert "ratio, ez-mia, wbc, ht-mia" in warning and "needs a reference model" in warning and "--reference" in warning
    assert "Without a reference model ratio, ez-mia, wbc, ht-mia did not run" in verdict_text(result)

    paths = write_mia_report(tmp_path, result)
    saved = json.loads(paths["json"].read_text())
    assert warning in saved["warnings"] and set(saved["settings"]["left_out"]) == REFERENCE_ATTACKS
    assert "left out ratio, ez-mia, wbc, ht-mia" in paths["html"].read_text()
    print_report(result, paths)
    assert f"warning: {warning}" in capsys.readouterr().out

    # Named on its own, an attack needing a reference is still refused.
    with pytest.raises(TuneguardError, match="need a reference model"):
        run_attacks(target, MEMBERS, NONMEMBERS, attacks="fast,ratio", n_boot=0, progress=False)


def test_fast_makes_one_target_and_one_reference_pass_per_text(models):
    target, reference = models
    result = run_attacks(target, MEMBERS, NONMEMBERS, attacks="fast", reference=reference, n_boot=0, cache=False,
                         progress=False)
    n = len(MEMBERS) + len(NONMEMBERS)
    assert list(result.attacks) == FAST and "left_out" not in result.settings
    assert result.cost["forward_passes"] == {"target": n, "reference": n}
    assert "over: loss, zlib, min-k@0.05" in result.attacks["ensemble"].note  # the extended features
    assert result.attacks["ensemble"].note.endswith("ratio, ez-mia, wbc, ht-mia")


def test_the_cost_of_all_is_what_all_spends(models):
    """`all` runs every attack, and the estimate a `fast` run reports for it is what it spends (counted, no
    cache)."""
    target, reference = models
    common = {"reference": reference, "n_boot": 0, "cache": False, "progress": False, "n_shots": 2}
    fast = run_attacks(target, MEMBERS, NONMEMBERS, attacks="fast", **common).cost
    result = run_attacks(target, MEMBERS, NONMEMBERS, attacks="all", **common)
    assert list(result.attacks) == ALL  # `all` still runs every attack it ran, and the extended ensemble
    every = result.cost
    assert set(fast["not_run"]) == {"lowercase", "recall", "con-recall"}
    assert fast["all_would_spend"] == every["forward_passes"] == every["all_would_spend"]
    evaluated = len(MEMBERS) + len(NONMEMBERS) - 2 * 2  # `all` holds 2 shots of each class out
    assert every["forward_passes"] == {"target": 4 * evaluated, "reference": evaluated}
    # Each alone: lowercase's pass; ReCall's texts behind the non-member shots; CON-ReCall's behind both.
    assert fast["not_run"]["lowercase"]["forward_passes"] == {"target": len(MEMBERS) + len(NONMEMBERS)}
    assert fast["not_run"]["recall"]["forward_passes"] == {"target": len(MEMBERS) + len(NONMEMBERS) - 2}
    assert fast["not_run"]["con-recall"]["forward_passes"] == {"target": 2 * evaluated}
    assert every["not_run"] == {}


def test_the_report_names_the_passes_spent_and_the_cost_of_what_did_not_run(models, tmp_path, capsys):
    target, reference = models
    result = run_attacks(target, MEMBERS, NONMEMBERS, attacks="loss,ratio,ensemble", reference=reference, n_boot=0,
                         cache=False, progress=False)
    n = len(MEMBERS) + len(NONMEMBERS)
    text = cost_text(result)
    assert f"Forward passes spent: {2 * n} (target {n}, reference {n})" in text
    assert "Not run of --attacks all: zlib, lowercase, min-k, min-k++, ez-mia, wbc, ht-mia, recall, con-recall, " \
           "bag-of-words, ensemble-extended. --attacks all would spend" in text
    assert f"lowercase: +{n} forward passes (target: {n} lower-cased texts)" in text
    assert "zlib, min-k, min-k++, ez-mia, wbc, ht-mia, bag-of-words, ensemble-extended (one or all): no pass" in text
    paths = write_mia_report(tmp_path, result)
    page = paths["html"].read_text()
    assert "<h2>Cost</h2>" in page and "lower-cased texts" in page and "Forward passes spent" in page
    print_report(result, paths)
    assert text in capsys.readouterr().out


def test_commands_default_to_fast_and_take_the_suites():
    parser = cli.build_parser(["attack", "audit", "demo"])
    for command in (["attack", "--target", "t", "--members", "m", "--nonmembers", "n", "--out", "o"],
                    ["audit", "--model", "m", "--data", "d", "--out", "o"], ["demo"]):
        assert parser.parse_args(command).attacks == "fast", command
        assert parser.parse_args([*command, "--attacks", "soft-table"]).attacks == "soft-table"
