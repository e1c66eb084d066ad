"""Shadow fine-tunes: the model owner's reference models for RMIA and LiRA (``--shadows K --population FILE``).

An owner auditing their own fine-tune holds what no outside attacker does: the training recipe and the population
the data came from. :func:`train_shadows` fine-tunes k copies of the target's base model (default 4) with the
target's recipe (its run record, or a ``TrainConfig`` given) on seeded random halves of a population, in pairs on
complementary halves (as the RMIA authors' code pairs its reference models): each shadow trains on half of the
population and, for an even k, each population text trains exactly k/2 shadows (LiRA's ``pkeep = 0.5``), so it is
IN for some shadows and OUT for the others.

Offline only. The population must be disjoint from the evaluated texts (the runner refuses an overlap, as for any
attacker data), so every evaluated text is OUT for every shadow: what the offline variants of RMIA and LiRA model.
The online variants (IN and OUT shadows per evaluated text) would need shadows trained on the evaluated texts
themselves; they are not available.

Cache: ``$TUNEGUARD_CACHE/shadows/<key>``, the key made of everything that decides the shadows (the base's weights
and tokenizer, the recipe but its seed, the population as a set, the seed, k, the device type and dtype), so audits
of the same recipe reuse them and another recipe trains new ones. Each shadow is its own ``finetune`` run in
``shadow-<i>``: checkpointed per epoch, saved atomically with its run record when it finishes, reused when finished,
so an interrupted training resumes at the shadow and epoch it reached. ``shadows.json`` beside them records the key.

Scoring (:class:`ShadowScorer`) loads one shadow at a time (the k models never sit in memory together) and scores
through the one scoring engine with the run's settings (window, batches, score cache).
"""

from __future__ import annotations

import copy
import gc
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tuneguard.attacks import DEFAULT_SHADOWS
from tuneguard.attacks.run_record import run_record
from tuneguard.cache import cache_dir, key_hash, text_hash
from tuneguard.data import clean_texts, load_texts
from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_write_json, read_json
from tuneguard.models import LoadedModel, load_model
from tuneguard.models.loading import attach_adapter
from tuneguard.models.record import RunRecord
from tuneguard.scoring import ScoringEngine
from tuneguard.scoring.engine import tokenizer_digest
from tuneguard.train import METHODS, TrainConfig, finetune
from tuneguard.train.batching import examples_digest
from tuneguard.train.loop import finished_record

SCHEMA = 1  # of the cache key and shadows.json
MIN_POPULATION = 4  # texts: each shadow trains on some, and RMIA compares with them
MANIFEST = "shadows.json"
SIZE_TOLERANCE = 0.25  # a shadow's training set this much larger or smaller than the target's is reported


@dataclass(frozen=True)
class ShadowSpec:
    """What a run asks of its shadows: ``k`` fine-tunes on ``population`` (texts, or a file read with ``column``)
    with ``recipe`` (None: the target's run record), the data halves and the shadows' seeds drawn from ``seed``."""

    population: list[str] | str | Path
    k: int = DEFAULT_SHADOWS
    recipe: TrainConfig | None = None
    seed: int = 0
    column: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 2:
            raise TuneguardError(f"--shadows must be at least 2 (each population text trains half of the shadows), "
                                 f"got {self.k!r}")

    @property
    def file(self) -> str | None:
        """The population's file, when it was given as one."""
        return str(self.population) if isinstance(self.population, (str, Path)) else None

    @property
    def source(self) -> str:
        """How messages name the population, e.g. ``the shadow population (pop.jsonl)``."""
        name = f" ({Path(self.population).name})" if isinstance(self.population, (str, Path)) else ""
        return f"the shadow population{name}"

    def texts(self) -> list[str]:
        """The population's cleaned texts (empty texts and repeats dropped); fewer than ``MIN_POPULATION`` refused."""
        raw = load_texts(self.population, column=self.column) if isinstance(self.population, (str, Path)) \
            else list(self.population)
        texts = clean_texts(raw, name=self.source).texts
        if len(texts) < MIN_POPULATION:
            raise TuneguardError(f"{self.source} holds {len(texts)} usable texts; shadow models need at least "
                                 f"{MIN_POPULATION} (about twice the target's training set trains each shadow on "
                                 "as many texts as the target)")
        return texts


