"""Privacy-utility experiments: datasets × regimes (``tuneguard.regimes``: pretrained, full FT, LoRA, SOFT at several
ratios, DP-SGD, ...) × attacks, from one TOML file; every cell is run once, saved, and reused while everything that
decided it is unchanged.

The file is parsed into typed, validated settings (:class:`Experiment`) before any model loads: an unknown key or a
bad value fails in milliseconds with one line naming the file, the table and the valid options. Output (in the
experiment's ``out`` directory, rendered by ``tuneguard.report.experiment``): ``results.json``, ``table1.txt``,
``tradeoff.png`` and ``report.html``.
"""

from __future__ import annotations

import logging
import random
import tomllib
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tuneguard.cache import key_hash
from tuneguard.data import clean_texts, load_texts
from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_write_json, check_output, read_json
from tuneguard.models.device import (DEVICE_HELP, DEVICE_MAPS, DTYPE_CHOICES, DeviceSettings, resolve_settings,
                                     use_device)
from tuneguard.params import Params, check_names, param
from tuneguard.paths import inside, remove_tree, safe_component
from tuneguard.regimes import REGIMES
from tuneguard.regimes.base import Regime
from tuneguard.report.privacy import attack_figures
from tuneguard.report.table import printable
from tuneguard.scoring.perplexity import perplexity
from tuneguard.train import TrainConfig
from tuneguard.train.methods import check_extra

log = logging.getLogger(__name__)

# Version of a cell's layout and key: a cell saved under another schema is recomputed.
CELL_SCHEMA = 2
# The parts of a cell's key that decide its trained model; the others decide only how it is scored.
TRAINING_PARTS = ("schema", "base", "tokenizer", "members", "regime", "train")
# Version of the figures a cell holds (not of its model): a cell saved under another is re-scored, its model reused.
# 2: per-attack CIs and TPR@10% FPR, the average AUC's CI, the max-attack AUC and TPR@10% FPR.
# 3: the average AUC's CI from one joint bootstrap of the attacks (it was the mean of their CI bounds).
# 4: the strongest attack at every FPR the verdict reads (max_tpr), with its CI.
SCORED_FIELDS = 4


@dataclass
class Dataset(Params):
    """One domain: where its texts are and how many members / non-members to draw."""

    name: str = param(help="the domain's name (one block of the table)")
    path: str = param(help="text file (relative to the experiment file) or hf:NAME")
    members: int = param(100, "texts drawn as members (trained on)", ge=2)
    nonmembers: int = param(100, "texts drawn as non-members (held out)", ge=2)
    column: str | None = param(None, "text column (default: 'text' or the only string column)")


@dataclass
class AttackSuite(Params):
    """The attacks run on every cell (top-level ``attacks``) and how (the ``[attack_options]`` table)."""

    attacks: list[str] = param(["soft-table"], "attack and suite names (tuneguard.attacks.ATTACKS; suites fast, all, "
                               "soft-table: SOFT's Table 1, the default)")
    params: dict = param({}, "per-attack parameters: {attack = {parameter = value}}")
    n_shots: int = param(7, "ReCall / CON-ReCall shots drawn from the texts", ge=0)
    max_length: int | None = param(None, "scoring window in tokens (default: each regime's training window)", ge=1)
    batch_size: int = param(8, "texts per forward pass", ge=1)
    n_boot: int = param(1000, "bootstrap draws for the confidence intervals", ge=0)
    corpus: str | None = param(None, "DC-PDD token-frequency corpus: a text file (relative to the experiment file)")
    cache: bool = param(True, "cache the forward passes on disk")


@dataclass
class Column:
    """One column of the table: a regime with its options and the TrainConfig it trains with."""

    name: str
    kind: str  # the regime's registry name
    regime: Regime
    train: TrainConfig


@dataclass
class Experiment:
    """A parsed, validated experiment file."""

    name: str
    model: str
    out: Path
    datasets: list[Dataset]
    regimes: list[Column]
    train: TrainConfig  # the shared [train] table (each column's own is in Column.train)
    suite: AttackSuite
    general_texts: int = 32
    seed: int = 0
    device: DeviceSettings | None = None  # where every model of the run loads (None: the CPU in float32)


