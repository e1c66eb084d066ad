"""Neighbourhood attack (Mattern et al., 2023): ``LL(x) - mean_j LL(x~_j)`` over J neighbours (J = 10).

A member sits at a local maximum of the fine-tuned model's likelihood, so its neighbours score lower than it does;
a non-member has no such peak. Neighbours come from any ``tuneguard.neighbours`` generator; the score is the
negated log-probability variation of SPV-MIA on the target alone. Both attacks cut the texts and pick the fill model
the same way (``fit_texts``, ``fill_model``), so with the same generator settings and seed they share one neighbour
set through the neighbour cache, and the target's log-likelihoods of it through the scoring engine's cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from tuneguard.attacks.base import TARGET_TEXTS, Attack, AttackContext, AttackOutput, Pass
from tuneguard.attacks.spv.variation import neighbour_variation
from tuneguard.data import fit_to_length
from tuneguard.errors import TuneguardError
from tuneguard.neighbours import NEIGHBOURS, NeighbourSet
from tuneguard.params import Params, param

if TYPE_CHECKING:  # model loading and the scoring engine import torch: not needed to import the attack
    from tuneguard.models import LoadedModel
    from tuneguard.scoring import ScoringEngine

# Generator options this attack passes on when set (None = the generator's own default).
OPTIONS = ("pct", "span_length", "buffer_size", "top_k", "temperature", "max_tries")


def fit_texts(engine: ScoringEngine, texts: Sequence[str]) -> list[str]:
    """The texts cut to the tokens ``engine`` scores, so that every rewritten word is one the models see."""
    return fit_to_length(list(texts), engine.loaded.tokenizer, engine.text_budget)


def neighbour_pass(model: str, generator: str, n: int) -> Pass:
    """The pass of ``n`` ``generator`` neighbours per text under ``model``: the same key for the neighbourhood attack
    and SPV-MIA, which share one neighbour set at the same settings."""
    return Pass(model, f"neighbours ({n} {generator} per text; making them not counted)")


def fill_model(ctx: AttackContext, base: str | None = None) -> LoadedModel:
    """``lm-fill``'s default language model: the model the target was fine-tuned from.

    That is the run's reference model when one is loaded (by default the target's base), else ``base`` or the base
    the target records, else the target itself. The base is preferred to the target because a fill written by the
    target would itself lean towards the memorised text, which weakens the contrast the attack measures.
    """
    from tuneguard.models import as_loaded, reference_of

    if ctx.reference is not None:
        return ctx.reference.loaded
    base = reference_of(ctx.target.loaded, base)
    return as_loaded(base) if base else ctx.target.loaded


def summarise(neighbours: NeighbourSet, n: int, n_cut: int, max_tokens: int) -> str:
    """A note for the report: how many neighbours were made, how many failed, how many texts were cut."""
    note = f"{n} {neighbours.generator} neighbours per text"
    if neighbours.failures:
        note += (f"; {len(neighbours.failures)} failed after the retry cap "
                 f"({len({i for i, _ in neighbours.failures})} texts) and are left out")
    if n_cut:
        note += f"; {n_cut} texts cut to {max_tokens} tokens before perturbing"
    return note


@dataclass
class NeighbourhoodParams(Params):
    generator: str = param("lm-fill", "the neighbour generator: lm-fill (offline, spans re-sampled by the base "
                                      "model), t5 (needs model), wordnet, random-fill")
    n: int = param(10, "neighbours per text", ge=1)
    model: Any = param(None, "the generator's model (t5: a T5 directory, required; lm-fill: default the model the "
                             "target was fine-tuned from)")
    pct: float | None = param(None, "masking budget (unset: the generator's default)", gt=0, le=1)
    span_length: int | None = param(None, "words per masked span (unset: the generator's default)", ge=1)
    buffer_size: int | None = param(None, "unmasked words between spans (unset: the generator's default)", ge=0)
    top_k: int | None = param(None, "sample fills from the k most likely tokens (unset: the generator's default)",
                              ge=0)
    temperature: float | None = param(None, "sampling temperature of the fills (unset: the generator's default)",
                                      gt=0)
    max_tries: int | None = param(None, "attempts per neighbour (unset: the generator's default)", ge=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        generator = NEIGHBOURS.get(self.generator)
        takes_model = generator.takes_model()
        if self.model is not None and not takes_model:
            raise TuneguardError(f"the {self.generator} neighbour generator uses no model: drop neighbourhood.model")
        if self.generator == "t5" and not self.model:
            raise TuneguardError("t5 neighbours need a T5 model: --param neighbourhood.model=DIR (or use lm-fill)")
        generator.Params.create(generator.label(), self.options())

    def options(self) -> dict[str, Any]:
        """The generator options that are set (the others keep the generator's defaults)."""
        return {k: getattr(self, k) for k in OPTIONS if getattr(self, k) is not None}


class NeighbourhoodAttack(Attack):
    """Neighbours come from ``generator`` (default ``lm-fill``, whose fill model defaults to :func:`fill_model`);
    every LL comes from the target's engine."""

    name = "neighbourhood"
    summary = "LL(x) - mean_j LL(x~_j) over perturbed neighbours"
    ensemble = "extended"
    Params = NeighbourhoodParams

    def generator_params(self, ctx: AttackContext) -> dict:
        """The keyword arguments of the neighbour generator for this run."""
        p = self.params
        params = p.options()
        if NEIGHBOURS.get(p.generator).takes_model():
            params["model"] = p.model or fill_model(ctx)
        return {**params, "seed": ctx.seed, "progress": ctx.progress}

    def run(self, ctx: AttackContext) -> AttackOutput:
        texts = fit_texts(ctx.target, ctx.texts)
        generator = NEIGHBOURS.make(self.params.generator, **self.generator_params(ctx))
        neighbours = generator.generate(texts, self.params.n)
        v = neighbour_variation(ctx.target.loaded, neighbours, lambda _, xs: ctx.target.ll(xs, desc="neighbourhood"),
                                "logprob")
        n_cut = sum(a != b for a, b in zip(texts, ctx.texts))
        return AttackOutput(scores=-v, raw=v, raw_name="mean_j LL(x~_j) - LL(x)",
                            note=summarise(neighbours, self.params.n, n_cut, ctx.target.text_budget),
                            extra={"neighbours": neighbours})

    def passes(self, n_texts: int) -> dict[Pass, int]:
        p = self.params
        return {TARGET_TEXTS: n_texts, neighbour_pass("target", p.generator, p.n): p.n * n_texts}
