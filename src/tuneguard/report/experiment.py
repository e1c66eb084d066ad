"""The experiment report (``tuneguard run``): Table 1 (``table1.txt``: attacks + their average as rows, then each
regime's strongest attack by AUC and by TPR@10% FPR, regimes as columns, one block per dataset, utility beneath), the
privacy-utility frontier (``tradeoff.png``: average AUC and max-attack TPR@10% FPR against held-out perplexity, one
line per defence over its knob, with CIs) and ``report.html``.

Everything is rendered from the summary ``run_experiment`` returns (and writes to results.json), so a saved
summary can be re-rendered. Keys that cells saved by an older tuneguard lack show as "stale".
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path
from typing import Any

from tuneguard.defenses.soft_text import recipe_text, removal_text
from tuneguard.files import atomic_write_text
from tuneguard.privacy_target import pct
from tuneguard.report.figures import save_figure
from tuneguard.report.html import html_page, html_table, img_tag
from tuneguard.report.privacy import MAX_ATTACK_FPR as MAX_FPR
from tuneguard.report.table import DASH, cell_text, format_table

NOT_APPLICABLE = "n/a"
STALE = "stale (re-run)"


def experiment_blocks(summary: dict) -> list[dict]:
    """Per dataset: its ``title``, table ``rows`` and ``columns``, footnotes (``notes``) and the confounded-split
    ``warning`` (or None)."""
    regimes = summary["regimes"]
    settings = (summary.get("settings") or {}).get("regimes", {})
    blocks = []
    for ds, row_cells in summary["cells"].items():
        cells = [row_cells[r] for r in regimes]
        trains = {r: trains_model(settings.get(r, {}), row_cells[r]) for r in regimes}
        attacks = list(dict.fromkeys(a for c in cells for a in c["auc"]))
        rows = [{"attack": a, **{r: _auc(row_cells[r], a) for r in regimes}} for a in attacks]
        rows.append({"attack": "average", **{r: cell_text(row_cells[r].get("average_auc")) for r in regimes}})
        for label, key, text, which in (("max-attack AUC", "max_auc", cell_text, "(max-AUC attack)"),
                                        (f"max-attack TPR@{pct(MAX_FPR)}FPR", "max_tpr_at_10pct", pct,
                                         "(max-TPR attack)")):
            rows.append({"attack": label, **{r: _strongest(row_cells[r], key, text) for r in regimes}})
            rows.append({"attack": which, **{r: _strongest(row_cells[r], key, None) for r in regimes}})
        rows.append({"attack": "perplexity (domain)", **{r: _ppl(row_cells[r].get("ppl_domain")) for r in regimes}})
        rows.append({"attack": "perplexity (general)", **{r: _ppl(row_cells[r].get("ppl_general")) for r in regimes}})
        rows.append({"attack": "scoring window (tokens)", **{r: cell_text(row_cells[r].get("max_length"))
                                                             for r in regimes}})
        rows.append({"attack": "texts trained on", **{r: _trained_on(row_cells[r], trains[r]) for r in regimes}})
        soft = any("soft" in c for c in cells)  # a column that recorded a SOFT summary
        if soft:
            rows.append({"attack": "SOFT gate failures", **{r: _soft_failures(row_cells[r]) for r in regimes}})
            rows.append({"attack": "SOFT mean similarity", **{r: cell_text(row_cells[r]["soft"].get("mean_similarity"))
                                                               if "soft" in row_cells[r] else DASH
                                                               for r in regimes}})
            rows.append({"attack": "SOFT recipe", **{r: _soft_recipe(row_cells[r]) for r in regimes}})
            rows.append({"attack": "retained-token share (chance)", **{r: _retained(row_cells[r], trains[r])
                                                                        for r in regimes}})
            rows.append({"attack": "member tokens never trained on", **{r: _never_trained(row_cells[r], trains[r])
                                                                         for r in regimes}})
        notes = list(dict.fromkeys(f"{NOT_APPLICABLE}: {reason}" for c in cells
                                   for reason in (c.get("not_applicable") or {}).values()))
        if soft:
            notes.append("SOFT gate failures: the selected texts whose paraphrases all failed the quality gate, "
                         "per failure policy: paraphrased by the fallback, kept as unprotected originals, or dropped "
                         "from the training set")
            notes.append("SOFT mean similarity: the gate's sentence-embedding similarity of the accepted rewrites to "
                         "what they rewrote")
            notes.append("retained-token share: of the members' tokens (their scored window), those whose token also "
                         "occurs in the training window of what the model was trained on in their place, over all "
                         "members; chance: the same share against unrelated texts of as many tokens. Regimes that "
                         "train every member as written retain all (1.000)")
            notes += [f"{r}: removes data: {removal_text(row_cells[r]['soft'])}; its AUC is no obfuscation result"
                      for r in regimes if "soft" in row_cells[r] and removal_text(row_cells[r]["soft"])]
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


# A column's regime declarations (reference_point, trains) are read from what the run recorded in its settings
# (``Regime.declarations``), never from its kind's name: the report imports no regime. A results file saved before
# the run recorded them means what the regimes declared then: these two were reference points, pretrained never
# trained.
UNRECORDED_REFERENCE_KINDS = ("pretrained", "full")


def is_reference_point(setting: dict, cell: dict) -> bool:
    """Whether a column is drawn as a reference point: its regime's declared ``Regime.reference_point``, as the run
    recorded it in the column's settings (a results file without it: the pretrained and full fine-tuning columns)."""
    recorded = setting.get("reference_point")
    return cell["kind"] in UNRECORDED_REFERENCE_KINDS if recorded is None else bool(recorded)


