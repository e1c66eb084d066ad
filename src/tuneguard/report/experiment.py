"""The experiment report (``tuneguard run``): Table 1 (``table1.txt``: attacks + their average as rows, regimes as
columns, one block per dataset, utility beneath), the privacy-utility trade-off (``tradeoff.png``: average AUC
against held-out perplexity, each SOFT regime's ratio sweep as a line) and ``report.html``.

Everything is rendered from the summary ``run_experiment`` returns (and writes to results.json), so a saved
summary can be re-rendered. Keys that cells saved by an older tuneguard lack show as "stale".
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path
from typing import Any

from tuneguard.files import atomic_write_text
from tuneguard.report.figures import save_figure
from tuneguard.report.html import html_page, html_table, img_tag
from tuneguard.report.table import DASH, cell_text, format_table

NOT_APPLICABLE = "n/a"
STALE = "stale (re-run)"


def experiment_blocks(summary: dict) -> list[dict]:
    """Per dataset: its ``title``, table ``rows`` and ``columns``, footnotes (``notes``) and the confounded-split
    ``warning`` (or None)."""
    regimes = summary["regimes"]
    blocks = []
    for ds, row_cells in summary["cells"].items():
        cells = [row_cells[r] for r in regimes]
        attacks = list(dict.fromkeys(a for c in cells for a in c["auc"]))
        rows = [{"attack": a, **{r: _auc(row_cells[r], a) for r in regimes}} for a in attacks]
        rows.append({"attack": "average", **{r: cell_text(row_cells[r].get("average_auc")) for r in regimes}})
        rows.append({"attack": "perplexity (domain)", **{r: _ppl(row_cells[r].get("ppl_domain")) for r in regimes}})
        rows.append({"attack": "perplexity (general)", **{r: _ppl(row_cells[r].get("ppl_general")) for r in regimes}})
        rows.append({"attack": "scoring window (tokens)", **{r: cell_text(row_cells[r].get("max_length"))
                                                             for r in regimes}})
        rows.append({"attack": "texts trained on", **{r: _trained_on(row_cells[r]) for r in regimes}})
        if any(c["kind"] == "soft" for c in cells):
            rows.append({"attack": "SOFT gate failures", **{r: _soft_failures(row_cells[r]) for r in regimes}})
        notes = list(dict.fromkeys(f"{NOT_APPLICABLE}: {reason}" for c in cells
                                   for reason in (c.get("not_applicable") or {}).values()))
        if any(c["kind"] == "soft" for c in cells):
            notes.append("SOFT gate failures: the selected texts whose paraphrases all failed the quality gate, "
                         "per failure policy: paraphrased by the fallback, kept as unprotected originals, or dropped "
                         "from the training set")
        warning = next((c["confounding_warning"] for c in cells if c.get("confounding_warning")), None)
        blocks.append({"dataset": ds, "title": f"{ds}: AUC per attack (lower protects better)", "rows": rows,
                       "columns": ["attack", *regimes], "notes": notes, "warning": warning})
    return blocks


def experiment_table(summary: dict) -> str:
    """table1.txt: one block per dataset, its footnotes and, when the split is confounded, the warning."""
    parts = []
    for b in experiment_blocks(summary):
        lines = [format_table(b["rows"], b["columns"], title=b["title"])]
        lines += [f"  {note}" for note in b["notes"]]
        if b["warning"]:
            lines.append(f"WARNING, confounded split ({b['dataset']}): {b['warning']}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def tradeoff_figure(summary: dict, path: str | Path) -> Path:
    """Average AUC against held-out perplexity: one marker per regime, one line per SOFT regime's ρ sweep (its
    failure policy in the legend, the originals kept / texts dropped beside each point)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, (ds, row_cells) in enumerate(summary["cells"].items()):
        colour = f"C{i % 10}"
        families: dict[str, list[dict]] = {}  # one ρ sweep per SOFT regime ("soft ρ=0.5" -> "soft")
        for c in row_cells.values():
            if c["kind"] == "soft":
                families.setdefault(c["regime"].split(" ρ=")[0], []).append(c)
        for j, (family, cells) in enumerate(families.items()):
            sweep = sorted(cells, key=lambda c: c["soft_ratio"])
            policy = sweep[0]["soft"].get("on_failure", "stale")
            ax.plot([c["ppl_domain"] for c in sweep], [c["average_auc"] for c in sweep], ("-o", "--o", ":o")[j % 3],
                    color=colour, label=f"{ds}: {family} (ρ sweep; failed paraphrases: {policy})")
            for c in sweep:
                ax.annotate(("" if j == 0 else f"{family} ") + f"ρ={c['soft_ratio']:g}" + _failure_note(c["soft"]),
                            (c["ppl_domain"], c["average_auc"]), fontsize=7, textcoords="offset points",
                            xytext=(4, 4))
        for c in row_cells.values():
            if c["kind"] != "soft":
                ax.scatter(c["ppl_domain"], c["average_auc"], color=colour, marker="s")
                ax.annotate(c["regime"], (c["ppl_domain"], c["average_auc"]), fontsize=7,
                            textcoords="offset points", xytext=(4, -8))
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("held-out perplexity (same domain, lower = more useful)")
    ax.set_ylabel("average attack AUC (lower = more private)")
    ax.set_title(summary["name"])
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=130)


