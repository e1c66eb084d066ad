"""The report of ``tuneguard defend compare``: the measured leak and utility of each candidate regime, in words (the
advice quotes them too), as a table and as the privacy-utility frontier.

Everything is rendered from the saved ``compare.json`` (:mod:`tuneguard.defenses.compare`), so it can be re-rendered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from tuneguard.privacy_target import Target, pct


def duration(seconds: float | None) -> str | None:
    """Seconds in words: ``40 s``, ``12.5 min``, ``3.2 h``."""
    if seconds is None:
        return None
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def _show(metric: str) -> Callable[[float], str]:
    """How a figure of ``metric`` prints: a TPR as a percentage, an AUC with 3 decimals."""
    return pct if metric == "tpr" else (lambda v: f"{v:.3f}")


def ci_text(target: Target, ci: list[float] | None) -> str:
    """A 95% CI of the target's metric, `` (95% CI 1.2%-4.5%)``, or nothing without a bootstrap."""
    show = _show(target.metric)
    return f" (95% CI {show(ci[0])}-{show(ci[1])})" if ci else ""


def leak_text(row: dict, target: Target) -> str:
    """The strongest attack's figure on the target's metric: ``TPR at 1% FPR 3.1% (95% CI 0.8%-6.3%)``."""
    leak = row.get("leak")
    if not leak:
        return f"{target.label} not measured"
    return f"{target.label} {target.format(leak['value'])}{ci_text(target, leak.get('ci'))}"


def utility_text(row: dict) -> str:
    """The utility in words: held-out perplexity and the share of the gap from the pretrained model to plain
    fine-tuning it closes."""
    gap = row.get("gap_closed")
    closed = "" if gap is None else f", closing {gap:.0%} of the perplexity gap from the pretrained model to plain " \
                                    "fine-tuning"
    return f"held-out perplexity {row['ppl']:.2f}{closed}"


def measured_text(row: dict, target: Target) -> str:
    """One regime's measurement: ``its strongest attack, ratio, reached TPR at 1% FPR 3.1% (95% CI 0.8%-6.3%);
    held-out perplexity 12.34, closing 85% of the perplexity gap ...``."""
    leak = row.get("leak")
    if not leak:
        return f"its {target.label} could not be measured; {utility_text(row)}"
    return f"its strongest attack, {leak['attack']}, reached {leak_text(row, target)}; {utility_text(row)}"


SELECTION_NOTE = ("Choosing among regimes on your private data is itself a use of that data: every shadow run, and "
                  "the choice made from their figures, saw it. DP-SGD's epsilon covers the final training run only, "
                  "not this selection; for a guarantee that covers it too, compare on public data like yours, or "
                  "account for the selection (Papernot & Steinke, Hyperparameter Tuning with Renyi Differential "
                  "Privacy, ICLR 2022).")
CAVEATS = ("Each regime is judged by its strongest attack, picked after seeing the results: the figure leans towards "
           "the attacker, the safe side for you. The selection reads the point estimates, and picking among several "
           "regimes favours one whose figure came out low by chance: the 95% CIs beside them show how far the "
           "figures could move. The final model trains on all the data, not the shadow half: these figures describe "
           "the regime, not that model.")


def _figure(leader: dict | None, metric: str) -> str | None:
    """A strongest-attack figure for a table cell: ``0.612 [0.550-0.670] (ratio)`` / ``3.1% [0.8%-6.3%] (wbc)``."""
    if not leader or leader.get("value") is None:
        return None
    show, ci = _show(metric), leader.get("ci")
    return f"{show(leader['value'])}{f' [{show(ci[0])}-{show(ci[1])}]' if ci else ''} ({leader['attack']})"


def table_rows(comparison: dict) -> tuple[list[dict], list[str]]:
    """The frontier table: one row per regime (the chosen one marked), the pretrained reference last."""
    target = Target.from_json(comparison["target"])
    leak_column = f"strongest {target.label} [95% CI]"
    columns = ["regime", leak_column, "max AUC", "TPR@1%", "TPR@10%", "perplexity", "gap closed", "train time",
               f"meets {target.text}"]
    rows = []
    for row in comparison["rows"]:
        mark = " *" if row["name"] == comparison.get("chosen") else ""
        rows.append({"regime": f"{row['name']}{mark}", leak_column: _figure(row["leak"], target.metric),
                     "max AUC": _figure(row.get("max_auc"), "auc"), "TPR@1%": _figure(row.get("tpr_at_1pct"), "tpr"),
                     "TPR@10%": _figure(row.get("tpr_at_10pct"), "tpr"), "perplexity": f"{row['ppl']:.2f}",
                     "gap closed": None if row.get("gap_closed") is None else pct(row["gap_closed"]),
                     "train time": duration(row.get("train_seconds")),
                     f"meets {target.text}": "yes" if row["meets"] else "no"})
    rows.append({"regime": "pretrained (reference)", "perplexity": f"{comparison['reference']['ppl']:.2f}",
                 "gap closed": "0%"})
    return rows, columns


def compare_text(comparison: dict) -> str:
    """The terminal report: the table, the choice, the command, the caveats."""
    from tuneguard.report.table import format_table

    rows, columns = table_rows(comparison)
    target = Target.from_json(comparison["target"])
    lines = [format_table(rows, columns, title=_title(comparison, target)),
             "  * chosen; perplexity: " + _utility_words(comparison), "", comparison["sentence"]]
    if comparison.get("command"):
        lines += ["Train the final model on all the data:", f"  {comparison['command']}"]
    lines += ["", *_notes(comparison)]
    return "\n".join(lines)