@dataclass
class _TopLevel(Params):
    """The top-level keys of an experiment file (tables aside)."""

    model: str = param(help="base model: embedded name, model directory, .gguf or hub id")
    name: str | None = param(None, "title (default: the file's name)")
    out: str | None = param(None, "output directory, relative to the file (default: runs/<file name>)")
    seed: int = param(0, "seed of the member draw, the training runs and the attacks")
    attacks: str | list[str] = param("soft-table", "attack and suite names (fast, all, soft-table), a list or a "
                                     "comma-separated string")
    general_texts: int = param(32, "standard-library docstrings scored for perplexity on general text", ge=1)
    device: str = param("auto", f"where models run: {DEVICE_HELP}")
    dtype: str = param("auto", "weights' precision (auto: bfloat16 on a GPU that computes it, else float32)",
                       choices=DTYPE_CHOICES)
    device_map: str | None = param(None, "spread a model too big for one GPU over every GPU (and the CPU)",
                                   choices=DEVICE_MAPS)
    gradient_checkpointing: bool = param(False, "recompute activations in training's backward pass (less memory)")


_TABLES = ("attack_options", "train", "datasets", "regimes")
_TOP_KEYS = [f.name for f in fields(_TopLevel)]
# TOML puts a key written below a table header in that table: the fix for a top-level key found there.
_MOVE_UP = {key: f"{key!r} is a top-level key: put it above the first [table]" for key in _TOP_KEYS}


def load_experiment(path: str | Path) -> Experiment:
    """Parse and check an experiment TOML file (paths inside it are relative to the file).

    Every key, value, attack name, attack parameter, regime option and dataset is checked here, before any model
    loads; each problem is one line naming the file and the place.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TuneguardError(f"experiment file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise TuneguardError(f"{path} is not valid TOML: {exc}") from None
    here = path.resolve().parent
    check_names(raw, [*_TOP_KEYS, *_TABLES], f"{path}", "top-level key")
    for key in ("model", "datasets", "regimes"):
        if key not in raw:
            raise TuneguardError(f"{path}: missing required key {key!r}")
    top = _TopLevel.create(f"{path}", {k: v for k, v in raw.items() if k not in _TABLES})
    suite = _suite(path, here, top.attacks, _table(raw, "attack_options", path))
    shared_train = _table(raw, "train", path)
    train = TrainConfig.create(f"{path}: [train]", {"seed": top.seed, **shared_train})
    if not isinstance(raw["datasets"], list) or not raw["datasets"]:
        raise TuneguardError(f"{path}: 'datasets' must be one or more [[datasets]] tables")
    datasets = [_dataset(path, here, spec, i) for i, spec in enumerate(raw["datasets"])]
    _check_folders(path, "dataset", [d.name for d in datasets])
    _check_attack_needs(path, suite, datasets)
    regimes = _table(raw, "regimes", path)
    if not regimes:
        raise TuneguardError(f"{path}: [regimes] is empty: name at least one (e.g. lora = {{}})")
    columns = [c for name, spec in regimes.items()
               for c in _columns(path, here, name, spec, {"seed": top.seed, **shared_train})]
    _check_folders(path, "regime column", [c.name for c in columns])
    try:  # an output that cannot be written fails now, not after the first cell has trained
        out = check_output((here / (top.out or f"runs/{path.stem}")).resolve())
    except TuneguardError as exc:
        raise TuneguardError(f"{path}: out: {exc}") from None
    return Experiment(name=top.name or path.stem, model=top.model, out=out, datasets=datasets, regimes=columns,
                      train=train, suite=suite, general_texts=top.general_texts, seed=top.seed,
                      device=_device(path, top))


def _check_folders(path: Path, what: str, names: list[str]) -> None:
    """Refuse two names that would share an output folder: the same name twice, or names whose folders differ only
    by case (one folder on a case-insensitive file system)."""
    seen: dict[str, str] = {}
    for name in names:
        key = safe_component(name).casefold()
        if key in seen:
            clash = (f"two {what}s are named {name!r}" if seen[key] == name else
                     f"{what}s {seen[key]!r} and {name!r} would share one output folder")
            raise TuneguardError(f"{path}: {clash}: rename one")
        seen[key] = name


def _device(path: Path, top: _TopLevel) -> DeviceSettings:
    """The file's device settings, checked against this machine before any model loads."""
    try:
        return resolve_settings(top.device, top.dtype, top.device_map, top.gradient_checkpointing)
    except TuneguardError as exc:
        raise TuneguardError(f"{path}: {exc}") from None


