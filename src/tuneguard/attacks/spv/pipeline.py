"""SPV-MIA end to end (Fu et al., NeurIPS 2024): self-prompt data, reference model, shared neighbours, score.

Every stage is cached and resumable: the generated texts (JSONL), the reference fine-tune (a tuneguard run
directory), the neighbours (``tuneguard.neighbours`` cache) and the log-likelihoods (the scoring engine's cache).
Importing it loads no torch (the stages import theirs when they run), so the attack's declaration is read without.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tuneguard.attacks.spv.variation import FORMS, LogLikelihood, calibrated_score, neighbour_variation
from tuneguard.cache import cache_dir, key_hash, text_hash
from tuneguard.data import load_texts
from tuneguard.errors import TuneguardError
from tuneguard.models import LoadedModel  # no torch: SPVConfig's neighbour_model type names it
from tuneguard.neighbours import NEIGHBOURS, NeighbourSet
from tuneguard.params import Params, param


@dataclass(frozen=True)
class Reference:
    """One calibration model SPV-MIA can use: what it is, the setting it needs (None: none) with how to give it,
    and, when that setting holds texts the attacker brings, what they are (checked against the evaluated texts)."""

    summary: str
    needs: str | None = None
    how: str = ""
    texts: str | None = None


# The reference kinds, declared once: the ``reference`` setting's choices and help, the checks of what each needs,
# and the attacker texts each reads. self-prompt: fine-tuned on texts the target generates from the prompt pool;
# data: same-distribution or other-domain public text (the paper's ablations); none: the target's variation alone.
REFERENCES: dict[str, Reference] = {
    "self-prompt": Reference("the paper", "prompts", "the attacker's public prompt pool from the target's domain, "
                             "disjoint from the evaluated texts: --param spv-mia.prompts=FILE", "prompt pool"),
    "data": Reference("fine-tuned on reference_data", "reference_data", "--param spv-mia.reference_data=FILE",
                      "reference data"),
    "base": Reference("the target's base model, no training"),
    "model": Reference("reference_model as given", "reference_model", "--param spv-mia.reference_model=MODEL"),
    "none": Reference("no calibration"),
}


def check_reference(config: SPVConfig, who: str = "SPV-MIA") -> None:
    """Refuse a reference whose needed setting (:data:`REFERENCES`) is unset, naming it and how to give it."""
    kind = REFERENCES[config.reference]
    if kind.needs and not getattr(config, kind.needs):
        raise TuneguardError(f"{who} reference={config.reference} needs {kind.needs}: {kind.how}")


def reference_texts(config: SPVConfig) -> tuple[str, str | Sequence[str]] | None:
    """What the texts the reference reads are and their source (a file or texts), or None when it reads none."""
    kind = REFERENCES[config.reference]
    source = getattr(config, kind.needs) if kind.texts else None
    return (kind.texts, source) if source else None


@dataclass
class SPVConfig(Params):
    """SPV-MIA settings; defaults follow the paper and its official code, except the neighbour generator (below).

    reference: one of :data:`REFERENCES` (``self-prompt``, the paper's, by default). ``stats`` (not a setting) is
    filled by ``run_spv``: seconds and counts per stage.
    """

    prompts: str | list[str] | None = param(None, "the attacker's public prompt pool from the target's domain, "
                                                  "disjoint from the evaluated texts (a file, or texts)")
    n_texts: int = param(10_000, "M, self-prompt texts generated (10,000 in the paper)", ge=1)
    prompt_tokens: int = param(16, "L, tokens of each pool text kept as the prompt", ge=1)
    total_tokens: int = param(128, "tokens of each generated text, prompt included", ge=2)
    top_k: int = param(50, "generation: sample from the k most likely tokens", ge=0)
    temperature: float = param(1.0, "generation: sampling temperature", gt=0)
    generation_batch_size: int = param(16, "texts generated per batch", ge=1)
    reference: str = param("self-prompt", "the calibration model: " + ", ".join(
        f"{name} ({kind.summary})" for name, kind in REFERENCES.items()), choices=tuple(REFERENCES))
    reference_data: str | list[str] | None = param(None, "texts the data reference is fine-tuned on (a file, or "
                                                         "texts)")
    reference_model: str | None = param(None, "the reference=model model")
    base: str | None = param(None, "the target's base model, when the target does not record it")
    epochs: int = param(2, "reference fine-tuning epochs", ge=1)
    lr: float = param(5e-5, "reference fine-tuning learning rate", gt=0)
    train_batch_size: int = param(8, "reference fine-tuning batch size", ge=1)
    max_length: int = param(128, "reference fine-tuning tokens per text", ge=1)
    # The official code fills spans with T5 (``neighbours="t5"`` with a T5 ``neighbour_model``); the default
    # ``lm-fill`` needs no extra model and works offline.
    neighbours: str = param("lm-fill", "the neighbour generator (tuneguard.neighbours)")
    neighbour_model: str | LoadedModel | None = param(None, "the generator's model (t5: required; lm-fill: default "
                                                            "the target's base model)")
    neighbour_options: dict = param({}, "the generator's other options (pct, span_length, ...)")
    n_neighbours: int = param(10, "J, neighbours per text", ge=1)
    form: str = param("prob", "prob (the paper: P = exp(-NLL)) or logprob (mean LL(x~) - LL(x))", choices=FORMS)
    seed: int = param(0, "seed of generation, fine-tuning and neighbours")
    out_dir: str | None = param(None, "where stage outputs go (default: the cache)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.stats: dict = {}
        if self.neighbours == "t5" and not self.neighbour_model:
            raise TuneguardError("SPV-MIA t5 neighbours need a T5 model: set neighbour_model to its directory or hub "
                                 "id, or use neighbours=lm-fill")
        if "model" in self.neighbour_options:
            raise TuneguardError("give the neighbour model as neighbour_model, not inside neighbour_options")
        generator = NEIGHBOURS.get(self.neighbours)
        takes_model = generator.takes_model()
        if self.neighbour_model and not takes_model:
            raise TuneguardError(f"the {self.neighbours} neighbour generator uses no model: drop neighbour_model")
        generator.Params.create(generator.label(), self.neighbour_options)


def stage_dir(config: SPVConfig, target: LoadedModel, *parts: str) -> Path:
    """A stage's output directory: under ``out_dir`` when given, else in the cache, keyed by target and settings."""
    if config.out_dir:
        path = Path(config.out_dir, *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return cache_dir("spv", target.fingerprint[:16], *parts)


def build_reference(target: LoadedModel, config: SPVConfig, *, progress: bool = True) -> LoadedModel | None:
    """The calibration model for ``config.reference`` (None for ``none``), recording stage times in ``stats``."""
    check_reference(config)  # before the stages' imports (torch): a missing setting is refused at once
    from tuneguard.attacks.spv.reference import target_setup, train_reference
    from tuneguard.attacks.spv.selfprompt import self_prompt_texts
    from tuneguard.models import as_loaded, reference_of

    if config.reference == "none":
        return None
    if config.reference == "model":
        return as_loaded(config.reference_model)
    base = reference_of(target, config.base)
    if config.reference == "base":
        if not base:
            raise TuneguardError(f"cannot tell the base model of {target.ref}: pass --param spv-mia.base=MODEL")
        return as_loaded(base)
    if config.reference == "data":
        texts = texts_of(config.reference_data)
    else:
        t0 = time.perf_counter()
        texts = self_prompt_texts(target, texts_of(config.prompts), n_texts=config.n_texts,
                                  prompt_tokens=config.prompt_tokens, total_tokens=config.total_tokens,
                                  top_k=config.top_k, temperature=config.temperature,
                                  batch_size=config.generation_batch_size, seed=config.seed,
                                  directory=stage_dir(config, target, "self-prompt"),
                                  progress=progress)
        config.stats["generate_seconds"] = time.perf_counter() - t0
        config.stats["generated_texts"] = len(texts)
    t0 = time.perf_counter()
    run = key_hash(config.reference, sorted(text_hash(t) for t in texts), config.epochs, config.lr,
                   config.max_length, config.seed, target_setup(target))
    reference = train_reference(target, texts, stage_dir(config, target, "reference", run), base=base,
                                epochs=config.epochs, lr=config.lr, max_length=config.max_length,
                                batch_size=config.train_batch_size, seed=config.seed, progress=progress)
    config.stats["reference_train_seconds"] = time.perf_counter() - t0
    return reference


def texts_of(source: str | Sequence[str]) -> list[str]:
    """Texts given as a list (Python API) or as a file / dataset name (CLI)."""
    return list(source) if not isinstance(source, (str, Path)) else load_texts(source)


def make_neighbours(target: LoadedModel, texts: Sequence[str], config: SPVConfig, *,
                    progress: bool = True) -> NeighbourSet:
    """``n_neighbours`` neighbours per text from ``config.neighbours`` (cached by tuneguard.neighbours)."""
    from tuneguard.models import reference_of

    params: dict = {**config.neighbour_options, "seed": config.seed, "progress": progress}
    if NEIGHBOURS.get(config.neighbours).takes_model():
        params["model"] = config.neighbour_model or reference_of(target, config.base) or target
    t0 = time.perf_counter()
    result = NEIGHBOURS.make(config.neighbours, **params).generate(texts, config.n_neighbours)
    config.stats["neighbour_seconds"] = time.perf_counter() - t0
    return result


def settings_dict(config: SPVConfig) -> dict:
    """The settings as plain JSON (text lists and models by a short description)."""
    out = {}
    for key, value in vars(config).items():
        if key == "stats":
            continue
        if isinstance(value, LoadedModel):
            value = value.ref
        elif isinstance(value, list):
            value = f"{len(value)} texts"
        out[key] = value
    return out


def run_spv(target: LoadedModel, texts: Sequence[str], ll: LogLikelihood, config: SPVConfig, *,
            reference: LoadedModel | None = None, progress: bool = True) -> dict:
    """SPV-MIA scores of ``texts`` (higher = member) with the raw variations, neighbours and stage statistics.

    The same neighbour set is scored by the target and the reference. ``reference`` overrides ``build_reference``.
    """
    if reference is None and config.reference != "none":
        reference = build_reference(target, config, progress=progress)
    neighbours = make_neighbours(target, texts, config, progress=progress)
    t0 = time.perf_counter()
    v_target = neighbour_variation(target, neighbours, ll, config.form)
    v_ref = neighbour_variation(reference, neighbours, ll, config.form) if reference is not None else None
    config.stats["score_seconds"] = time.perf_counter() - t0
    return {
        "scores": calibrated_score(v_target, v_ref),
        "raw": v_target - v_ref if v_ref is not None else v_target,
        "v_target": v_target,
        "v_reference": v_ref,
        "neighbours": neighbours,
        "settings": settings_dict(config),
        "stats": dict(config.stats),
    }
