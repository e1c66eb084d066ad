"""The typed settings of an experiment file: its datasets, attack suite and regime columns, the top-level keys, and the
whole parsed file (:class:`Experiment`), with :func:`plain` to write declared parameters back as JSON."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tuneguard.attacks.options import attack_option
from tuneguard.models.device import DEVICE_HELP, DEVICE_MAPS, DTYPE_CHOICES, DeviceSettings
from tuneguard.params import Params, param
from tuneguard.regimes.base import Regime
from tuneguard.train import TrainConfig


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
    """The attacks run on every cell (top-level ``attacks``) and how (the ``[attack_options]`` table): the options
    ``run_attacks`` takes are its declarations (:mod:`tuneguard.attacks.options`). The fields, their order and values
    are part of every cell's key (``cells.cell_key_parts``): a new one, or a new order, re-scores every saved cell."""

    attacks: list[str] = param(["soft-table"], "attack and suite names (tuneguard.attacks.ATTACKS; suites fast, all, "
                               "soft-table: SOFT's Table 1, the default)")
    params: dict = param({}, "per-attack parameters: {attack = {parameter = value}}")
    # 0 allowed, as experiment files always could (the command line asks for at least one shot).
    n_shots: int = attack_option("n_shots", ge=0)
    max_length: int | None = attack_option("max_length", help="scoring window in tokens (default: each regime's "
                                                               "training window)")
    batch_size: int = attack_option("batch_size")
    n_boot: int = attack_option("n_boot")
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
class TopLevel(Params):
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


def plain(value: Any) -> Any:
    """Declared parameters (nested ones too) as plain JSON values."""
    if isinstance(value, Params):
        return {k: plain(v) for k, v in value.to_dict().items()}
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
