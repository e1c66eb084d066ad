"""Declared parameters and the lazy registry: one wording for every plug-in's errors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tuneguard.errors import TuneguardError
from tuneguard.params import Params, param
from tuneguard.plugin import Plugin
from tuneguard.registry import Registry


@dataclass
class ToyParams(Params):
    k: float = param(0.2, "fraction of tokens", gt=0, le=1)
    rounding: str = param("ceil", "how k·n becomes a count", choices=("ceil", "floor"))
    levels: tuple[float, ...] = param((0.1, 0.5), "several fractions", gt=0, le=1)
    folds: int = param(5, "folds", ge=2)
    model: str | None = param(None, "a model reference")
    normalise: bool = param(True, "divide by sigma")
    words: list[str] = param([], "a list default is copied per instance")


class Toy(Plugin):
    kind = "attack"
    name = "toy"
    summary = "a toy plug-in"
    Params = ToyParams


class NotAPlugin:
    pass


def test_defaults_and_coercion():
    p = Toy().params
    assert (p.k, p.rounding, p.levels, p.folds, p.model, p.normalise) == (0.2, "ceil", (0.1, 0.5), 5, None, True)
    p = Toy(k=1, levels=[0.2], normalise="false", folds="3").params  # strings are read as JSON (the CLI's --param)
    assert p.k == 1.0 and isinstance(p.k, float) and p.levels == (0.2,) and p.normalise is False and p.folds == 3
    assert Toy().params.words is not Toy().params.words


@pytest.mark.parametrize("given, message", [
    ({"k": 5}, "attack 'toy': parameter 'k' must be in (0, 1], got 5"),
    ({"k": 0}, "attack 'toy': parameter 'k' must be in (0, 1], got 0"),
    ({"k": "abc"}, "attack 'toy': parameter 'k' must be a number, got 'abc'"),
    ({"rounding": "up"}, "attack 'toy': parameter 'rounding' must be one of ceil, floor, got 'up'"),
    ({"levels": [0.1, 2]}, "attack 'toy': parameter 'levels' must be in (0, 1], got [0.1, 2]"),
    ({"folds": 1}, "attack 'toy': parameter 'folds' must be >= 2, got 1"),
    ({"folds": 2.5}, "attack 'toy': parameter 'folds' must be an integer, got 2.5"),
    ({"normalise": 1}, "attack 'toy': parameter 'normalise' must be true or false, got 1"),
    ({"kk": 1}, "attack 'toy' has no parameter 'kk' (parameters: k, rounding, levels, folds, model, normalise, words); "
                "did you mean 'k'?"),
    ({"xyz": 1}, "attack 'toy' has no parameter 'xyz' (parameters: k, rounding, levels, folds, model, normalise, "
                 "words)"),
])
def test_one_wording_for_bad_parameters(given, message):
    with pytest.raises(TuneguardError) as err:
        Toy(**given)
    assert str(err.value) == message


def test_required_parameter_named():
    @dataclass
    class Needs(Params):
        corpus: str = param(help="a corpus file")

    with pytest.raises(TuneguardError, match="^detector 'x' needs parameter 'corpus'$"):
        Needs.create("detector 'x'", {})


def test_describe_and_help():
    lines = [p.line() for p in ToyParams.describe()]
    assert lines[0] == "k (float, default 0.2; in (0, 1]): fraction of tokens"
    assert lines[1] == "rounding (str, default 'ceil'; one of ceil, floor): how k·n becomes a count"
    assert Toy.help().splitlines()[0] == "toy: a toy plug-in"
    assert Toy().params.to_dict()["levels"] == (0.1, 0.5)


def test_registry_is_lazy_and_checks_the_base_class():
    reg: Registry[Plugin] = Registry("attack", Plugin)
    reg.register("toy", f"{__name__}:Toy")
    reg.register("broken", f"{__name__}:NotAPlugin")
    reg.register("missing", "tuneguard_no_such_module:X")  # never imported unless asked for
    assert reg.names() == ["toy", "broken", "missing"] and "toy" in reg and len(reg) == 3
    assert reg.get("toy") is Toy and reg.make("toy", k=0.5).params.k == 0.5
    with pytest.raises(TuneguardError, match=r"^unknown attack 'tyo': choose from toy, broken, missing; "
                                             r"did you mean 'toy'\?$"):
        reg.get("tyo")
    with pytest.raises(TuneguardError, match=r"^unknown attack 'zzz': choose from toy, broken, missing$"):
        reg.check("zzz")
    with pytest.raises(TypeError, match="is not a Plugin"):
        reg.get("broken")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("toy", f"{__name__}:Toy")


def test_registry_base_given_as_a_string():
    reg = Registry("attack", "tuneguard.plugin:Plugin")
    reg.register("toy", f"{__name__}:Toy")
    assert reg.base is Plugin and reg.get("toy") is Toy
