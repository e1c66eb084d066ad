"""The SOFT regime: paraphrase the members the model memorises first, then fine-tune (``defenses.soft``).

A column's figures (``extra``) carry the SOFT summary (its recipe options included), the retained-token share per
member category with its chance baseline (``retained``) and ``held_out_members``: the indices, among the members
``build`` was given, of those SOFT held out of training (``holdout_scored_as_members``). The experiment scores every
member it gave as a member, so the held-out ones are scored as members with no further step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tuneguard.defenses.soft import SoftConfig
from tuneguard.errors import TuneguardError
from tuneguard.params import param
from tuneguard.regimes.base import Regime
from tuneguard.train import TrainConfig


@dataclass
class SoftOptions(SoftConfig):
    method: str = param("full", "fine-tuning method of the run SOFT protects (and is compared with)")


class Soft(Regime):
    name = "soft"
    summary = "SOFT: paraphrase the lowest-loss members, then fine-tune (ratios = [...]: one column per ratio)"
    Params = SoftOptions
    expands = {"ratios": "one column per selection ratio ρ"}
    paths = ("reference",)
    knob = ("ratio", "ρ")
    paraphrases = True
    command = "tuneguard defend soft"

    @classmethod
    def columns(cls, name, options):
        options = dict(options)
        if "ratios" not in options:
            ratio = options.get("ratio", next(f.default for f in dataclasses.fields(cls.Params) if f.name == "ratio"))
            return [(f"{name} ρ={ratio:g}", options)]
        if "ratio" in options:
            raise TuneguardError(f"regime {name!r} sets both 'ratio' and 'ratios': keep one")
        ratios = options.pop("ratios")
        if not (isinstance(ratios, list) and ratios and all(isinstance(r, (int, float)) and not isinstance(r, bool)
                                                            for r in ratios)):
            raise TuneguardError(f"regime {name!r}: 'ratios' must be a non-empty list of numbers, got {ratios!r}")
        return [(f"{name} ρ={r:g}", {**options, "ratio": r}) for r in ratios]

    def command_options(self):
        """The ratio and paraphraser, the recipe options that differ from `defend soft`'s defaults, and one
        ``--paraphraser-param`` per paraphraser option."""
        import shlex

        p, default = self.params, SoftConfig()
        changed = {name: getattr(p, name) for name in ("warmup_epochs", "start", "on_failure")
                   if getattr(p, name) != getattr(default, name)}
        pairs = [f"--paraphraser-param {shlex.quote(f'{k}={v}')}" for k, v in p.paraphraser_options.items()]
        return {"ratio": f"{p.ratio:g}", "paraphraser": p.paraphraser, **changed}, pairs

    def versions(self):
        from tuneguard.defenses.soft import AUTHORS_SCHEDULE_VERSION

        return {"schedule": AUTHORS_SCHEDULE_VERSION} if self.params.schedule == "authors" else {}

    def train_config(self, train: TrainConfig) -> TrainConfig:
        from tuneguard.defenses.soft import check_epochs

        train = train.replace(method=self.params.method)
        check_epochs(self.params, train)  # the authors' schedule needs 2 epochs: refused when the file is read
        return train

    def soft_config(self) -> SoftConfig:
        """The SOFT settings of this column (every option but ``method``)."""
        return SoftConfig(**{f.name: getattr(self.params, f.name) for f in dataclasses.fields(SoftConfig)})

    def build(self, base, members, cell_dir, train, *, progress=True):
        from tuneguard.defenses.soft import run_soft

        config = self.soft_config()
        soft = run_soft(base, members, cell_dir / "soft", train=train, config=config, progress=progress)
        return soft.model, {"soft": soft.summary, "soft_ratio": config.ratio, "train_size": soft.summary["train_size"],
                            "held_out_members": soft.held_out, "retained": soft.summary["retained"]}
