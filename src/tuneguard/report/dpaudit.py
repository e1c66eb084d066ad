"""The DP audit's outputs: terminal table, audit.json, a self-contained report.html and the bound-vs-epsilon plot."""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

from tuneguard.dpaudit.audit import DPAuditResult, RunAudit
from tuneguard.files import atomic_write_json, atomic_write_text
from tuneguard.report.figures import save_figure
from tuneguard.report.html import html_page, html_table, img_tag
from tuneguard.report.table import format_table, printable

COLUMNS = ["run", "claimed epsilon", "delta", "epsilon lower bound", "bound at delta=0", "correct / guesses",
           "TPR@1%FPR", "AUC", "held-out perplexity"]
PLOT = "bound_vs_epsilon.png"


def table_rows(result: DPAuditResult) -> list[dict]:
    """One row per run, cells ready for the terminal and HTML tables."""
    rows = []
    for run in result.runs:
        b = run.bound
        tpr = None if run.tpr is None else (f"{run.tpr:.3f}" + (f" [{run.tpr_ci[0]:.3f}, {run.tpr_ci[1]:.3f}]"
                                                                if run.tpr_ci else ""))
        rows.append({"run": run.name, "claimed epsilon": "inf (no DP)" if math.isinf(run.epsilon) else run.epsilon,
                     "delta": f"{run.delta:.2g}",
                     "epsilon lower bound": f"{b.epsilon_lower_bound:.3f} ({b.confidence:.0%})",
                     "bound at delta=0": run.bound_pure.epsilon_lower_bound,
                     "correct / guesses": f"{b.correct} / {b.guesses} (k+ {b.k_plus}, k- {b.k_minus})",
                     "TPR@1%FPR": tpr, "AUC": run.auc, "held-out perplexity": run.perplexity})
    return rows


def audit_table(result: DPAuditResult) -> str:
    """The terminal table."""
    s = result.settings
    title = (f"One-run DP audit: {printable(s['model'])}, {s['n_canaries']} canaries ({s['n_included']} trained on), "
             f"base held-out perplexity {result.base_perplexity:.2f}")
    return format_table(table_rows(result), COLUMNS, title=title)


def write_audit_report(result: DPAuditResult) -> dict[str, Path]:
    """Write audit.json, bound_vs_epsilon.png and report.html into the audit's directory; return their paths."""
    out = result.out_dir
    paths = {"json": atomic_write_json(out / "audit.json", result.to_json()),
             "plot": bound_plot(result.runs, out / PLOT)}
    s = result.settings
    method = (f"{s['n_canaries']} canaries ({', '.join(s['canaries']['kinds'])}, {s['canaries']['length']} tokens) "
              f"were each trained on with probability 1/2 (seeded draw, canaries.jsonl). Each run's canaries are "
              f"scored with {s['score']}; the audit guesses 'in' for the k+ highest and 'out' for the k- lowest "
              f"(a grid of {result.runs[0].bound.grid_size} (k+, k-) pairs, Bonferroni-corrected) and converts the "
              f"correct guesses into the largest epsilon that (epsilon, delta)-DP is rejected at, with confidence "
              f"{result.runs[0].bound.confidence:.0%} (Steinke, Nasr & Jagielski, NeurIPS 2023). A bound above the "
              f"claimed epsilon means the training did not deliver its guarantee. Base model held-out perplexity: "
              f"{result.base_perplexity:.2f}.")
    body = f"<p>{escape(method)}</p>"
    sections = [("Audit", body + html_table(table_rows(result), COLUMNS)),
                ("Lower bound against the claimed epsilon", img_tag(paths["plot"], alt="epsilon lower bound"))]
    page = html_page(f"One-run DP audit of {s['model']}", sections, settings=s)
    paths["html"] = atomic_write_text(out / "report.html", page)
    return paths


def bound_plot(runs: list[RunAudit], path: Path) -> Path:
    """The audited lower bound of each DP run against its claimed epsilon, the no-DP run's bound as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dp = [r for r in runs if not math.isinf(r.epsilon)]
    free = [r for r in runs if math.isinf(r.epsilon)]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    top = max([r.epsilon for r in dp] + [r.bound.epsilon_lower_bound for r in runs] + [1.0])
    ax.plot([0, top], [0, top], color="grey", ls="--", lw=0.8, label="claimed epsilon (bound = claim)")
    if dp:
        ax.plot([r.epsilon for r in dp], [r.bound.epsilon_lower_bound for r in dp], "o-", color="C0",
                label=f"audited lower bound ({dp[0].bound.confidence:.0%})")
        ax.plot([r.epsilon for r in dp], [r.bound_pure.epsilon_lower_bound for r in dp], "s:", color="C1",
                ms=4, label="audited lower bound, delta = 0")
    for r in free:
        ax.axhline(r.bound.epsilon_lower_bound, color="C3", ls="-.", lw=1,
                   label=f"no DP: lower bound {r.bound.epsilon_lower_bound:.2f}")
    ax.set_xlim(0, top * 1.05)
    ax.set_ylim(0, top * 1.05)
    ax.set_xlabel("claimed epsilon (accountant)")
    ax.set_ylabel("audited epsilon lower bound")
    ax.set_title("One-run DP audit", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return save_figure(fig, path)
