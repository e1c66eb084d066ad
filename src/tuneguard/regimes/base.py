"""The regime interface: declared options, the training config it uses, and ``build`` (base model -> target)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from tuneguard.plugin import Plugin
from tuneguard.train import TrainConfig

if TYPE_CHECKING:
    from tuneguard.models import LoadedModel


class Regime(Plugin):
    """One column of the experiment table.

    ``Params`` declares the regime's options (the keys of its TOML table besides ``kind`` and ``train``);
    ``expands`` names list options that make one column per value (see :meth:`columns`); ``paths`` the options
    that name files, read relative to the experiment file. ``trains`` is False for a regime that uses the base model
    as it is (its cells then do not depend on the training settings). ``knob``: the defence's privacy-utility knob,
    (option, symbol) such as ("ratio", "ρ"); the frontier plot joins the columns of one defence in its order.
    ``reference_point``: the frontier plot draws its columns as reference points (the span a defence moves along:
    the base model and plain full fine-tuning), never joined into a defence's line; the run records it per column.
    ``per_sample_gradients``: it trains with per-sample gradient clipping (DP-SGD), and ``paraphrases``: it trains a
    warm-up run of ``warmup_epochs`` and paraphrases a ``ratio`` share of the members first (SOFT; its ``Params``
    declare both): the extra costs of ``defend compare``'s time estimate. ``command``: the ``tuneguard`` command that
    trains a final model with this regime (with :meth:`command_options`), None for one that trains nothing.
    """

    kind = "regime"
    expands: ClassVar[dict[str, str]] = {}
    paths: ClassVar[tuple[str, ...]] = ()
    trains: ClassVar[bool] = True
    knob: ClassVar[tuple[str, str] | None] = None
    reference_point: ClassVar[bool] = False
    per_sample_gradients: ClassVar[bool] = False
    paraphrases: ClassVar[bool] = False
    command: ClassVar[str | None] = None

    @classmethod
    def columns(cls, name: str, options: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """The (column name, options) pairs one TOML entry makes; by default one column with the options as given."""
        return [(name, options)]

    @classmethod
    def option_names(cls) -> list[str]:
        """Every option the TOML table of this regime may set (declared parameters, then expanded lists)."""
        return [p.name for p in cls.Params.describe()] + list(cls.expands)

    @classmethod
    def declarations(cls) -> dict[str, Any]:
        """What a run records of this regime in each column's settings, for the report (which imports no regime):
        ``reference_point`` and ``trains``."""
        return {"reference_point": cls.reference_point, "trains": cls.trains}

    def command_options(self) -> tuple[dict[str, Any], list[str]]:
        """This column's options as :attr:`command` takes them (``--name value`` each, in words the command reads),
        and any ``--flag value`` pairs it repeats; by default none."""
        return {}, []

    def versions(self) -> dict[str, int]:
        """Versions of how this column's options build its model, part of its cell key: a regime whose algorithm
        changed for some options names them here, so cells made before the change are rebuilt, not reused (by
        default none, and the key is what it always was)."""
        return {}

    def train_config(self, train: TrainConfig) -> TrainConfig:
        """The TrainConfig this regime trains with, from the experiment's (by default unchanged)."""
        return train

    def build(self, base: LoadedModel, members: list[str], cell_dir: Path, train: TrainConfig, *,
              progress: bool = True) -> tuple[LoadedModel, dict[str, Any]]:
        """The target model made from ``base`` and the member texts (its stages saved under ``cell_dir``), and the
        facts the table shows about it; ``train_size`` (texts trained on) is always among them."""
        raise NotImplementedError
