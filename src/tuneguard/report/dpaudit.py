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

# delta = 0 is a pure-DP test: DP-SGD claims (epsilon, delta > 0) and no finite epsilon at delta = 0, so these bounds
# are never read against the claim (their own column, their own panel of the plot, no "bound = claim" line).
PURE = "pure-DP test (delta=0): Steinke / f-DP"
COLUMNS = ["run", "claimed epsilon", "delta", "Steinke bound", "f-DP bound", PURE, "correct / guesses", "TPR@1%FPR",
           "AUC", "held-out perplexity"]
PLOT = "bound_vs_epsilon.png"


def run_label(run: RunAudit) -> str:
    """A run's name, with a planted bug spelt out: that run is not the user's mechanism."""
    return f"{run.name} [PLANTED BUG {run.planted_bug}: not your mechanism]" if run.planted_bug else run.name


def table_rows(result: DPAuditResult) -> list[dict]:
    """One row per run, cells ready for the terminal and HTML tables."""
    rows = []
    for run in result.runs:
        b = run.bound
        tpr = None if run.tpr is None else (f"{run.tpr:.3f}" + (f" [{run.tpr_ci[0]:.3f}, {run.tpr_ci[1]:.3f}]"
                                                                if run.tpr_ci else ""))
        rows.append({"run": run_label(run),
                     "claimed epsilon": "inf (no DP)" if math.isinf(run.epsilon) else run.epsilon,
                     "delta": f"{run.delta:.2g}",
                     "Steinke bound": f"{b.epsilon_lower_bound:.3f} ({b.confidence:.0%})",
                     "f-DP bound": f"{run.fdp.epsilon_lower_bound:.3f} ({run.fdp.curve})",
                     PURE: f"{run.bound_pure.epsilon_lower_bound:.3f} / {run.fdp_pure.epsilon_lower_bound:.3f}",
                     "correct / guesses": f"{b.correct} / {b.guesses} (k+ {b.k_plus}, k- {b.k_minus})",
                     "TPR@1%FPR": tpr, "AUC": run.auc, "held-out perplexity": run.perplexity})
    return rows


def ceiling_line(result: DPAuditResult) -> str:
    """What the canaries can certify at most (every guess right), per bound."""
    s, c = result.settings, result.settings["ceilings"]
    return (f"the most {s['n_canaries']} canaries can certify (every guess right): Steinke {c['bound']:.2f}, f-DP "
            f"{c['fdp']:.2f} at delta {s['delta']:.2g}; {c['bound_pure']:.2f} / {c['fdp_pure']:.2f} at delta 0")


def audit_table(result: DPAuditResult) -> str:
    """The terminal table."""
    s = result.settings
    title = (f"One-run DP audit: {printable(s['model'])}, {s['n_canaries']} canaries ({s['n_included']} trained on), "
             f"base held-out perplexity {result.base_perplexity:.2f}; {ceiling_line(result)}")
    if s.get("planted_bug"):
        title += f"\nPLANTED BUG {s['planted_bug']}: the DP runs audited are NOT your mechanism"
    return format_table(table_rows(result), COLUMNS, title=title)