def _table(raw: dict, key: str, path: Path) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise TuneguardError(f"{path}: {key!r} must be a table ([{key}] or {key} = {{...}})")
    return value


def _suite(path: Path, here: Path, attacks: str | list[str], options: dict) -> AttackSuite:
    from tuneguard.attacks import resolve_suite

    owner = f"{path}: [attack_options]"
    check_names(options, [f.name for f in fields(AttackSuite) if f.name != "attacks"], owner, "option", hints=_MOVE_UP)
    try:
        resolved = resolve_suite(attacks)
    except TuneguardError as exc:
        raise TuneguardError(f"{path}: {exc}") from None
    names, given = resolved.names, options.get("params", {})
    if isinstance(given, dict):  # a suite's own settings (fast: the extended ensemble), the file's on top of them
        given = {**resolved.params, **{n: {**resolved.params.get(n, {}), **v} if isinstance(v, dict) else v
                                       for n, v in given.items()}}
    suite = AttackSuite.create(owner, {**options, "attacks": names, "params": given})
    for attack, values in suite.params.items():
        if attack not in names:
            raise TuneguardError(f"{owner}: parameters given for attack {attack!r}, which is not among the attacks "
                                 f"run ({', '.join(names)})")
        if not isinstance(values, dict):
            raise TuneguardError(f"{owner}: params.{attack} must be a table of parameters, got {values!r}")
        _check_attack_params(attack, values, f"{path}: attack {attack!r}")
    if suite.corpus is not None:
        corpus = here / suite.corpus
        if not corpus.exists():
            raise TuneguardError(f"{owner}: corpus {corpus} does not exist")
        suite = suite.replace(corpus=str(corpus.resolve()))
        try:
            _corpus(suite.corpus)  # read now (unreadable, not UTF-8, empty), not after the model loads
        except TuneguardError as exc:
            raise TuneguardError(f"{owner}: corpus: {exc}") from None
    return suite


def _check_attack_needs(path: Path, suite: AttackSuite, datasets: list[Dataset]) -> None:
    """What the attacks need from the experiment (run_attacks checks it only when a cell is attacked, after its
    training): each attack's own settings, a corpus when one needs it, and enough texts for the ReCall shots."""
    from tuneguard.attacks import make_attacks
    from tuneguard.attacks.runner import max_shots

    try:
        attacks = make_attacks(suite.attacks, suite.params)
    except TuneguardError as exc:
        raise TuneguardError(f"{path}: {exc}") from None
    need = {n: a.needs for n, a in attacks.items()}
    if suite.corpus is None and (names := [n for n, needs in need.items() if "corpus" in needs]):
        raise TuneguardError(f"{path}: {', '.join(names)} needs a reference corpus for token frequencies: set "
                             "corpus = FILE in [attack_options]")
    for ds in datasets:
        for kind, count, what in (("nonmember_shots", ds.nonmembers, "nonmembers"),
                                  ("member_shots", ds.members, "members")):
            names = [n for n, needs in need.items() if kind in needs]
            if names and suite.n_shots > max_shots(count):
                raise TuneguardError(f"{path}: dataset {ds.name!r}: {suite.n_shots} ReCall shots ({', '.join(names)})"
                                     f" would leave fewer than 2 of its {count} {what} to evaluate: set n_shots <= "
                                     f"{max_shots(count)} in [attack_options] or raise {what}")


