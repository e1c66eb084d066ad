"""``audit``: split a dataset, fine-tune on the members, attack, report — each stage saved and resumable."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from tuneguard.attacks import make_attacks, run_attacks
from tuneguard.attacks.result import MIAResult
from tuneguard.data import Split, split_members
from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_write_json, read_json
from tuneguard.train import TrainConfig, finetune

log = logging.getLogger(__name__)


def load_or_make_split(path: Path, texts: list[str], *, member_fraction: float, seed: int) -> Split:
    """The member/non-member split saved at ``path``, made (seeded) and saved on the first run."""
    if path.is_file():
        # The target in the same directory was trained on this split: a new one needs a new run as well.
        fix = f"use another output directory, or delete {path.parent} to start the audit over"
        saved = read_json(path, fix=fix, expect=dict)
        members, nonmembers = saved.get("members"), saved.get("nonmembers")
        if not (isinstance(members, list) and isinstance(nonmembers, list)):
            raise TuneguardError(f"{path} is not a tuneguard split (no members and nonmembers lists); {fix}")
        if sorted(members + nonmembers) != sorted(texts):
            raise TuneguardError(f"{path} holds a split of other texts; use another output directory")
        return Split(members, nonmembers)
    split = split_members(texts, member_fraction=member_fraction, seed=seed)
    atomic_write_json(path, {"seed": seed, "member_fraction": member_fraction, "members": split.members,
                             "nonmembers": split.nonmembers})
    return split


def audit(model: str, texts: list[str], out_dir: str | Path, *, train: TrainConfig | None = None,
          member_fraction: float = 0.5, attacks: str | list[str] = "all", params: dict[str, dict[str, Any]] | None
          = None, seed: int = 0, progress: bool = True, source: str | None = None,
          records: Sequence[int] | None = None, **attack_options: Any) -> tuple[MIAResult, dict[str, Path]]:
    """Fine-tune ``model`` on a seeded member share of ``texts`` and attack it with the base model as reference.

    Writes ``out_dir/split.json``, ``out_dir/target/`` (the fine-tuned model and run record) and the report in
    ``out_dir`` (results.json, exposure.jsonl, report.html, ROC plots). ``source`` names the file the texts came
    from and ``records`` each text's 0-based record number in it (default: its position in ``texts``), so the
    records at risk name the user's records. Texts are scored within the training window (``run_attacks``
    reads it from the target's run record) unless ``max_length`` says otherwise: tokens past it were never trained
    on and would only dilute the signal. Returns the result and the report's paths.
    """
    from tuneguard.report import Members, write_mia_report

    out_dir = Path(out_dir)
    train = train or TrainConfig(seed=seed)
    make_attacks(attacks, params)  # a bad attack parameter is refused now, not after the fine-tuning
    split = load_or_make_split(out_dir / "split.json", texts, member_fraction=member_fraction, seed=seed)
    run = finetune(model, split.members, out_dir / "target", train, progress=progress)
    result = run_attacks(run.model, split.members, split.nonmembers, attacks=attacks, reference=model,
                         params=params, seed=seed, progress=progress,
                         title=f"Membership inference audit: {model} fine-tuned ({run.record.method}) "
                               f"on {len(split.members)} texts", **attack_options)
    record = run.record
    result.settings["fine_tuning"] = {"method": record.method, "config": record.config,
                                      "epoch_loss": record.epoch_loss, "train_seconds": record.train_seconds,
                                      "n_examples": record.n_examples}
    if source:
        result.settings["files"] = {"data": source}
    position = {text: i for i, text in enumerate(texts)}
    rows = [position[t] if records is None else records[position[t]] for t in split.members]
    return result, write_mia_report(out_dir, result, members=Members(split.members, rows, file=source))
