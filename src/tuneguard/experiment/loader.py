"""``load_experiment``: an experiment TOML file parsed into typed, validated settings before any model loads. An
unknown key or a bad value fails in milliseconds with one line naming the file, the table and the valid options."""

from __future__ import annotations

import fnmatch
import tomllib
import typing
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from tuneguard.errors import TuneguardError
from tuneguard.experiment.schema import AttackSuite, Column, Dataset, Experiment, TopLevel
from tuneguard.experiment.texts import corpus_texts, dataset_texts
from tuneguard.files import check_output
from tuneguard.models.device import DeviceSettings, resolve_settings
from tuneguard.params import Params, check_names, suggestion
from tuneguard.paths import safe_component
from tuneguard.regimes import REGIMES
from tuneguard.train import TrainConfig
from tuneguard.train.methods import check_extra

_TABLES = ("attack_options", "train", "datasets", "regimes")
_TOP_KEYS = [f.name for f in fields(TopLevel)]
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
    top = TopLevel.create(f"{path}", {k: v for k, v in raw.items() if k not in _TABLES})
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


def select_regimes(exp: Experiment, patterns: str | list[str]) -> Experiment:
    """``exp`` with only the regime columns named by ``patterns`` (comma-separated names or shell-style globs such as
    ``dp-e8-*``), in the file's order: a slice of a large experiment that keeps its cells, so the full run reuses
    them. Every pattern must match a column."""
    if isinstance(patterns, str):
        patterns = [p.strip() for p in patterns.split(",") if p.strip()]
    names = [c.name for c in exp.regimes]
    if not patterns:
        raise TuneguardError(f"{exp.name}: no regime column was selected: name some, or patterns such as 'lora,dp-*' "
                             f"(columns: {', '.join(names)})")
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise TuneguardError(f"{exp.name}: no regime column matches {pattern!r} (columns: {', '.join(names)})"
                                 f"{suggestion(pattern, names)}")
    return replace(exp, regimes=[c for c in exp.regimes if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)])


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


def _device(path: Path, top: TopLevel) -> DeviceSettings:
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
            corpus_texts(suite.corpus)  # read now (unreadable, not UTF-8, empty), not after the model loads
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
            texts = dataset_texts(ds)  # a local file is cheap to count: do it now rather than after the first fine-tune
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
