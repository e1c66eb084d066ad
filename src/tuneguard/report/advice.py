"""What to do next, once per report: the defences that fit the verdict, as command lines to run.

Command lines are filled from the run's settings where they say it (the base model, the files read: the commands
put them in ``settings["files"]``, the fine-tuning hyperparameters of an audit) and show a capitalised placeholder
where they do not.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from tuneguard.attacks.result import MIAResult
from tuneguard.report.verdict import Verdict


@dataclass
class Step:
    """One thing to do: what and why, and the command line that does it (or None)."""

    text: str
    command: str | None = None


def next_steps(result: MIAResult, verdict: Verdict) -> list[Step]:
    """The steps that fit ``verdict``; on a confounded split only the one that fixes it."""
    settings = result.settings
    files = settings.get("files") or {}
    base = settings.get("reference") or "BASE_MODEL"
    tuned = settings.get("fine_tuning") or {}
    steps = []
    if verdict.confounded:
        data = files.get("data") or files.get("members") or "DATA"
        steps.append(Step("Fix the split first: no leak, and no defence, can be judged on this one. Draw members "
                          "and non-members from one distribution: `tuneguard audit` splits one file at random, "
                          "fine-tunes on one part and attacks; then follow its report.",
                          _command("tuneguard audit", model=base, data=data, method=tuned.get("method"),
                                   out="AUDIT_DIR")))
        return steps
    if verdict.level == "unmeasured":
        steps.append(Step("Run the attacks that query the model (the default suite: --attacks all) to measure the "
                          "leak."))
        return steps
    if verdict.level == "none":
        n_non = max((a.metrics["n_nonmembers"] for a in result.attacks.values()), default=0)
        more = (" The lowest FPR measured here needs more non-members: TPR at 1% FPR needs at least 100 "
                f"(this run: {n_non})." if n_non < 100 else "")
        steps.append(Step("No defence is called for on this evidence. Audit again after changing the data or the "
                          f"training (more epochs memorise more).{more}"))
        return steps
    config = tuned.get("config") or {}
    data = files.get("data") or files.get("members") or "TRAINING_DATA"
    soft = _command("tuneguard defend soft", model=base, data=data, method=tuned.get("method"),
                    epochs=config.get("epochs"), lr=config.get("lr"),
                    max_length=config.get("max_length") or settings.get("training_max_length"), ratio=0.5,
                    out="SOFT_DIR")
    steps.append(Step("Fine-tune with SOFT: it paraphrases the texts the model memorises first (the lowest-loss "
                      "half here, --ratio 0.5), keeping utility close to plain fine-tuning.", soft))
    if files.get("members") and files.get("nonmembers"):
        steps.append(Step("Then attack the protected model with the same records, to see what SOFT bought.",
                          _command("tuneguard attack", target="SOFT_DIR/final", members=files["members"],
                                   nonmembers=files["nonmembers"], out="SOFT_DIR/audit")))
    else:
        steps.append(Step("To measure what a defence buys on your data, compare the regimes lora, soft and dp "
                          "(DP-SGD) side by side in one experiment file: `tuneguard run --help` lists them."))
    if verdict.level == "strong":
        steps.append(Step("The leak is strong: for a formal guarantee fine-tune with DP-SGD (the dp regime of "
                          "`tuneguard run`, e.g. epsilon = 8) and check the epsilon it delivers.",
                          _command("tuneguard audit-dp", model=base, data=data, epsilon="1,4,8",
                                   out="DP_AUDIT_DIR")))
    return steps


def _command(head: str, **options: object) -> str:
    """``head --option value ...`` for the options that are set, values shell-quoted."""
    parts = [head]
    for key, value in options.items():
        if value is not None:
            parts.append(f"--{key.replace('_', '-')} {shlex.quote(str(value))}")
    return " ".join(parts)