def target_recipe(target: LoadedModel | str | Path) -> TrainConfig:
    """The recipe the target was fine-tuned with, from its run record. Refused without one (an adapter trained
    elsewhere: give the recipe), and for a DP-SGD or Goldfish run, whose training ``finetune`` does not repeat."""
    record = run_record(target)
    ref = target.ref if isinstance(target, LoadedModel) else str(target)
    if record is None:
        raise TuneguardError(f"{ref} has no tuneguard run record, so the recipe its shadows must repeat is "
                             "unknown: give it with --shadow-recipe FILE (a run.json, or a JSON object of "
                             "fine-tuning settings: method, epochs, lr, max_length, ...)")
    if record.dp is not None or "goldfish" in (record.config.get("extra") or {}):
        what = "DP-SGD" if record.dp is not None else "the Goldfish loss"
        raise TuneguardError(f"{ref} was trained with {what}, which shadow training does not repeat: give a recipe "
                             "with --shadow-recipe FILE, knowing the shadows then differ from the target")
    return TrainConfig.create(f"the run record of {ref}", record.config)


def read_recipe(path: str | Path) -> TrainConfig:
    """A recipe from a file: a tuneguard run.json (its ``config``) or a JSON object of ``TrainConfig`` fields."""
    data = read_json(path, fix="give a run.json or a JSON object of fine-tuning settings", expect=dict)
    values = data["config"] if isinstance(data.get("config"), dict) else data
    return TrainConfig.create(f"shadow recipe {path}", values)