def _title(comparison: dict, target: Target) -> str:
    return (f"defend compare: {comparison['model']} on a shadow split of {comparison['data']} "
            f"({comparison['members']} members, {comparison['nonmembers']} non-members); target {target.text}; "
            f"attacks {', '.join(comparison['suite'])}")


def _utility_words(comparison: dict) -> str:
    where = "the --eval file" if comparison["utility"] == "eval" else "the shadow non-members"
    return (f"held-out perplexity on {where} (lower is more useful); gap closed: the share of the perplexity gap "
            "from the pretrained model to plain fine-tuning (the plain row)")


def _notes(comparison: dict) -> list[str]:
    estimate = comparison["estimate"]
    lines = [SELECTION_NOTE, CAVEATS]
    lines += [f"Left out: {note}." for note in comparison.get("notes", [])]
    if comparison.get("dropped"):
        lines.append(f"Dropped to fit --budget-minutes (the most expensive first): {', '.join(comparison['dropped'])}.")
    lines.append(f"Time: estimated {duration(estimate['total_seconds'])} before the start ({_speed(estimate)}); "
                 f"took {duration(comparison['seconds'])}.")
    return lines


def compare_markdown(comparison: dict, plot: str | None = "frontier.png") -> str:
    """compare.md: the choice and its command, the frontier table and plot, the caveats."""
    rows, columns = table_rows(comparison)
    target = Target.from_json(comparison["target"])

    def md(value) -> str:
        from tuneguard.report.table import cell_text

        return cell_text(value).replace("|", "\\|")

    table = [f"| {' | '.join(columns)} |", f"|{'|'.join('---' for _ in columns)}|"]
    table += [f"| {' | '.join(md(r.get(c)) for c in columns)} |" for r in rows]
    parts = [f"# {_title(comparison, target)}", comparison["sentence"]]
    if comparison.get("command"):
        parts.append(f"Train the final model on all the data:\n\n```bash\n{comparison['command']}\n```")
    parts += ["\n".join(table), f"\\* chosen. Perplexity: {_utility_words(comparison)}."]
    if plot:
        parts.append(f"![privacy-utility frontier]({plot})")
    parts += _notes(comparison)
    return "\n\n".join(parts) + "\n"


def frontier_figure(comparison: dict):
    """The frontier: each regime's strongest-attack figure (with its CI) against its held-out perplexity, the
    target as a dashed line, the pretrained model's perplexity as a dotted one, the chosen regime ringed."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    target = Target.from_json(comparison["target"])
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for row in comparison["rows"]:
        leak = row.get("leak")
        if not leak or leak.get("value") is None:
            continue
        y, ci = leak["value"], leak.get("ci")
        err = [[y - ci[0]], [ci[1] - y]] if ci else None
        ax.errorbar([row["ppl"]], [y], yerr=err, fmt="o", capsize=3, color="tab:green" if row["meets"] else "tab:red")
        ax.annotate(row["name"], (row["ppl"], y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if row["name"] == comparison.get("chosen"):
            ax.plot([row["ppl"]], [y], "o", ms=14, mfc="none", mec="black", label="chosen")
    ax.axhline(target.bound, ls="--", color="grey", label=f"target {target.text}")
    ax.axvline(comparison["reference"]["ppl"], ls=":", color="grey", label="pretrained perplexity")
    ax.set_xlabel("held-out perplexity (lower is more useful)")
    ax.set_ylabel(f"strongest attack: {target.label} (lower is more private)")
    ax.set_title("defend compare: privacy-utility frontier", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def estimate_text(plan) -> str:
    """The estimate printed before the first cell starts (a :class:`tuneguard.defenses.compare.Plan`'s): per
    regime, the total, what it rests on, and the candidates left out or dropped."""
    est = plan.estimate
    as_json = est.to_json()
    assumed = as_json["assumed"]
    lines = [f"Estimated time: {duration(est.total)} for {len(plan.columns)} regimes ({len(est.done)} finished and "
             f"reused; {_speed(as_json)}); assumed: a training token costs {assumed['train_cost']:g} forward tokens, a "
             f"DP-SGD step {assumed['dp_cost']:g}x a LoRA step, a local paraphrase "
             f"{assumed['paraphrase_seconds']:g} s."]
    lines += [f"  {name}: {duration(seconds)}" for name, seconds in est.seconds.items()]
    lines += [f"  {note}" for note in plan.notes]
    if plan.dropped:
        lines.append(f"  dropped to fit --budget-minutes (most expensive first): {', '.join(plan.dropped)}")
    return "\n".join(lines)


def _speed(estimate: dict) -> str:
    speed = estimate["tokens_per_second"]
    return estimate["source"] if speed is None else f"{speed:.0f} forward tokens/s, {estimate['source']}"


def write_compare_report(out_dir: Path, comparison: dict) -> dict[str, Path]:
    """Write compare.md and frontier.png beside compare.json; return their paths (keys "json", "markdown",
    "plot")."""
    from tuneguard.files import atomic_write_text
    from tuneguard.report.figures import save_figure

    out_dir = Path(out_dir)
    plot = save_figure(frontier_figure(comparison), out_dir / "frontier.png")
    markdown = atomic_write_text(out_dir / "compare.md", compare_markdown(comparison, plot.name))
    return {"json": out_dir / "compare.json", "markdown": markdown, "plot": plot}
