"""Where a SOFT model's membership signal comes from: the member tokens it was trained on in some form, or the rest.

    python bench/soft_leak.py bench/frontier_mini.toml --dataset PubMed     # after `tuneguard run` of that file

For every SOFT column of the experiment (and the full fine-tuning run it protects, as the reference), each scored
token's gain is its log-prob under the target minus under the base model (the ratio attack's signal, per token). A
member's tokens are split by whether the token also occurs in the training window of what the model was trained on
in its place ("retained": its paraphrase, its rewritten second half, or itself when unselected or when every
paraphrase failed) or not; a member dropped or held out of training retains nothing. The retained-token share is
computed by ``tuneguard.defenses.retained`` (the figure SOFT itself reports), per member category (unselected /
paraphrased / failed / dropped / held out), with its chance baseline: the share against non-members cut to as many
tokens. Under the authors' schedule (or a warm start) the originals were also trained on for the first epoch(s):
the share here is that of the final phase.

The table gives each group's mean gain per token with a 95% bootstrap CI over texts; the two groups are different
kinds of token (a paraphrase keeps function words and technical terms, changes the rest), so compare each with the
non-members' gain as a description, not a controlled test. Three AUCs of the mean gain per text against the
non-members: the members as written (the ratio attack), the texts trained on in their place (how much the model
memorised; members never trained on left out) and, across members, Spearman's rank correlation of a member's mean
gain with its retained share (does a member leak more when more of it was trained on?).

Reads the saved cells (models, paraphrases.jsonl, soft.json); scores through the on-disk cache, so after the run it
only reads. Writes soft_leak.json beside the experiment's results.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from tuneguard.defenses.retained import pooled, retained_shares, trained_window
from tuneguard.defenses.soft import CATEGORIES, in_place
from tuneguard.experiment import cell_path, draw_texts, load_experiment
from tuneguard.files import atomic_write_json, read_json, read_jsonl
from tuneguard.models import load_model
from tuneguard.report.table import format_table
from tuneguard.scoring import ScoringEngine, TokenScores


def gains(target: ScoringEngine, base: dict[str, TokenScores], texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per text: its scored token ids and each token's log-prob gain (target minus the base's scores of it)."""
    return [(x.token_ids, x.logprobs - base[text].logprobs)
            for x, text in zip(target.score(texts), texts, strict=True)]


def mean_ci(per_text: list[np.ndarray], seed: int = 0) -> tuple[float, list[float]]:
    """Mean gain per token over the texts' tokens, with a 95% bootstrap CI resampling texts."""
    sums = np.array([g.sum() for g in per_text])
    counts = np.array([len(g) for g in per_text])
    picks = np.random.default_rng(seed).integers(0, len(sums), (2000, len(sums)))
    boot = sums[picks].sum(axis=1) / np.maximum(counts[picks].sum(axis=1), 1)
    return float(sums.sum() / counts.sum()), [float(v) for v in np.percentile(boot, [2.5, 97.5])]


def split_members(member_gains, trained_as: list[list[str]], tokenizer, window: int):
    """Each member's gains on the tokens that occur in the training windows of what it was trained as, and on the
    others (all of them for a member never trained on)."""
    retained, other = [], []
    for (ids, g), texts in zip(member_gains, trained_as, strict=True):
        seen = {t for text in texts for t in trained_window(text, tokenizer, window)}
        mask = np.isin(ids, list(seen))
        retained.append(g[mask])
        other.append(g[~mask])
    return retained, other


def auc(member: list[np.ndarray], nonmember: list[np.ndarray]) -> float:
    """The ratio attack's AUC: mean gain per text, members against non-members."""
    return float(roc_auc_score([1] * len(member) + [0] * len(nonmember), [g.mean() for g in member + nonmember]))


def placement(cell, kind: str, members: list[str]) -> tuple[list[str], list[list[str]]]:
    """Each member's category and what the column's final run trained on in its place."""
    if kind != "soft":
        return ["as written"] * len(members), [[m] for m in members]
    summary = read_json(cell / "soft" / "soft.json").get("summary") or {}
    return in_place(members, read_jsonl(cell / "soft" / "paraphrases.jsonl"), summary.get("held_out_members") or [])


