"""``run_experiment``: every (dataset, regime) cell of an experiment run, or reused when saved with the same key, then
the summary (``results.json``) and the report written."""

from __future__ import annotations

import logging

from tuneguard.cache import key_hash
from tuneguard.experiment.cells import CELL_SCHEMA, cell_key_parts, cell_path, saved_cell
from tuneguard.experiment.schema import Column, Dataset, Experiment, plain
from tuneguard.experiment.texts import corpus_texts, draw_texts
from tuneguard.files import atomic_write_json
from tuneguard.models.device import DeviceSettings, use_device
from tuneguard.report.privacy import attack_figures
from tuneguard.report.table import printable
from tuneguard.scoring.perplexity import perplexity

log = logging.getLogger(__name__)


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
    corpus = corpus_texts(exp.suite.corpus) if exp.suite.corpus else None
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
            "regimes": {c.name: {"kind": c.kind, "options": plain(c.regime.params), "train": c.train.to_dict(),
                                 "knob": _knob(c), **type(c.regime).declarations()} for c in exp.regimes},
            "datasets": [d.to_dict() for d in exp.datasets]}


def _knob(column: Column) -> dict | None:
    """The column's privacy-utility knob (``Regime.knob``): option, symbol and value; None for a regime without."""
    knob = type(column.regime).knob
    return None if knob is None else {"option": knob[0], "symbol": knob[1],
                                      "value": getattr(column.regime.params, knob[0])}


def run_cell(exp: Experiment, ds: Dataset, column: Column, base, members: list[str], nonmembers: list[str],
             general: list[str], corpus: list[str] | None, progress: bool) -> dict:
    """One cell: reused when saved with the same key, else built, attacked and measured, then saved."""
    from tuneguard.attacks import run_attacks
    from tuneguard.report import confounding_warning
    from tuneguard.scoring import ScoringEngine

    cell_dir = cell_path(exp, ds.name, column.name)
    window = exp.suite.max_length or column.train.max_length  # tokens past the training window were never learnt
    parts = cell_key_parts(exp, column, base, members, nonmembers, general, corpus, window)
    saved = saved_cell(exp.out, cell_dir, parts, printable(f"{ds.name} / {column.name}"))
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