def _check_attack_params(attack: str, values: dict, owner: str) -> None:
    """Validate one attack's parameters through its declared Params (no model, no data)."""
    from tuneguard.attacks import ATTACKS

    ATTACKS.get(attack).Params.create(owner, values)


def _dataset(path: Path, here: Path, spec: Any, index: int) -> Dataset:
    owner = f"{path}: dataset {spec.get('name', index + 1)!r}" if isinstance(spec, dict) else f"{path}: dataset"
    if not isinstance(spec, dict):
        raise TuneguardError(f"{owner} must be a table, got {spec!r}")
    check_names(spec, [f.name for f in fields(Dataset)], owner, "option", hints=_MOVE_UP)
    ds = Dataset.create(owner, spec)
    if not ds.path.startswith("hf:"):  # a hub dataset is read when the experiment runs
        ds = ds.replace(path=str((here / ds.path).resolve()))
        try:
            texts = _texts(ds)  # a local file is cheap to count: do it now rather than after the first fine-tune
        except TuneguardError as exc:
            raise TuneguardError(f"{owner}: {exc}") from None
        if len(texts) < ds.members + ds.nonmembers:
            raise TuneguardError(f"{owner}: {ds.path} has {len(texts)} texts after cleaning, fewer than the "
                                 f"{ds.members} members + {ds.nonmembers} non-members asked for")
    return ds


def _columns(path: Path, here: Path, name: str, spec: Any, shared_train: dict) -> list[Column]:
    owner = f"{path}: regime {name!r}"
    if not isinstance(spec, dict):
        raise TuneguardError(f"{owner} must be a table (e.g. {name} = {{}}), got {spec!r}")
    spec = dict(spec)
    kind = spec.pop("kind", name)
    if kind not in REGIMES:
        raise TuneguardError(f"{owner} has unknown kind {kind!r} (use one of {', '.join(REGIMES)}, or set "
                             "kind = '...')")
    cls = REGIMES.get(kind)
    regime_train = spec.pop("train", {})
    if not isinstance(regime_train, dict):
        raise TuneguardError(f"{owner}: 'train' must be a table of TrainConfig options, got {regime_train!r}")
    check_names(spec, [*cls.option_names(), "kind", "train"], owner, "option", hints=_MOVE_UP)
    for key in cls.paths:
        if isinstance(spec.get(key), str):
            file = (here / spec[key]).resolve()
            if not file.exists():
                raise TuneguardError(f"{owner}: {key} {file} does not exist")
            spec[key] = str(file)
    try:
        expanded = cls.columns(name, spec)
    except TuneguardError as exc:
        raise TuneguardError(f"{path}: {exc}") from None
    columns = []
    for column_name, options in expanded:
        params = cls.Params.create(owner, _nested(cls.Params, options, owner))
        regime = cls(**params.to_dict())
        base_train = TrainConfig.create(f"{owner} train", {**shared_train, **regime_train})
        try:
            train = regime.train_config(base_train)
            check_extra(train)
        except TuneguardError as exc:
            raise TuneguardError(f"{owner}: {exc}") from None
        columns.append(Column(column_name, kind, regime, train))
    return columns


def _nested(params_cls: type[Params], options: dict, owner: str) -> dict:
    """``options`` with each TOML table given for an option declared as a dataclass (e.g. SOFT's ``gate``)
    turned into that dataclass, checked against its own fields."""
    hints = typing.get_type_hints(params_cls)
    out = dict(options)
    for key, value in options.items():
        arms = typing.get_args(hints.get(key)) or (hints.get(key),)
        target = next((a for a in arms if isinstance(a, type) and hasattr(a, "__dataclass_fields__")), None)
        if target is None or not isinstance(value, dict):
            continue
        if issubclass(target, Params):
            out[key] = target.create(f"{owner} option {key!r}", value)
        else:
            check_names(value, [f.name for f in fields(target)], f"{owner} option {key!r}", "field")
            out[key] = target(**value)
    return out