def trains_model(setting: dict, cell: dict) -> bool:
    """Whether a column's regime fine-tunes the base model (its declared ``Regime.trains``, as the run recorded it
    in the column's settings; a results file without it: every column but the pretrained one)."""
    recorded = setting.get("trains")
    return cell["kind"] != "pretrained" if recorded is None else bool(recorded)


def frontier_series(summary: dict) -> dict[str, dict[str, list[dict]]]:
    """The privacy-utility frontier's data, per dataset: ``references`` (the columns whose regime is a reference
    point, :func:`is_reference_point`: the pretrained and full fine-tuning points) and ``lines`` (one per defence:
    its columns in knob order).

    A point: ``regime``, ``ppl`` (held-out perplexity, same domain), ``auc`` / ``auc_ci`` (average AUC and its CI),
    ``tpr`` / ``tpr_ci`` / ``tpr_attack`` (the max-attack TPR@10% FPR, its CI and its attack), ``knob`` (the value of
    the defence's knob, or None) and ``note``. A line: ``label``, ``kind``, ``symbol`` (ρ, ε, k, or None) and
    ``points``. Columns of one kind whose options differ only in the knob (and that train alike) are one defence:
    SOFT at ρ 0.5 and 1 with one paraphraser is one line, DP-SGD at ε 8 and 1 another; a regime without a knob
    (LoRA) is a line of one point. The knob and the options come from ``summary["settings"]``.
    """
    settings = (summary.get("settings") or {}).get("regimes", {})
    out = {}
    for ds, row_cells in summary["cells"].items():
        references, families = [], {}
        for name in summary["regimes"]:
            cell, setting = row_cells[name], settings.get(name, {})
            knob = setting.get("knob")
            point = _frontier_point(cell, knob["value"] if knob else None)
            if is_reference_point(setting, cell):
                references.append(point)
                continue
            options = {k: v for k, v in (setting.get("options") or {}).items() if not knob or k != knob["option"]}
            # Without a knob every column is its own line (its name keeps two such columns apart).
            family = json.dumps([cell["kind"], options, setting.get("train"), None if knob else name],
                                sort_keys=True, default=str)
            line = families.setdefault(family, {"label": name.split(" ")[0], "kind": cell["kind"],
                                                "symbol": knob["symbol"] if knob else None, "points": []})
            line["points"].append(point)
        for line in families.values():
            line["points"].sort(key=lambda p: (p["knob"] is None, p["knob"] if p["knob"] is not None else 0))
        out[ds] = {"references": references, "lines": list(families.values())}
    return out


def _frontier_point(cell: dict, knob: Any) -> dict:
    best = cell.get("max_tpr_at_10pct") or {}
    return {"regime": cell["regime"], "ppl": cell.get("ppl_domain"), "auc": cell.get("average_auc"),
            "auc_ci": cell.get("average_auc_ci"), "tpr": best.get("value"), "tpr_ci": best.get("ci"),
            "tpr_attack": best.get("attack"), "knob": knob,
            "note": _failure_note(cell["soft"]) if "soft" in cell else ""}


