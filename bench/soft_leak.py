"""Where a SOFT model's membership signal comes from: the member tokens its paraphrases kept, or the rest.

    python bench/soft_leak.py bench/frontier_mini.toml --dataset PubMed     # after `tuneguard run` of that file

For every SOFT column of the experiment (and the full fine-tuning run it protects, as the reference), each scored
token's gain is its log-prob under the target minus under the base model (the ratio attack's signal, per token). A
member's tokens are split by whether the token also occurs in the text the model was trained on instead of it, its
paraphrase ("kept"), or not ("not kept"); a member left as the original (failed gate) keeps all its tokens. The
table gives each group's mean gain per token with a 95% bootstrap CI over texts and the kept tokens' share; the two
groups are different kinds of token (a paraphrase keeps function words and technical terms, changes the rest), so
compare each with the non-members' gain as a description, not a controlled test. Three AUCs of the mean gain per
text against the non-members: the members as written (the ratio attack), their paraphrases (what the model was
trained on: how much it memorised) and, across members, Spearman's rank correlation of a member's mean gain with its
kept share (does a member leak more when its paraphrase kept more of it?).

Reads the saved cells (models, paraphrases.jsonl); scores through the on-disk cache, so after the run it only reads.
Writes soft_leak.json beside the experiment's results.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from tuneguard.experiment import cell_path, draw_texts, load_experiment
from tuneguard.files import atomic_write_json, read_jsonl
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


def split_members(member_gains, members: list[str], trained_as: dict[str, str], tokenizer):
    """Each member's gains on the tokens its training text kept and on the others."""
    kept, other = [], []
    for (ids, g), text in zip(member_gains, members, strict=True):
        seen = set(tokenizer(trained_as.get(text, text), add_special_tokens=False)["input_ids"])
        mask = np.isin(ids, list(seen))
        kept.append(g[mask])
        other.append(g[~mask])
    return kept, other


def auc(member: list[np.ndarray], nonmember: list[np.ndarray]) -> float:
    """The ratio attack's AUC: mean gain per text, members against non-members."""
    return float(roc_auc_score([1] * len(member) + [0] * len(nonmember), [g.mean() for g in member + nonmember]))


def _ci_text(figure: tuple[float, list[float]]) -> str:
    mean, (lo, hi) = figure
    return f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]"


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
    columns = [c for c in exp.regimes if c.kind in ("soft", "full")]
    rows, out, base_scores = [], {}, {}
    for column in columns:
        cell = cell_path(exp, ds.name, column.name)
        model_dir = cell / ("soft/final" if column.kind == "soft" else "model")
        if not (model_dir / "run.json").is_file():
            print(f"skipped {column.name}: {model_dir} has no finished model", file=sys.stderr)
            continue
        window = exp.suite.max_length or column.train.max_length
        trained_as = {r["original"]: r["paraphrase"] for r in read_jsonl(cell / "soft" / "paraphrases.jsonl")
                      if r["outcome"] == "paraphrased"} if column.kind == "soft" else {}
        texts = members + nonmembers + list(trained_as.values())
        scored = base_scores.setdefault(window, {})  # every column's members and non-members: scored once
        todo = [x for x in dict.fromkeys(texts) if x not in scored]
        scored.update(zip(todo, ScoringEngine(base, max_length=window, progress=False).score(todo)))
        target = ScoringEngine(load_model(model_dir), max_length=window, progress=False)
        mem = gains(target, scored, members)
        non = [g for _, g in gains(target, scored, nonmembers)]
        kept, other = split_members(mem, members, trained_as, base.tokenizer)
        n_kept, n_other = sum(map(len, kept)), sum(map(len, other))
        shares = [len(k) / (len(k) + len(o)) for k, o in zip(kept, other)]
        member_gain = [g for _, g in mem]
        trained = [g for _, g in gains(target, scored, [trained_as.get(m, m) for m in members])]
        figures = {"nonmember": mean_ci(non), "kept": mean_ci(kept), "not_kept": mean_ci(other) if n_other else None,
                   "kept_share": n_kept / (n_kept + n_other), "auc_members": auc(member_gain, non),
                   "auc_trained_texts": auc(trained, non),
                   "spearman_gain_vs_kept_share": float(spearmanr([g.mean() for g in member_gain], shares)[0])
                   if n_other else None}
        out[column.name] = figures
        rows.append({"column": column.name, "non-member gain": _ci_text(figures["nonmember"]),
                     "member kept": _ci_text(figures["kept"]),
                     "member not kept": _ci_text(figures["not_kept"]) if n_other else None,
                     "kept share": round(figures["kept_share"], 3), "AUC members": round(figures["auc_members"], 3),
                     "AUC trained texts": round(figures["auc_trained_texts"], 3),
                     "Spearman gain~kept": round(figures["spearman_gain_vs_kept_share"], 3) if n_other else None})
    print(format_table(rows, list(rows[0]) if rows else ["column"],
                       title=f"{ds.name}: log-prob gain per token, target over base (nats)"))
    atomic_write_json(cell_path(exp, ds.name) / "soft_leak.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