def write_experiment_report(out_dir: str | Path, summary: dict) -> dict[str, Path]:
    """Write table1.txt, tradeoff.png and report.html into ``out_dir``; return their paths (and results.json's)."""
    out = Path(out_dir)
    table = atomic_write_text(out / "table1.txt", experiment_table(summary) + "\n")
    png = tradeoff_figure(summary, out / "tradeoff.png")
    sections = []
    for b in experiment_blocks(summary):
        body = f'<div class="alert">Confounded split: {escape(b["warning"])}</div>\n' if b["warning"] else ""
        body += html_table(b["rows"], b["columns"])
        body += "".join(f'\n<p class="note">{escape(n)}</p>' for n in b["notes"])
        sections.append((b["dataset"], body))
    sections.append(("Privacy-utility trade-off", img_tag(png)))
    page = html_page(f"{summary['name']}: privacy and utility", sections,
                     settings=summary.get("settings") or {"model": summary.get("model")})
    html = atomic_write_text(out / "report.html", page)
    return {"table": table, "plot": png, "html": html, "json": out / "results.json"}


def _auc(cell: dict, attack: str) -> str:
    if attack in (cell.get("not_applicable") or {}):
        return NOT_APPLICABLE
    return cell_text(cell["auc"].get(attack))


def _ppl(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) and math.isfinite(value) else DASH


def _trained_on(cell: dict) -> str:
    """How many texts the cell's model was fine-tuned on; for SOFT, how many of them are paraphrases."""
    if cell["kind"] == "soft":
        soft = cell["soft"]
        return f"{soft['train_size']} ({soft['paraphrased']} para.)"
    if cell["kind"] == "pretrained":
        return "0"
    return cell_text(cell.get("train_size"))


def _soft_failures(cell: dict) -> str:
    """SOFT's failure policy and what it did: originals kept, texts dropped."""
    if cell["kind"] != "soft":
        return DASH
    soft = cell["soft"]
    if "on_failure" not in soft:
        return STALE
    fallback = f"{soft['fallback_paraphrased']} by fallback, " if soft.get("fallback_paraphrased") else ""
    return f"{soft['on_failure']}: {fallback}{soft.get('originals_kept', 0)} kept, {soft.get('dropped', 0)} dropped"


def _failure_note(soft: dict) -> str:
    kept, dropped = soft.get("originals_kept", 0), soft.get("dropped", 0)
    words = [f"{kept} orig. kept"] * bool(kept) + [f"{dropped} dropped"] * bool(dropped)
    return f" ({', '.join(words)})" if words else ""
