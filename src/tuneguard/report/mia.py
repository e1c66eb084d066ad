"""The membership-inference report: results.json, ROC plots, report.html and the terminal table."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_write_json, atomic_write_text
from tuneguard.report.figures import roc_figures
from tuneguard.report.html import html_page, html_table, img_tag
from tuneguard.report.table import DASH, format_table

BLIND_ATTACK = "bag-of-words"
# A model-free classifier this far from chance means members and non-members differ in distribution.
CHANCE_BAND = (0.4, 0.6)
AUC_COLUMN = "AUC [95% CI]"


def confounding_warning(result: dict) -> str | None:
    """The warning to show when the blind baseline beats chance, else None.

    Fires when the bag-of-words AUC lies outside [0.4, 0.6] and its CI (when there is one) excludes 0.5.
    """
    blind = result["attacks"].get(BLIND_ATTACK)
    if blind is None:
        return None
    auc, ci = blind["metrics"]["auc"], blind["metrics"].get("auc_ci")
    if CHANCE_BAND[0] <= auc <= CHANCE_BAND[1] or (ci is not None and ci[0] <= 0.5 <= ci[1]):
        return None
    return (f"The blind {BLIND_ATTACK} baseline, which never queries the model, tells members from non-members "
            f"with AUC {_auc_text(blind['metrics'])}. The member/non-member split is distribution-shifted "
            "(confounded): the other attacks' figures partly measure that shift, not what the model memorised. "
            "Draw members and non-members from one distribution (e.g. a random split of one corpus).")


def mia_table(result: dict) -> str:
    """The terminal summary: one row per attack (in the given order), footnotes for dashes, the confounding check."""
    rows, columns, notes = _rows(result)
    lines = [format_table(rows, columns, title=f"{result['title']}\n{_summary(result)}")]
    lines += [f"{DASH} {note}" for note in notes]
    lines += [f"note ({name}): {a['note']}" for name, a in result["attacks"].items() if a.get("note")]
    warning = confounding_warning(result)
    if warning:
        lines.append(f"\nWARNING, confounded split: {warning}")
    return "\n".join(lines)


def write_mia_report(out_dir: Path, result: dict) -> dict[str, Path]:
    """Write results.json, roc_loglog.png, roc_linear.png and report.html into ``out_dir``; return their paths.

    Keys: "json", "loglog", "linear", "html". results.json is ``result`` plus "confounding_warning" (str or null).
    """
    if not result.get("attacks"):
        raise TuneguardError("the result holds no attack: run at least one attack before writing a report")
    out_dir = Path(out_dir)
    warning = confounding_warning(result)
    paths = {"json": atomic_write_json(out_dir / "results.json", {**result, "confounding_warning": warning})}
    metrics = {name: a["metrics"] for name, a in result["attacks"].items()}
    curves = {name: (m["roc"]["fpr"], m["roc"]["tpr"]) for name, m in metrics.items()}
    paths["loglog"], paths["linear"] = roc_figures(
        curves, out_dir / "roc", title=result["title"],
        n_nonmembers=max(m["n_nonmembers"] for m in metrics.values()))

    rows, columns, notes = _rows(result)
    results_body = (f"<p>{escape(_summary(result))}</p>\n" + html_table(rows, columns, highlight={AUC_COLUMN: "max"})
                    + "".join(f'\n<p class="note">{DASH} {escape(n)}</p>' for n in notes))
    sections = []
    if warning:
        sections.append(("Confounded split", f'<div class="alert">{escape(warning)}</div>'))
    if result.get("warnings"):
        items = "".join(f"<li>{escape(w)}</li>" for w in result["warnings"])
        sections.append(("Warnings", f'<div class="warning"><ul>{items}</ul></div>'))
    sections.append(("Results", results_body))
    sections.append(("ROC curves", "<p>Log-log axes show the low-FPR regime that matters for privacy; linear axes "
                                   "the whole curve. The dashed line is chance.</p>\n"
                     + img_tag(paths["loglog"], alt="ROC, log-log") + img_tag(paths["linear"], alt="ROC, linear")))
    sections.append(("Attacks", html_table(
        [{"attack": name, "parameters": json.dumps(a.get("params") or {}, default=str),
          "dropped (non-finite)": a["metrics"]["n_dropped"], "note": a.get("note") or ""}
         for name, a in result["attacks"].items()],
        ["attack", "parameters", "dropped (non-finite)", "note"])))
    if result.get("skipped"):
        skipped = [{**s, "label": "member" if s["label"] == 1 else "non-member"} for s in result["skipped"]]
        sections.append((f"Skipped texts ({len(skipped)})",
                         html_table(skipped, ["index", "label", "reason", "text"])))
    page = html_page(result["title"], sections, settings=result.get("settings"))
    paths["html"] = atomic_write_text(out_dir / "report.html", page)
    return paths


def _rows(result: dict) -> tuple[list[dict], list[str], list[str]]:
    """Table rows, columns and the footnotes explaining each dash (deduplicated, in order)."""
    keys: list[str] = []
    for a in result["attacks"].values():
        keys += [k for k in a["metrics"]["tpr"] if k not in keys]
    tpr_columns = {k: f"TPR@{float(k) * 100:g}%" for k in keys}
    rows, notes = [], []
    for name, a in result["attacks"].items():
        m = a["metrics"]
        row = {"attack": name, AUC_COLUMN: _auc_text(m)}
        for k, column in tpr_columns.items():
            tpr, ci = m["tpr"].get(k), m["tpr_ci"].get(k)
            if tpr is None:
                row[column] = DASH
                note = f"{column}: {m['tpr_note'].get(k) or 'not computed'}"
                notes += [note] if note not in notes else []
            else:
                row[column] = f"{tpr:.1%}" + (f" [{ci[0] * 100:.1f}, {ci[1] * 100:.1f}]" if ci else "")
        rows.append(row)
    return rows, ["attack", AUC_COLUMN, *tpr_columns.values()], notes


def _auc_text(metrics: dict) -> str:
    ci = metrics.get("auc_ci")
    return f"{metrics['auc']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _summary(result: dict) -> str:
    metrics = [a["metrics"] for a in result["attacks"].values()]
    first = metrics[0]
    boot = f"95% bootstrap CIs over {first['n_boot']} draws" if first["n_boot"] else "no bootstrap CIs"
    return (f"{max(m['n_members'] for m in metrics)} members, {max(m['n_nonmembers'] for m in metrics)} "
            f"non-members; {boot}; TPR@FPR rule: {first['rule']}")
