"""The run record (``run.json``) that ``finetune`` and DP-SGD write next to a saved model or adapter, and that
``load_model`` reads for an adapter's base (so it lives with the models, below training).

Its presence marks a finished run. It names the base model (``base_ref``, and since schema 2 the base's weight
fingerprint), the settings (``config``: the TrainConfig, whose ``max_length`` is the training window), the data
digest and what the run cost. Records written before the schema number existed (schema 1) still load.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tuneguard.files import atomic_write_json, read_json

RUN_RECORD = "run.json"  # its file name, beside the saved model or adapter
RUN_SCHEMA = 2


@dataclass
class RunRecord:
    """What one fine-tuning run did (plain or DP-SGD: ``dp`` then holds the privacy accounting)."""

    status: str = "done"
    base_ref: str | None = None
    method: str = ""  # the TrainConfig method, or "lora+dp-sgd"
    config: dict = field(default_factory=dict)  # TrainConfig.to_dict()
    config_digest: str = ""
    data_digest: str = ""
    n_examples: int = 0
    processes: int = 1
    epochs_done: int = 0
    steps: int = 0
    loss_curve: list[float] = field(default_factory=list)
    lr_curve: list[float] = field(default_factory=list)  # the learning rate of each optimizer step
    epoch_loss: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    cpu_seconds: float = 0.0
    tokens: int = 0
    tokens_per_second: float = 0.0
    padding_fraction: float = 0.0
    trainable_parameters: int = 0
    dp: dict | None = None
    base_fingerprint: str | None = None  # None in schema-1 records
    schema: int = RUN_SCHEMA

    @property
    def max_length(self) -> int | None:
        """The training window in tokens (``config["max_length"]``)."""
        return self.config.get("max_length")

    def to_json(self) -> dict[str, Any]:
        """The plain form written to run.json (``dp`` absent for a non-private run, as before)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if out["dp"] is None:
            del out["dp"]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        """Read a run.json dict; one without a schema number is schema 1 (no base fingerprint)."""
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in data.items() if k in names}, "schema": data.get("schema", 1)})

    @classmethod
    def read(cls, path: str | Path) -> RunRecord:
        """Read a run.json; a corrupt one is a one-line error naming it (deleting its run redoes it)."""
        fix = f"delete {Path(path).parent} (or choose another output directory) to train again"
        return cls.from_json(read_json(path, fix=fix, expect=dict))

    def write(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_json())

    # Read access by run.json key, for callers that still treat the record as the dict it used to be.
    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_json().get(key, default)
