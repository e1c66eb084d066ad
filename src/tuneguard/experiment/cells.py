"""An experiment's saved cells: where each (dataset, regime column) cell lives, the key of everything that decides it,
and the saved ``cell.json`` reused only while that key is unchanged (when only its scoring changed, its trained model
is kept)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tuneguard.cache import key_hash
from tuneguard.experiment.schema import Column, Experiment, plain
from tuneguard.files import read_json
from tuneguard.paths import inside, remove_tree, safe_component

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


def cell_path(exp: Experiment, dataset: str, column: str | None = None) -> Path:
    """Where the cell of ``dataset`` x ``column`` keeps its models and figures (no column: the dataset's folder):
    one safe folder per name (:func:`tuneguard.paths.safe_component`), checked to lie inside the output directory."""
    folder = exp.out / safe_component(dataset)
    return inside(exp.out, folder if column is None else folder / safe_component(column), "cell folder")


def cell_key_parts(exp: Experiment, column: Column, base, members: list[str], nonmembers: list[str],
                   general: list[str], corpus: list[str] | None, window: int) -> dict[str, Any]:
    """Everything that decides a cell, by part (the log names the parts that changed)."""
    from tuneguard.scoring.engine import tokenizer_digest

    versions = column.regime.versions()  # only where a regime names one: every other key stays as it was
    return {"schema": CELL_SCHEMA, "base": base.fingerprint, "tokenizer": tokenizer_digest(base.tokenizer),
            "members": key_hash(*members),
            "regime": [column.kind, plain(column.regime.params), *([versions] if versions else [])],
            "train": column.train.key_dict() if column.regime.trains else None,
            "nonmembers": key_hash(*nonmembers), "general": key_hash(*general), "attacks": exp.suite.to_dict(),
            "corpus": key_hash(*corpus) if corpus else None, "window": window, "seed": exp.seed,
            "scored_fields": SCORED_FIELDS}


def saved_cell(out: Path, cell_dir: Path, parts: dict[str, Any], label: str) -> dict | None:
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