def run_experiment(exp: Experiment, *, progress: bool = True) -> dict:
    """Run every (dataset, regime) cell not saved with the same key, then write the table, the plot and the report.

    A cell's key covers the base model (weight fingerprint and tokenizer), its texts, the regime's options, its
    TrainConfig, the attack suite, the scoring window and the seed; a saved cell with another key is recomputed
    (the log says what changed). Each cell scores within its training window unless ``[attack_options]`` sets
    ``max_length``.
    """
    from tuneguard.data.stdlib import stdlib_docstrings
    from tuneguard.models import load_model
    from tuneguard.report.experiment import write_experiment_report

    draws = {ds.name: draw_texts(ds, exp.seed) for ds in exp.datasets}  # a hub dataset fails here, not mid-run
    general = stdlib_docstrings(exp.general_texts, seed=exp.seed + 1)
    corpus = _corpus(exp.suite.corpus) if exp.suite.corpus else None
    cells: dict[str, dict[str, dict]] = {}
    with use_device(exp.device or DeviceSettings()):  # every model of the run: base, trained, paraphrasers
        base = load_model(exp.model)
        for ds in exp.datasets:
            members, nonmembers = draws[ds.name]
            cells[ds.name] = {column.name: run_cell(exp, ds, column, base, members, nonmembers, general, corpus,
                                                    progress) for column in exp.regimes}
    summary = {"name": exp.name, "model": exp.model, "regimes": [c.name for c in exp.regimes],
               "datasets": [d.to_dict() for d in exp.datasets], "settings": settings_of(exp), "cells": cells}
    atomic_write_json(exp.out / "results.json", summary)
    summary["paths"] = write_experiment_report(exp.out, summary)
    return summary


def settings_of(exp: Experiment) -> dict:
    """The experiment's settings in plain JSON (results.json and the report's settings table)."""
    return {"model": exp.model, "seed": exp.seed, "general_texts": exp.general_texts,
            **(exp.device or DeviceSettings()).to_json(), "attacks": exp.suite.to_dict(), "train": exp.train.to_dict(),
            "regimes": {c.name: {"kind": c.kind, "options": _plain(c.regime.params), "train": c.train.to_dict(),
                                 "knob": _knob(c)} for c in exp.regimes},
            "datasets": [d.to_dict() for d in exp.datasets]}


def _knob(column: Column) -> dict | None:
    """The column's privacy-utility knob (``Regime.knob``): option, symbol and value; None for a regime without."""
    knob = type(column.regime).knob
    return None if knob is None else {"option": knob[0], "symbol": knob[1],
                                      "value": getattr(column.regime.params, knob[0])}


def draw_texts(ds: Dataset, seed: int) -> tuple[list[str], list[str]]:
    """The seeded member / non-member draw of one dataset."""
    texts = _texts(ds)
    need = ds.members + ds.nonmembers
    if len(texts) < need:
        raise TuneguardError(f"dataset {ds.name} has {len(texts)} texts, fewer than the {need} asked for")
    picked = random.Random(seed).sample(texts, need)
    return picked[:ds.members], picked[ds.members:]


def _texts(ds: Dataset) -> list[str]:
    return clean_texts(load_texts(ds.path, column=ds.column), name=ds.name).texts


def _corpus(path: str) -> list[str]:
    return clean_texts(load_texts(path), name=path).texts