def _ci_text(figure: tuple[float, list[float]] | None) -> str | None:
    if figure is None:
        return None
    mean, (lo, hi) = figure
    return f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _share_text(figures: dict) -> str:
    return f"{figures['share']:.3f} ({figures['chance']:.3f})" if figures["tokens"] else "-"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiment", help="the experiment TOML whose cells were run")
    ap.add_argument("--dataset", required=True, help="dataset name in the TOML")
    args = ap.parse_args(argv)
    exp = load_experiment(args.experiment)
    ds = next((d for d in exp.datasets if d.name == args.dataset), None)
    if ds is None:
        sys.exit(f"soft_leak: no dataset {args.dataset!r} in {args.experiment}")
    members, nonmembers = draw_texts(ds, exp.seed)
    base = load_model(exp.model)
    tok = base.tokenizer
    columns = [c for c in exp.regimes if c.kind in ("soft", "full")]
    rows, out, base_scores = [], {}, {}
    for column in columns:
        cell = cell_path(exp, ds.name, column.name)
        model_dir = cell / ("soft/final" if column.kind == "soft" else "model")
        if not (model_dir / "run.json").is_file():
            print(f"skipped {column.name}: {model_dir} has no finished model", file=sys.stderr)
            continue
        window = exp.suite.max_length or column.train.max_length
        trained_window_length = column.train.max_length  # what training read of each text
        categories, trained_as = placement(cell, column.kind, members)
        shares = retained_shares(members, trained_as, tok, trained_window_length, pool=nonmembers)
        by_category = {c: pooled([s for s, k in zip(shares, categories) if k == c])
                       for c in (*CATEGORIES, "as written") if c in categories}
        replaced = [texts[0] for texts in trained_as if texts]
        texts = members + nonmembers + replaced
        scored = base_scores.setdefault(window, {})  # every column's members and non-members: scored once
        todo = [x for x in dict.fromkeys(texts) if x not in scored]
        scored.update(zip(todo, ScoringEngine(base, max_length=window, progress=False).score(todo)))
        target = ScoringEngine(load_model(model_dir), max_length=window, progress=False)
        mem = gains(target, scored, members)
        non = [g for _, g in gains(target, scored, nonmembers)]
        kept, other = split_members(mem, trained_as, tok, trained_window_length)
        some_kept, some_other = sum(map(len, kept)) > 0, sum(map(len, other)) > 0
        partial = some_kept and some_other  # else the split (and its correlation) says nothing
        member_gain = [g for _, g in mem]
        trained = [g for _, g in gains(target, scored, replaced)]
        everyone = pooled(shares)
        figures = {"nonmember": mean_ci(non), "retained": mean_ci(kept) if some_kept else None,
                   "not_retained": mean_ci(other) if some_other else None,
                   "retained_share": everyone["share"], "chance_share": everyone["chance"],
                   "retained_by_category": by_category, "auc_members": auc(member_gain, non),
                   "auc_trained_texts": auc(trained, non),
                   "spearman_gain_vs_retained_share": float(spearmanr([g.mean() for g in member_gain],
                                                                      [s["share"] for s in shares])[0])
                   if partial else None}
        out[column.name] = figures
        rows.append({"column": column.name, "non-member gain": _ci_text(figures["nonmember"]),
                     "member retained": _ci_text(figures["retained"]),
                     "member not retained": _ci_text(figures["not_retained"]),
                     "retained share (chance)": _share_text(everyone),
                     "by category": "; ".join(f"{c} {_share_text(f)}" for c, f in by_category.items()),
                     "AUC members": round(figures["auc_members"], 3),
                     "AUC trained texts": round(figures["auc_trained_texts"], 3),
                     "Spearman gain~retained": round(figures["spearman_gain_vs_retained_share"], 3)
                     if partial else None})
    print(format_table(rows, list(rows[0]) if rows else ["column"],
                       title=f"{ds.name}: log-prob gain per token, target over base (nats); retained-token share "
                             f"(chance: against non-members of as many tokens)"))
    atomic_write_json(cell_path(exp, ds.name) / "soft_leak.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
