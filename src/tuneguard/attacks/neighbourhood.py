"""Neighbourhood attack (Mattern et al., 2023): ``LL(x) - mean_j LL(x~_j)`` over J neighbours (J = 10).

A member sits at a local maximum of the fine-tuned model's likelihood, so its neighbours score lower than it does;
a non-member has no such peak. Neighbours come from any ``tuneguard.neighbours`` generator; the score is the
negated log-probability variation of SPV-MIA on the target alone. Both attacks cut the texts and pick the fill model
the same way (``fit_texts``, ``fill_model``), so with the same generator settings and seed they share one neighbour
set through the neighbour cache, and the target's log-likelihoods of it through the scoring engine's cache.
"""

from __future__ import annotations

from typing import Any, Sequence

from tuneguard.attacks.base import Attack, AttackContext, AttackOutput
from tuneguard.attacks.spv.variation import neighbour_variation
from tuneguard.data import fit_to_length
from tuneguard.errors import TuneguardError
from tuneguard.models import LoadedModel, load_model
from tuneguard.neighbours import NeighbourSet, check_params, generator_parameters, make_generator
from tuneguard.scoring import ScoringEngine

# Generator options this attack passes on when set (None = the generator's own default).
OPTIONS = ("pct", "span_length", "buffer_size", "top_k", "temperature", "max_tries")


def fit_texts(engine: ScoringEngine, texts: Sequence[str]) -> list[str]:
    """The texts cut to the tokens ``engine`` scores, so that every rewritten word is one the models see."""
    return fit_to_length(list(texts), engine.loaded.tokenizer, engine.text_budget)


def fill_model(ctx: AttackContext, base: str | None = None) -> LoadedModel:
    """``lm-fill``'s default language model: the model the target was fine-tuned from.

    That is the run's reference model when one is loaded (by default the target's base), else ``base`` or the base
    the target records, else the target itself. The base is preferred to the target because a fill written by the
    target would itself lean towards the memorised text, which weakens the contrast the attack measures.
    """
    if ctx.reference is not None:
        return ctx.reference.loaded
    base = base or ctx.target.loaded.base_ref
    return load_model(base) if base else ctx.target.loaded


def summarise(neighbours: NeighbourSet, n: int, n_cut: int, max_tokens: int) -> str:
    """A note for the report: how many neighbours were made, how many failed, how many texts were cut."""
    note = f"{n} {neighbours.generator} neighbours per text"
    if neighbours.failures:
        note += (f"; {len(neighbours.failures)} failed after the retry cap "
                 f"({len({i for i, _ in neighbours.failures})} texts) and are left out")
    if n_cut:
        note += f"; {n_cut} texts cut to {max_tokens} tokens before perturbing"
    return note


class NeighbourhoodAttack(Attack):
    """Params: ``generator`` (default ``lm-fill``: offline, spans re-sampled by the base model; ``t5`` needs
    ``model`` = a T5 directory), ``n`` neighbours per text, ``model`` (the generator's model; lm-fill's default:
    :func:`fill_model`), and the generator options ``pct``, ``span_length``, ``buffer_size``, ``top_k``,
    ``temperature``, ``max_tries`` (unset = the generator's default). Every LL comes from the target's engine."""

    name = "neighbourhood"
    defaults: dict[str, Any] = {"generator": "lm-fill", "n": 10, "model": None, **{k: None for k in OPTIONS}}
    summary = "LL(x) - mean_j LL(x~_j) over perturbed neighbours"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        if not isinstance(p["n"], int) or p["n"] < 1:
            raise TuneguardError(f"neighbourhood n (neighbours per text) must be a whole number >= 1, got {p['n']!r}")
        takes_model = "model" in generator_parameters(p["generator"])[0]
        if p["model"] is not None and not takes_model:
            raise TuneguardError(f"the {p['generator']} neighbour generator uses no model: drop neighbourhood.model")
        if p["generator"] == "t5" and not p["model"]:
            raise TuneguardError("t5 neighbours need a T5 model: --param neighbourhood.model=DIR (or use lm-fill)")
        check_params(p["generator"], [k for k in OPTIONS if p[k] is not None] + (["model"] if takes_model else []))

    def generator_params(self, ctx: AttackContext) -> dict:
        """The keyword arguments of the neighbour generator for this run."""
        p = self.params
        params = {k: p[k] for k in OPTIONS if p[k] is not None}
        if "model" in generator_parameters(p["generator"])[0]:
            params["model"] = p["model"] or fill_model(ctx)
        return {**params, "seed": ctx.seed, "progress": ctx.progress}

    def run(self, ctx: AttackContext) -> AttackOutput:
        texts = fit_texts(ctx.target, ctx.texts)
        generator = make_generator(self.params["generator"], **self.generator_params(ctx))
        neighbours = generator.generate(texts, self.params["n"])
        v = neighbour_variation(ctx.target.loaded, neighbours, lambda _, xs: ctx.target.ll(xs, desc="neighbourhood"),
                                "logprob")
        n_cut = sum(a != b for a, b in zip(texts, ctx.texts))
        return AttackOutput(scores=-v, raw=v, raw_name="mean_j LL(x~_j) - LL(x)",
                            note=summarise(neighbours, self.params["n"], n_cut, ctx.target.text_budget),
                            extra={"neighbours": neighbours})


ATTACK = NeighbourhoodAttack
