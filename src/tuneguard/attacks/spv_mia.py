"""SPV-MIA (Fu et al., NeurIPS 2024) as a registered attack: self-prompt reference, probabilistic variation.

The pipeline lives in :mod:`tuneguard.attacks.spv`; this module maps the attack's params onto :class:`SPVConfig`,
scores every model through a scoring engine (the target's engine from the run, one more engine for the reference
model, so every pass is cached and counted), and reports the attack's cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tuneguard.attacks.base import Attack, AttackContext, AttackOutput, Pass
from tuneguard.attacks.neighbourhood import fill_model, fit_texts, neighbour_pass, summarise
from tuneguard.attacks.spv.pipeline import SPVConfig, check_reference, reference_texts, run_spv, texts_of
from tuneguard.params import param

if TYPE_CHECKING:  # model loading and the scoring engine import torch: not needed to import the attack
    from tuneguard.models import LoadedModel
    from tuneguard.scoring import ScoringEngine


@dataclass
class SPVMIAParams(SPVConfig):
    """The pipeline's settings as the attack's parameters; an unset ``seed`` is the run's."""

    seed: int | None = param(None, "seed of generation, fine-tuning and neighbours (unset: the run's seed)")


class Engines:
    """The scoring engine of each model SPV-MIA scores: the run's engines where they hold the model, else a new one
    with the target engine's settings (one per model, kept for the attack's lifetime)."""

    def __init__(self, ctx: AttackContext) -> None:
        self.template = ctx.target
        self.progress = ctx.progress
        self.by_model: dict[int, ScoringEngine] = {
            id(e.loaded): e for e in (ctx.target, ctx.reference) if e is not None}

    def engine(self, model: LoadedModel) -> ScoringEngine:
        """The engine scoring with ``model``."""
        if id(model) not in self.by_model:
            from tuneguard.scoring import ScoringEngine

            t = self.template
            # Same caching as the run chose for its own engines (no disk cache when the user turned it off).
            self.by_model[id(model)] = ScoringEngine(model, batch_size=t.batch_size, max_length=t.max_length,
                                                     cache=t._dir is not None, progress=self.progress)
        return self.by_model[id(model)]

    def ll(self, model: LoadedModel, texts: list[str]) -> np.ndarray:
        """``LL`` of each text under ``model`` (the ``ll`` that ``run_spv`` takes)."""
        return self.engine(model).ll(texts, desc="spv-mia")


class SPVMIAAttack(Attack):
    """Params mirror :class:`tuneguard.attacks.spv.pipeline.SPVConfig`. The paper's self-prompt reference needs
    ``prompts``: a file (or list) of public texts from the target's domain, disjoint from the evaluated texts.
    Neighbours default to ``lm-fill`` with the base model (see :func:`tuneguard.attacks.neighbourhood.fill_model`),
    as the neighbourhood attack does, so both share one neighbour set. Costly: M texts generated, one fine-tune,
    J neighbours per text scored on two models; not part of ``all``."""

    name = "spv-mia"
    summary = "-(V_target(x) - V_ref(x)), V = mean_j P(x~_j) - P(x) over neighbours; self-prompt reference"
    Params = SPVMIAParams

    def passes(self, n_texts: int) -> dict[Pass, int]:
        """The texts and their neighbours under the target and the reference (the run's for ``reference="base"``);
        generating the self-prompt texts and fine-tuning the reference are not counted."""
        p = self.params
        models = ["target"] + ([] if p.reference == "none" else
                               ["reference" if p.reference == "base" else f"spv-mia's {p.reference} reference"])
        passes: dict[Pass, int] = {}
        for model in models:
            passes[Pass(model, "texts")] = n_texts
            passes[neighbour_pass(model, p.neighbours, p.n_neighbours)] = p.n_neighbours * n_texts
        return passes

    def config(self, seed: int) -> SPVConfig:
        """The pipeline settings for a run with ``seed`` (used when the params name no seed)."""
        p = self.params.to_dict()
        return SPVConfig(**{**p, "neighbour_options": dict(p["neighbour_options"]),
                            "seed": seed if p["seed"] is None else p["seed"]})

    def check_needs(self, suite: list[str]) -> None:
        check_reference(self.params, "spv-mia")

    def attacker_texts(self) -> list[tuple[str, list[str]]]:
        """The prompt pool (self-prompt reference) or the reference data (data reference) this run will read."""
        found = reference_texts(self.params)
        if found is None:
            return []
        what, source = found
        name = f" ({Path(source).name})" if isinstance(source, (str, Path)) else ""
        return [(f"the spv-mia {what}{name}", texts_of(source))]

    def run(self, ctx: AttackContext) -> AttackOutput:
        from tuneguard.models import reference_of

        t0 = time.perf_counter()
        config = self.config(ctx.seed)
        target = ctx.target.loaded
        if config.neighbours == "lm-fill" and config.neighbour_model is None:
            config.neighbour_model = fill_model(ctx, config.base)
        reference = None
        if config.reference == "base" and ctx.reference is not None \
                and ctx.reference.loaded.ref == reference_of(target, config.base):
            reference = ctx.reference.loaded  # already loaded and scored by the run: its passes are cached
        engines = Engines(ctx)
        before = {key: e.forward_passes for key, e in engines.by_model.items()}
        texts = fit_texts(ctx.target, ctx.texts)
        out = run_spv(target, texts, engines.ll, config, reference=reference, progress=ctx.progress)
        cost = self._cost(out["stats"], engines, before, target, len(texts), time.perf_counter() - t0)
        note = summarise(out["neighbours"], config.n_neighbours, sum(a != b for a, b in zip(texts, ctx.texts)),
                         ctx.target.text_budget)
        return AttackOutput(scores=out["scores"], raw=out["raw"],
                            raw_name="V_target - V_ref" if out["v_reference"] is not None else "V_target",
                            note=f"{note}; reference: {config.reference}; cost: {cost['summary']}",
                            extra={"v_target": out["v_target"], "v_reference": out["v_reference"],
                                   "neighbours": out["neighbours"], "settings": out["settings"], "cost": cost})

    @staticmethod
    def _cost(stats: dict, engines: Engines, before: dict[int, int], target: LoadedModel, n: int,
              seconds: float) -> dict:
        """Forward passes (new ones: cache hits cost none) and seconds, in all and per evaluated record."""
        new = {key: e.forward_passes - before.get(key, 0) for key, e in engines.by_model.items()}
        passes = {"target": new[id(target)], "reference": sum(v for key, v in new.items() if key != id(target))}
        total = sum(passes.values())
        stages = {k.removesuffix("_seconds"): round(v, 3) for k, v in stats.items() if k.endswith("_seconds")}
        share = stats.get("generate_seconds", 0.0) / seconds if seconds > 0 else 0.0
        neighbour_share = stats.get("neighbour_seconds", 0.0) / seconds if seconds > 0 else 0.0
        summary = (f"{total / n:.1f} scoring forward passes per record (target {passes['target']}, reference "
                   f"{passes['reference']} in all), {seconds / n:.2f} s per record, {100 * share:.0f}% of it "
                   f"generating self-prompt texts, {100 * neighbour_share:.0f}% making neighbours")
        return {"records": n, "forward_passes": passes, "forward_passes_per_record": total / n,
                "seconds": round(seconds, 3), "seconds_per_record": seconds / n, "stage_seconds": stages,
                "generated_texts": stats.get("generated_texts", 0), "generation_share": share, "summary": summary}