def run_cell(exp: Experiment, ds: Dataset, column: Column, base, members: list[str], nonmembers: list[str],
             general: list[str], corpus: list[str] | None, progress: bool) -> dict:
    """One cell: reused when saved with the same key, else built, attacked and measured, then saved."""
    from tuneguard.attacks import run_attacks
    from tuneguard.report import confounding_warning
    from tuneguard.scoring import ScoringEngine

    cell_dir = cell_path(exp, ds.name, column.name)
    window = exp.suite.max_length or column.train.max_length  # tokens past the training window were never learnt
    parts = cell_key_parts(exp, column, base, members, nonmembers, general, corpus, window)
    saved = _saved_cell(exp.out, cell_dir, parts, printable(f"{ds.name} / {column.name}"))
    if saved is not None:
        return saved
    log.info("cell %s / %s (scoring window %d tokens)", printable(ds.name), printable(column.name), window)
    target, extra = column.regime.build(base, members, cell_dir, column.train, progress=progress)
    suite = exp.suite
    result = run_attacks(target, members, nonmembers, attacks=suite.attacks, reference=base, params=suite.params,
                         corpus=corpus, n_shots=suite.n_shots, seed=exp.seed, batch_size=suite.batch_size,
                         max_length=window, n_boot=suite.n_boot, cache=suite.cache, progress=progress)
    engine = ScoringEngine(target, batch_size=suite.batch_size, max_length=window, cache=suite.cache,
                           progress=progress)
    cell = {"schema": CELL_SCHEMA, "key": key_hash(parts), "key_parts": {k: key_hash(v) for k, v in parts.items()},
            "dataset": ds.name, "regime": column.name, "kind": column.kind, "max_length": window,
            **attack_figures(result), "ppl_domain": perplexity(engine, nonmembers),
            "ppl_general": perplexity(engine, general),
            "warnings": result.warnings, "confounding_warning": confounding_warning(result), **extra}
    atomic_write_json(cell_dir / "cell.json", cell)
    return cell


def cell_key_parts(exp: Experiment, column: Column, base, members: list[str], nonmembers: list[str],
                   general: list[str], corpus: list[str] | None, window: int) -> dict[str, Any]:
    """Everything that decides a cell, by part (the log names the parts that changed)."""
    from tuneguard.scoring.engine import tokenizer_digest

    return {"schema": CELL_SCHEMA, "base": base.fingerprint, "tokenizer": tokenizer_digest(base.tokenizer),
            "members": key_hash(*members), "regime": [column.kind, _plain(column.regime.params)],
            "train": column.train.to_dict() if column.regime.trains else None,
            "nonmembers": key_hash(*nonmembers), "general": key_hash(*general), "attacks": exp.suite.to_dict(),
            "corpus": key_hash(*corpus) if corpus else None, "window": window, "seed": exp.seed,
            "scored_fields": SCORED_FIELDS}


def _saved_cell(out: Path, cell_dir: Path, parts: dict[str, Any], label: str) -> dict | None:
    """The saved cell when its key matches; else None, after saying why and clearing what is stale (the whole cell
    when its training changed, else only its scores, so the trained model is reused). Nothing outside ``out`` is
    removed."""
    path = cell_dir / "cell.json"
    if not path.is_file():
        return None
    saved = read_json(path)
    old = saved.get("key_parts") or {}
    changed = [k for k, v in parts.items() if old.get(k) != key_hash(v)]
    if not changed:
        return saved
    if saved.get("schema") != CELL_SCHEMA:
        reason, changed = f"it was saved by an older tuneguard (cell schema {saved.get('schema', 1)})", ["schema"]
    else:
        reason = f"its {', '.join(changed)} changed"
    if any(k in TRAINING_PARTS for k in changed):
        log.warning("cell %s: recomputing it from scratch: %s", label, reason)
        remove_tree(out, cell_dir, f"stale cell {label!r}")
    else:
        log.warning("cell %s: re-scoring it (its trained model is reused): %s", label, reason)
        path.unlink()
    return None


def _plain(value: Any) -> Any:
    """Declared parameters (nested ones too) as plain JSON values."""
    if isinstance(value, Params):
        return {k: _plain(v) for k, v in value.to_dict().items()}
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def cell_path(exp: Experiment, dataset: str, column: str | None = None) -> Path:
    """Where the cell of ``dataset`` x ``column`` keeps its models and figures (no column: the dataset's folder):
    one safe folder per name (:func:`tuneguard.paths.safe_component`), checked to lie inside the output directory."""
    folder = exp.out / safe_component(dataset)
    return inside(exp.out, folder if column is None else folder / safe_component(column), "cell folder")
