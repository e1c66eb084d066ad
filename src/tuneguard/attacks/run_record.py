"""The target's tuneguard run record (``run.json`` beside a saved model or adapter), read by the attacks: the
window it was trained on, its base model, its fine-tuning set-up."""

from __future__ import annotations

import json
from pathlib import Path

from tuneguard.models import LoadedModel
from tuneguard.models.record import RUN_RECORD, RunRecord


def record_path(target: LoadedModel | str | Path) -> Path | None:
    """Where the target's run record is: beside its adapter (``meta["adapter"]``) or in its model directory."""
    if isinstance(target, LoadedModel):
        where = Path(target.meta.get("adapter") or target.ref)
    else:
        where = Path(target).expanduser()
    path = where / RUN_RECORD
    return path if path.is_file() else None


def run_record(target: LoadedModel | str | Path) -> RunRecord | None:
    """The target's run record, or None when it has none (a pretrained model, a model trained elsewhere)."""
    path = record_path(target)
    return RunRecord.read(path) if path else None


def training_window(target: LoadedModel | str | Path) -> int | None:
    """``max_length`` of the target's training run (tokens per text, special tokens included), if recorded."""
    record = run_record(target)
    window = record.max_length if record else None
    return window if isinstance(window, int) and not isinstance(window, bool) and window > 0 else None


def recorded_base(target: LoadedModel | str | Path) -> str | None:
    """The base model the target was fine-tuned from, without loading it: ``base_ref`` of a loaded target, else
    the run record's, else a PEFT adapter's ``base_model_name_or_path``."""
    if isinstance(target, LoadedModel):
        return target.base_ref
    record = run_record(target)
    base = record.base_ref if record else None
    config = Path(target).expanduser() / "adapter_config.json"
    if not base and config.is_file():
        base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    return base or None