def write_audit_report(result: DPAuditResult) -> dict[str, Path]:
    """Write audit.json, bound_vs_epsilon.png and report.html into the audit's directory; return their paths."""
    out = result.out_dir
    paths = {"json": atomic_write_json(out / "audit.json", result.to_json()),
             "plot": bound_plot(result.runs, out / PLOT)}
    s = result.settings
    first = result.runs[0]
    method = (f"{s['n_canaries']} canaries ({', '.join(s['canaries']['kinds'])}, {s['canaries']['length']} trained "
              f"tokens each) were each trained on with probability 1/2 (seeded draw, canaries.jsonl); every DP run "
              f"was planned for {s['population']} texts (the real ones plus half the canaries) before the draw. "
              f"Each run's canaries are scored by their {s['score']}; the audit guesses 'in' for the k+ highest and "
              f"'out' for the k- lowest, k+ = k- fixed in advance ({first.bound.grid_size} choice(s), "
              f"Bonferroni-corrected), and converts the correct guesses into the largest epsilon at which "
              f"(epsilon, delta)-DP is rejected with confidence {first.bound.confidence:.0%}: Steinke, Nasr & "
              f"Jagielski (NeurIPS 2023), and the f-DP audit of Mahloujifar, Melis & Chaudhuri (ICML 2025) with "
              f"the {s['bound']['tradeoff']} tradeoff curve (gaussian: the claim tested is 'at least as private as "
              f"the Gaussian mechanism with this (epsilon, delta)', which DP-SGD approaches; dp: any (epsilon, "
              f"delta)-DP mechanism). A bound above the claimed epsilon means the training did not deliver its "
              f"guarantee. The delta = 0 bounds are pure-DP tests: DP-SGD claims no finite epsilon at delta = 0, "
              f"so they are not read against the claim. {ceiling_line(result)}. Base model held-out perplexity: "
              f"{result.base_perplexity:.2f}.")
    body = f"<p>{escape(method)}</p>"
    if s.get("planted_bug"):
        body = (f"<p><strong>Planted bug {escape(s['planted_bug'])}: the DP runs audited here are NOT your "
                f"mechanism.</strong> They check that the audit catches a run that does not deliver its claimed "
                f"epsilon.</p>") + body
    sections = [("Audit", body + html_table(table_rows(result), COLUMNS)),
                ("Lower bound against the claimed epsilon", img_tag(paths["plot"], alt="epsilon lower bound"))]
    page = html_page(f"One-run DP audit of {s['model']}", sections, settings=s)
    paths["html"] = atomic_write_text(out / "report.html", page)
    return paths


def bound_plot(runs: list[RunAudit], path: Path) -> Path:
    """Left: the audited bounds at each DP run's delta against its claimed epsilon (the no-DP run's as lines, a
    planted bug's marked); right: the pure-DP tests (delta = 0), with no "bound = claim" line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dp = sorted((r for r in runs if not math.isinf(r.epsilon)), key=lambda r: r.epsilon)
    honest = [r for r in dp if not r.planted_bug]
    planted = [r for r in dp if r.planted_bug]
    free = [r for r in runs if math.isinf(r.epsilon)]
    fig, (ax, pure) = plt.subplots(1, 2, figsize=(10, 4.5))
    top = max([r.epsilon for r in dp] + [getattr(r, b).epsilon_lower_bound for r in runs
                                         for b in ("bound", "fdp", "bound_pure", "fdp_pure")] + [1.0])
    ax.plot([0, top], [0, top], color="grey", ls="--", lw=0.8, label="claimed (epsilon, delta): bound = claim")
    for a, fields, line, what in ((ax, ("bound", "fdp"), "-", "lower bound"), (pure, ("bound_pure", "fdp_pure"), ":",
                                                                              "(delta = 0)")):
        for field, marker, colour, label in zip(fields, "os", ("C0", "C2"), ("Steinke", "f-DP")):
            if honest:
                a.plot([r.epsilon for r in honest], [getattr(r, field).epsilon_lower_bound for r in honest],
                       marker + line, color=colour, ms=5, label=f"{label} {what}")
            if planted:
                a.plot([r.epsilon for r in planted], [getattr(r, field).epsilon_lower_bound for r in planted], "X",
                       color=colour, ms=9, mec="C3", label=f"{label}: planted bug (not your mechanism)")
    for field, colour, label in (("bound", "C0", "Steinke"), ("fdp", "C2", "f-DP")):
        for r in free:
            ax.axhline(getattr(r, field).epsilon_lower_bound, color=colour, ls="-.", lw=1,
                       label=f"no DP: {label} {getattr(r, field).epsilon_lower_bound:.2f}")
    for a, title in ((ax, "bound at the run's delta"), (pure, "pure-DP test (delta = 0): not read against the claim")):
        a.set_xlim(0, top * 1.05)
        a.set_ylim(0, top * 1.05)
        a.set_xlabel("claimed epsilon (accountant)")
        a.set_ylabel("audited epsilon lower bound")
        a.set_title(title, fontsize=9)
        a.grid(True, alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7, loc="upper left")
    fig.suptitle("One-run DP audit", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
