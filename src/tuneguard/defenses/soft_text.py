"""A SOFT run's recipe and removed data in words, for its terminal line and the experiment report (which renders
them without importing SOFT's models and paraphrasers)."""

from __future__ import annotations


def recipe_text(recipe: dict) -> str:
    """The recipe options that differ from tuneguard's default SOFT, in words ("" when none does)."""
    parts = []
    if recipe.get("ban") == "every-word":
        parts.append("every-word ban")
    if recipe.get("select_by") == "gain":
        parts.append("selection by gain")
    if recipe.get("rewrite_span") == "second-half":
        parts.append("second half rewritten" + (", first dropped" if recipe.get("drop_unrewritten") else ""))
    if recipe.get("schedule") == "authors":
        parts.append("authors' schedule (every member rewritten; epoch 1 with the selected replaced)")
    if recipe.get("holdout_scored_as_members"):
        parts.append(f"{recipe['holdout_scored_as_members']:.0%} of members held out, scored as members")
    return ", ".join(parts)


def removal_text(summary: dict) -> str:
    """'x% of member tokens never trained on (data removal, not obfuscation)' for a run that removes data, else ''."""
    share = summary.get("never_trained_share")
    if not share:
        return ""
    return f"{share:.1%} of member tokens never trained on (data removal, not obfuscation)"