def membership(n: int, k: int, seed: int) -> np.ndarray:
    """(k, n) booleans, True where text j trains shadow i. Shadows 2m and 2m + 1 train on a seeded random half and
    its complement, so every shadow trains on half of the texts (⌊n/2⌋ or ⌈n/2⌉) and, for an even k, every text
    trains exactly k/2 shadows (an odd k's last shadow takes a random half of its own)."""
    rng = np.random.default_rng(seed)
    keep = np.zeros((k, n), dtype=bool)
    for pair in range(0, k, 2):
        keep[pair, rng.permutation(n)[:n // 2]] = True
        if pair + 1 < k:
            keep[pair + 1] = ~keep[pair]
    return keep


def shadow_seed(seed: int, index: int) -> int:
    """The training seed of shadow ``index``: each shadow its own initialisation, batch order and dropout."""
    return int(key_hash("shadow", seed, index)[:8], 16)


@dataclass
class ShadowSet:
    """k trained shadows: where they are, what decided them, and what training them cost.

    ``population`` is in canonical order (by text hash: the file's order decides nothing) and ``keep[i, j]`` says
    whether population text j trained shadow i. ``trained``: the shadows this call trained (the others were
    finished in the cache). ``base`` is the loaded base model the adapters load onto."""

    directory: Path
    base: LoadedModel
    recipe: TrainConfig
    population: list[str]
    keep: np.ndarray
    seed: int
    records: list[RunRecord]
    trained: list[int] = field(default_factory=list)

    @property
    def k(self) -> int:
        return len(self.records)

    @property
    def train_seconds(self) -> list[float]:
        """Each shadow's training time as its run record states it (also for a shadow reused from the cache)."""
        return [r.train_seconds for r in self.records]

    def path(self, index: int) -> Path:
        return self.directory / f"shadow-{index}"

    def load(self, index: int) -> LoadedModel:
        """Shadow ``index``: a saved adapter attached to a copy of the base (the base stays untouched), or the whole
        fine-tuned model."""
        if not METHODS.get(self.recipe.method).saves_adapter:
            return load_model(self.path(index))
        base = self.base
        copied = LoadedModel(copy.deepcopy(base.model), base.tokenizer, base.ref, meta=dict(base.meta))
        return attach_adapter(copied, self.path(index), ref=str(self.path(index)))

    def size_note(self, target_examples: int | None) -> str | None:
        """A warning when the shadows trained on a markedly other number of texts than the target (fewer or more
        optimizer steps fit the texts less or more tightly than the target did), else None."""
        sizes = self.keep.sum(axis=1)
        if not target_examples or abs(sizes.mean() / target_examples - 1) <= SIZE_TOLERANCE:
            return None
        return (f"each shadow trained on about {sizes.mean():.0f} population texts, the target on {target_examples}: "
                f"shadows fit their texts {'less' if sizes.mean() < target_examples else 'more'} tightly than the "
                f"target, which skews RMIA and LiRA; a population of about {2 * target_examples} texts matches it")

    def summary(self) -> dict:
        """What results.json records of the shadows."""
        return {"k": self.k, "variant": "offline", "base": self.base.ref, "recipe": self.recipe.to_dict(),
                "seed": self.seed, "population_texts": len(self.population),
                "texts_per_shadow": self.keep.sum(axis=1).tolist(), "directory": str(self.directory),
                "online": "not available: no shadow trains on an evaluated text (the population is disjoint from "
                          "them)"}


def train_shadows(base: LoadedModel, population: list[str], recipe: TrainConfig, *, k: int = DEFAULT_SHADOWS,
                  seed: int = 0, progress: bool = True) -> ShadowSet:
    """Fine-tune ``k`` shadows of ``base`` with ``recipe`` on seeded halves of ``population``, or reuse the cached
    ones (see the module docstring); return them with their run records."""
    texts = sorted(dict.fromkeys(population), key=text_hash)
    keep = membership(len(texts), k, seed)
    general = recipe.replace(seed=0)  # the target's seed is not the recipe: each shadow draws its own
    key = key_hash(SCHEMA, base.fingerprint, tokenizer_digest(base.tokenizer), general.digest(),
                   [text_hash(t) for t in texts], seed, k, base.device.type, str(base.dtype))
    directory = cache_dir("shadows", key[:24])
    manifest = {"schema": SCHEMA, "key": key, "base": base.ref, "base_fingerprint": base.fingerprint,
                "recipe": general.to_dict(), "population_texts": len(texts), "seed": seed, "k": k}
    if not (directory / MANIFEST).is_file():
        atomic_write_json(directory / MANIFEST, manifest)
    records, trained = [], []
    for i in range(k):
        chosen = [t for t, kept in zip(texts, keep[i]) if kept]
        config = recipe.replace(seed=shadow_seed(seed, i))
        out = directory / f"shadow-{i}"
        record = finished_record(out, config, examples_digest(chosen), base)
        if record is None:
            record = finetune(base, chosen, out, config, progress=progress).record
            trained.append(i)
            gc.collect()  # the trained copy of the model is dropped before the next one is made
        records.append(record)
    return ShadowSet(directory, base, recipe, texts, keep, seed, records, trained)


class ShadowScorer:
    """Per-text ``LL`` under every shadow, with the settings of the run's target engine ``like`` (window, batches,
    score cache). Loads one shadow at a time and keeps only the scores; counts what it forwards as a
    ``ScoringEngine`` does (``forward_passes``, ``batches``, ``cache_reads``), so the run's cost includes it."""

    def __init__(self, shadows: ShadowSet, like: ScoringEngine) -> None:
        self.shadows = shadows
        self.like = like
        self.name = f"{shadows.k} shadow models"
        self.forward_passes = self.batches = self.cache_reads = 0
        self._ll: list[dict[str, float]] = [{} for _ in range(shadows.k)]

    @property
    def k(self) -> int:
        return self.shadows.k

    @property
    def population(self) -> list[str]:
        return self.shadows.population

    @property
    def keep(self) -> np.ndarray:
        return self.shadows.keep

    def ll(self, texts: list[str]) -> np.ndarray:
        """(k, len(texts)): ``LL`` of each text under each shadow (each shadow loaded once per call, and only when
        a text is new to it)."""
        out = np.empty((self.k, len(texts)))
        for i, known in enumerate(self._ll):
            todo = list(dict.fromkeys(t for t in texts if t not in known))
            if todo:
                like = self.like
                # The same caching as the run chose for its own engines (no disk cache when the user turned it off).
                engine = ScoringEngine(self.shadows.load(i), batch_size=like.batch_size, batch_tokens=like.batch_tokens,
                                       max_length=like.max_length, cache=like._dir is not None,
                                       progress=like.progress, distributed=True)
                known.update(zip(todo, engine.ll(todo, desc=f"shadow {i + 1}/{self.k}")))
                self.forward_passes += engine.forward_passes
                self.batches += engine.batches
                self.cache_reads += engine.cache_reads
                del engine
                gc.collect()
            out[i] = [known[t] for t in texts]
        return out

    def cache_use(self) -> dict[str, int]:
        """As :meth:`ScoringEngine.cache_use`, over every shadow."""
        return {"from_cache": self.cache_reads, "computed": self.forward_passes}

    def cost(self) -> dict:
        """What the shadows cost, as results.json records it: each one's recorded training seconds, which were
        trained in this run and which reused from the cache, and the forward passes under them."""
        trained = self.shadows.trained
        return {"train_seconds": self.shadows.train_seconds, "trained_now": trained,
                "reused": [i for i in range(self.k) if i not in trained], "forward_passes": self.forward_passes}
