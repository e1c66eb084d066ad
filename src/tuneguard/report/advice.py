"""What to do next, once per report, as command lines to run.

Advice follows evidence: no step claims that a defence protects without a measurement behind it. Without a
comparison on record, a leak calls for ``tuneguard defend compare``, which measures the candidate defences on the
user's own data; with one (the ``compare.json`` it writes, passed as ``comparison`` or recorded in
``settings["comparison"]``), the advice names the regime it chose and quotes that regime's measured leak and utility.

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


def next_steps(result: MIAResult, verdict: Verdict, comparison: dict | None = None) -> list[Step]:
    """The steps that fit ``verdict``; on a confounded split only the one that fixes it. ``comparison``: a
    ``tuneguard defend compare`` result (compare.json), by default the one recorded in the result's settings."""
    settings = result.settings
    files = settings.get("files") or {}
    # The model to fine-tune again is the target's base; the reference may be any model (a shadow fine-tune, say).
    base = settings.get("base") or settings.get("reference") or "BASE_MODEL"
    tuned = settings.get("fine_tuning") or {}
    comparison = comparison if comparison is not None else settings.get("comparison")
    steps = []
    if verdict.confounded:
        data = files.get("data") or files.get("members") or "DATA"
        steps.append(Step("Fix the split first: no leak, and no defence, can be judged on this one. Draw members "
                          "and non-members from one distribution: `tuneguard audit` splits one file at random, "
                          "fine-tunes on one part and attacks; then follow its report.",
                          command_line("tuneguard audit", model=base, data=data, method=tuned.get("method"),
                                       out="AUDIT_DIR")))
        return steps
    if verdict.level == "unmeasured":
        steps.append(Step("Run the attacks that query the model (the default suite: --attacks fast) to measure the "
                          "leak."))
        return steps
    if verdict.level == "none":
        n_non = max((a.metrics["n_nonmembers"] for a in result.attacks.values()), default=0)
        more = (" The lowest FPR measured here needs more non-members: TPR at 1% FPR needs at least 100 "
                f"(this run: {n_non})." if n_non < 100 else "")
        steps.append(Step("No defence is called for on this evidence. Audit again after changing the data or the "
                          f"training (more epochs memorise more).{more}"))
        return steps
    if comparison:
        return _measured_steps(comparison, base)
    return [_compare_step(result, base, files, tuned)]


def _compare_step(result: MIAResult, base: str, files: dict, tuned: dict) -> Step:
    """Measure before choosing: `defend compare` on the training data with this run's fine-tuning settings."""
    from tuneguard.privacy_target import suggested_target

    settings = result.settings
    config = tuned.get("config") or {}
    data = files.get("data") or files.get("members") or "TRAINING_DATA"
    # compare splits DATA in half: an audit's data is its members and non-members, an attack's its members file.
    n_data = settings.get("members", 0) + (settings.get("nonmembers", 0) if files.get("data") else 0)
    target = suggested_target(n_data - round(n_data / 2))
    command = command_line("tuneguard defend compare", model=base, data=data, method=tuned.get("method"),
                           epochs=config.get("epochs"), lr=config.get("lr"),
                           max_length=config.get("max_length") or settings.get("training_max_length"),
                           target=target, out="COMPARE_DIR")
    return Step("Measure which way of fine-tuning meets your privacy target on your own data before choosing one: "
                "`tuneguard defend compare` trains each candidate regime on a shadow split of this data with these "
                "settings, attacks it with the strongest attacks, and recommends the most useful regime that meets "
                f"the target ({target} here: the strongest attack's figure at most the bound), with the command that "
                "trains the final model. Which regime protects enough depends on the data and the settings: none is "
                "recommended here without that measurement.", command)


def _measured_steps(comparison: dict, base: str) -> list[Step]:
    """The regime a comparison chose, with its measured leak and utility; or, when none met the target, the
    closest and what that leaves."""
    from tuneguard.privacy_target import Target
    from tuneguard.report.compare import measured_text

    target = Target.from_json(comparison["target"])
    rows = {row["name"]: row for row in comparison["rows"]}
    shadow = (f"on a shadow split of your data ({comparison.get('members', '?')} members, "
              f"{comparison.get('nonmembers', '?')} non-members)")
    chosen = comparison.get("chosen")
    if chosen:
        row = rows[chosen]
        steps = [Step(f"Fine-tune with {row['what']}: {shadow} it was the most useful of the {len(rows)} regimes "
                      f"compared whose strongest attack met your target {target.text}: {measured_text(row, target)}. "
                      "Train the final model on all the data:", comparison.get("command"))]
        if "epsilon" in row.get("options", {}):  # a regime that claims an epsilon: audit the claim
            steps.append(Step("Check the epsilon the final DP-SGD run delivers empirically (a lower bound from "
                              "canaries):", command_line("tuneguard audit-dp", model=base,
                                                         data=comparison.get("data") or "TRAINING_DATA",
                                                         epsilon=row["options"]["epsilon"], out="DP_AUDIT_DIR")))
        return steps
    closest = rows.get(comparison.get("closest") or "")
    near = f" The closest was {closest['what']}: {measured_text(closest, target)}." if closest else ""
    return [Step(f"None of the {len(rows)} regimes compared {shadow} met your target {target.text}.{near} Loosen "
                 "the target if that is acceptable, or leave these records out of the fine-tuning: the pretrained "
                 "model never saw them.")]


def command_line(head: str, **options: object) -> str:
    """``head --option value ...`` for the options that are set, values shell-quoted."""
    parts = [head]
    for key, value in options.items():
        if value is not None:
            parts.append(f"--{key.replace('_', '-')} {shlex.quote(str(value))}")
    return " ".join(parts)