def tradeoff_figure(summary: dict, path: str | Path) -> Path:
    """The privacy-utility frontier (see :func:`frontier_series`), one row of two panels per dataset: average AUC
    (left) and max-attack TPR@10% FPR (right) against held-out perplexity, 95% bootstrap CIs as error bars, one
    line per defence joined in knob order (each point labelled with its knob), pretrained and full fine-tuning as
    black reference markers, chance (AUC 0.5, TPR = 10%) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = frontier_series(summary)
    # 960 px wide: the report page's column, so the browser shows it unscaled.
    fig, axes = plt.subplots(len(series), 2, figsize=(9.6, 4.4 * len(series)), squeeze=False)
    panels = (("auc", "auc_ci", "average attack AUC (lower = more private)", 0.5),
              ("tpr", "tpr_ci", f"max-attack TPR at {pct(MAX_FPR)} FPR (lower = more private)", MAX_FPR))
    for row, (ds, data) in zip(axes, series.items()):
        for ax, (key, ci_key, ylabel, chance) in zip(row, panels):
            for i, line in enumerate(data["lines"]):
                _draw(ax, line["points"], key, ci_key, fmt="-o", colour=f"C{i % 10}", label=line["label"])
                for p in line["points"]:
                    if _finite(p["ppl"], p[key]) and (p["knob"] is not None or p["note"]):
                        text = (f"{line['symbol']}={p['knob']:g}" if p["knob"] is not None else "") + p["note"]
                        ax.annotate(text, (p["ppl"], p[key]), fontsize=7, textcoords="offset points", xytext=(4, 4))
            for j, p in enumerate(data["references"]):
                _draw(ax, [p], key, ci_key, fmt="*XPD"[j % 4], colour="black", label=f"{p['regime']} (reference)")
            ax.axhline(chance, color="grey", lw=0.8, ls="--")
            ax.set_xlabel("held-out perplexity (same domain, lower = more useful)", fontsize=9)
            ax.set_ylabel(ylabel, fontsize=9)
            ax.set_title(ds, fontsize=10)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.suptitle(summary["name"])
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def _draw(ax, points: list[dict], key: str, ci_key: str, *, fmt: str, colour: str, label: str) -> None:
    """Points (ppl, key) with error bars from ``ci_key`` (none where a point has no CI); unmeasured points skipped."""
    shown = [p for p in points if _finite(p["ppl"], p[key])]
    if not shown:
        return
    y = [p[key] for p in shown]
    err = [[v - p[ci_key][0] if p[ci_key] else 0 for v, p in zip(y, shown)],
           [p[ci_key][1] - v if p[ci_key] else 0 for v, p in zip(y, shown)]]
    ax.errorbar([p["ppl"] for p in shown], y, yerr=err, fmt=fmt, color=colour, label=label, capsize=3, lw=1.2,
                markersize=7 if fmt != "-o" else 5)


def _finite(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


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
    sections.append(("Privacy-utility frontier", img_tag(png)))
    page = html_page(f"{summary['name']}: privacy and utility", sections,
                     settings=summary.get("settings") or {"model": summary.get("model")})
    html = atomic_write_text(out / "report.html", page)
    return {"table": table, "plot": png, "html": html, "json": out / "results.json"}


def _auc(cell: dict, attack: str) -> str:
    if attack in (cell.get("not_applicable") or {}):
        return NOT_APPLICABLE
    return cell_text(cell["auc"].get(attack))


def _strongest(cell: dict, key: str, text) -> str:
    """A max-attack figure (``text`` given) or the attack behind it (``text`` None); stale in a cell from before."""
    if key not in cell:
        return STALE
    best = cell[key]
    if best is None:
        return DASH
    return best["attack"] if text is None else text(best["value"])


def _ppl(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) and math.isfinite(value) else DASH


def _trained_on(cell: dict, trains: bool) -> str:
    """How many texts the cell's model was fine-tuned on; for SOFT, how many of them are paraphrases and how many
    members it held out."""
    if "soft" in cell:
        soft = cell["soft"]
        held = f", {soft['held_out']} held out" if soft.get("held_out") else ""
        return f"{soft['train_size']} ({soft['paraphrased']} para.{held})"
    if not trains:
        return "0"
    return cell_text(cell.get("train_size"))


def _soft_failures(cell: dict) -> str:
    """SOFT's failure policy and what it did: originals kept, texts dropped."""
    if "soft" not in cell:
        return DASH
    soft = cell["soft"]
    if "on_failure" not in soft:
        return STALE
    fallback = f"{soft['fallback_paraphrased']} by fallback, " if soft.get("fallback_paraphrased") else ""
    return f"{soft['on_failure']}: {fallback}{soft.get('originals_kept', 0)} kept, {soft.get('dropped', 0)} dropped"


def _soft_recipe(cell: dict) -> str:
    """The released-code recipe options a SOFT column turns on ("default" when none)."""
    if "soft" not in cell:
        return DASH
    recipe = cell["soft"].get("recipe")
    return STALE if recipe is None else recipe_text(recipe) or "default"


def _retained(cell: dict, trains: bool) -> str:
    """A SOFT column's retained-token share over every member, with its chance baseline in brackets."""
    if not trains:
        return DASH
    if "soft" not in cell:
        return "1.000"
    figures = (cell.get("retained") or {}).get("all")
    if figures is None:
        return STALE
    return f"{cell_text(figures['share'])} ({cell_text(figures['chance'])})"


def _never_trained(cell: dict, trains: bool) -> str:
    """The share of member tokens no training stage read in any form (data removal)."""
    if not trains:
        return DASH
    if "soft" not in cell:
        return pct(0.0)
    share = cell["soft"].get("never_trained_share", STALE)
    return share if share == STALE else pct(share or 0.0)


def _failure_note(soft: dict) -> str:
    """The plot's note on a SOFT point: originals kept, texts dropped, member tokens never trained on."""
    kept, dropped = soft.get("originals_kept", 0), soft.get("dropped", 0)
    removed = soft.get("never_trained_share")
    words = [f"{kept} orig. kept"] * bool(kept) + [f"{dropped} dropped"] * bool(dropped) \
        + ([f"{pct(removed)} of tokens removed"] if removed else [])
    return f" ({', '.join(words)})" if words else ""
