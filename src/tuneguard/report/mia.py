"""The membership-inference report: results.json, exposure.jsonl, ROC plots, report.html and the terminal text.

The page and the terminal open with the verdict (:mod:`tuneguard.report.verdict`: its levels are documented there
and printed beneath it), then the records at risk (:mod:`tuneguard.report.exposure`), what to do next
(:mod:`tuneguard.report.advice`), the full table of every attack, and the cost: the forward passes spent per model
and what each attack of ``all`` not run would add, so a user can decide whether to run it; with shadow models, what
training them cost against the TPR at 1% FPR they bought. For a target without a run record (an adapter trained
elsewhere) it lists what was read rather than recorded: its base, the scoring window, the dtype.
"""

from __future__ import annotations

import json
import textwrap
from html import escape
from pathlib import Path
from typing import Sequence

import numpy as np

from tuneguard.attacks.result import AttackResult, MIAResult
from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_write_json, atomic_write_jsonl, atomic_write_text
from tuneguard.report.advice import next_steps
from tuneguard.report.exposure import FLAG_FPR, Members, exposure_rows
from tuneguard.report.figures import roc_figures
from tuneguard.report.html import html_page, html_table, img_tag
from tuneguard.report.table import DASH, format_table
from tuneguard.report.verdict import (LEVELS_TEXT, Verdict, auc_text, confounding_warning, mia_verdict,
                                     model_attacks, pct)

AUC_COLUMN = "AUC [95% CI]"
BOUGHT_FPR = 0.01  # where what the shadow models bought is measured
TOP_RECORDS = 10  # records at risk shown on the page (all of them are in exposure.jsonl)
TIE_MARK = " (tie)"


def mia_table(result: MIAResult) -> str:
    """The terminal table: one row per attack (in the given order), footnotes for dashes, ties and attacks that do
    not apply, the attacks' notes, the confounding check."""
    rows, columns, notes = _rows(result)
    lines = [format_table(rows, columns, title=f"{result.title}\n{_summary(result)}")]
    lines += [f"{DASH} {note}" for note in notes]
    lines += [f"not applicable ({name}): {a.not_applicable}" for name, a in result.attacks.items()
              if a.not_applicable]
    lines += [f"note ({name}): {a.note}" for name, a in result.attacks.items() if a.note]
    warning = confounding_warning(result)
    if warning:
        lines.append(f"\nWARNING, confounded split: {warning}")
    return "\n".join(lines)


def verdict_text(result: MIAResult) -> str:
    """The verdict block the terminal output opens with."""
    return "\n".join(mia_verdict(result).lines())


def next_steps_text(result: MIAResult) -> str:
    """What to do next, one numbered step a line (with its command line beneath)."""
    lines = ["What to do next:"]
    for k, step in enumerate(next_steps(result, mia_verdict(result)), 1):
        lines += textwrap.wrap(f"{k}. {step.text}", 110, initial_indent="  ", subsequent_indent="     ")
        if step.command:
            lines.append(f"     {step.command}")
    return "\n".join(lines)


def score_cache_text(result: MIAResult) -> str | None:
    """Which scores the run read from the score cache (``settings["score_cache"]``), or None when it computed them
    all."""
    use = result.settings.get("score_cache")
    if not use:
        return None
    counts = " and ".join(f"{u['from_cache']} of the {u['from_cache'] + u['computed']} {model} scores"
                          for model, u in use.items())
    return (f"score cache: {counts} were read from the score cache, not computed in this run: computed beside other "
            "texts, they may differ from fresh ones by float rounding (far below what moves a result); to recompute "
            "them all, delete the scores folder of $TUNEGUARD_CACHE (default ~/.cache/tuneguard)")


def read_not_recorded_text(result: MIAResult) -> str | None:
    """What the run read from elsewhere than a record of the target's training (``settings["read_not_recorded"]``),
    one item a line, or None when the target has a run record."""
    read = result.settings.get("read_not_recorded")
    if not read:
        return None
    return "\n".join(["Read, not recorded (the target has no tuneguard run record; check each):",
                      *(f"  {what}: {how}" for what, how in read.items())])


def shadow_cost_line(result: MIAResult) -> str | None:
    """What the shadow models cost (their recorded training seconds, whether trained in this run or reused, and the
    forward passes under them) against what they bought: the best TPR at 1% FPR of the attacks over them next to the
    best of every other model attack (AUC when too few non-members support that FPR). None without shadows."""
    shadows, cost = result.settings.get("shadows"), result.cost.get("shadows")
    if not shadows or not cost:
        return None
    now, reused = len(cost["trained_now"]), len(cost["reused"])
    line = (f"Shadow models: {shadows['k']} offline {shadows['recipe']['method']} fine-tunes cost "
            f"{sum(cost['train_seconds']):.0f} s of training ({now} trained in this run, {reused} reused from the "
            f"cache) and {cost['forward_passes']} forward passes; ")
    attacks = model_attacks(result)
    mine = {n: a for n, a in attacks.items() if n in shadows["attacks"]}
    others = {n: a for n, a in attacks.items() if n not in shadows["attacks"]}
    if not mine:
        return line + "no attack over them could be evaluated."
    measure = f"TPR@{pct(BOUGHT_FPR)}"

    def best(group: dict[str, AttackResult]) -> tuple[str, float] | None:
        figures = {n: a.tpr(BOUGHT_FPR) for n, a in group.items()}
        figures = {n: v for n, v in figures.items() if v is not None}
        return max(figures.items(), key=lambda item: item[1]) if figures else None

    bought, without = best(mine), best(others)
    if bought is None:  # too few non-members for that FPR: the AUC says what it can
        measure = f"AUC ({measure} needs more non-members)"
        bought, without = [max(((n, a.auc) for n, a in g.items()), key=lambda item: item[1], default=None)
                           for g in (mine, others)]
        shown = "{:.3f}".format
    else:
        shown = pct
    line += f"they bought {measure} {shown(bought[1])} ({bought[0]})"
    return line + (f" against {shown(without[1])} without them ({without[0]}, the strongest other attack)."
                   if without else ".")


def cost_lines(result: MIAResult) -> tuple[list[str], list[str]]:
    """(the passes spent, and which attacks of ``all`` were not run with what ``all`` would spend; one line per
    attack not run, those adding the same passes together: what it would add beside this run's passes), from
    ``result.cost`` (empty for a result saved before it counted them)."""
    cost = result.cost
    spent = cost.get("forward_passes")
    if spent is None:
        return [], []
    total = sum(spent.values())
    calls = sum((cost.get("model_calls") or {}).values())
    lines = [f"Forward passes spent: {total} ({_by_model(spent)}) in {calls} model calls; a score read from the score "
             "cache costs none."]
    shadows = shadow_cost_line(result)
    lines += [shadows] if shadows else []
    not_run = cost.get("not_run") or {}
    if not not_run:
        return lines, []
    everything = cost.get("all_would_spend") or {}
    lines.append(f"Not run of --attacks all: {', '.join(not_run)}. --attacks all would spend "
                 f"{sum(everything.values())} forward passes ({_by_model(everything)}) where this run spent {total}; "
                 "beside this run's passes, each would add:")
    # Attacks adding the same passes (ratio, EZ-MIA, WBC, HT-MIA: the reference's) cost them once, one or all.
    groups: dict[str, list[str]] = {}
    for name, c in not_run.items():
        by_model: dict[str, list[str]] = {}
        for p in c["passes"]:
            by_model.setdefault(p["model"], []).append(f"{p['forward_passes']} {p['what']}")
        added = sum(c["forward_passes"].values())
        what = f"+{added} forward passes (" + "; ".join(f"{m}: {', '.join(w)}" for m, w in by_model.items()) + ")" \
            if added else "no pass"
        groups.setdefault(what, []).append(name)
    items = [f"{', '.join(names)}{' (one or all)' if len(names) > 1 else ''}: {what}" for what, names in groups.items()]
    return lines, items


def cost_text(result: MIAResult) -> str:
    """The cost block of the terminal output (see :func:`cost_lines`)."""
    lines, items = cost_lines(result)
    return "\n".join([*lines, *(f"  {item}" for item in items)])


def records_text(rows: list[dict], top: int = 5) -> str:
    """The most exposed members (exposure.jsonl's rows), one line each, by record number only: a terminal may be
    logged where the user's texts must not go."""
    lines = [f"Records at risk (the {min(top, len(rows))} most exposed of {len(rows)} members; excerpts and all "
             "rows in report.html and exposure.jsonl):"]
    for row in rows[:top]:
        flagged = f", flagged by {row['flagged_by']} attacks" if row["flagged_by"] is not None else ""
        lines.append(f"  #{row['rank']}: record {row['index']} (mean rank {row['aggregate']}{flagged})")
    return "\n".join(lines)


def write_mia_report(out_dir: Path, result: MIAResult, *,
                     members: Members | Sequence[str] | None = None) -> dict[str, Path]:
    """Write results.json, exposure.jsonl, roc_loglog.png, roc_linear.png and report.html into ``out_dir``; return
    their paths (keys "json", "exposure", "loglog", "linear", "html").

    results.json is ``result.to_json()`` plus "confounding_warning" (str or null) and "verdict". ``members``: the
    member texts given to the run (or a :class:`Members` saying where they came from), for the excerpts of
    exposure.jsonl and of the records at risk; without it the rows name records by index only.
    """
    if not result.attacks:
        raise TuneguardError("the result holds no attack: run at least one attack before writing a report")
    if members is not None and not isinstance(members, Members):
        members = Members(list(members))
    out_dir = Path(out_dir)
    judged = mia_verdict(result)
    paths = {"json": atomic_write_json(out_dir / "results.json",
                                       {**result.to_json(), "confounding_warning": judged.confounded,
                                        "verdict": judged.to_json()})}
    rows = exposure_rows(result, members)
    paths["exposure"] = atomic_write_jsonl(out_dir / "exposure.jsonl", rows)
    metrics = {name: a.metrics for name, a in result.attacks.items()}
    curves = {name: (m["roc"]["fpr"], m["roc"]["tpr"]) for name, m in metrics.items()}
    levels = sorted({float(k) for m in metrics.values() for k, v in m["tpr"].items() if v is not None})
    paths["loglog"], paths["linear"] = roc_figures(
        curves, out_dir / "roc", title=result.title,
        n_nonmembers=max(m["n_nonmembers"] for m in metrics.values()), fpr_levels=levels)

    table, columns, notes = _rows(result)
    cached = score_cache_text(result)
    read = read_not_recorded_text(result)
    results_body = (f"<p>{escape(_summary(result))}</p>\n"
                    + (f'<p class="note">{escape(cached)}</p>\n' if cached else "")
                    + (f'<p class="note">{escape(read).replace(chr(10), "<br>")}</p>\n' if read else "")
                    + html_table(table, columns, highlight={AUC_COLUMN: "max"})
                    + "".join(f'\n<p class="note">{DASH} {escape(n)}</p>' for n in notes)
                    + "".join(f'\n<p class="note">not applicable ({escape(name)}): {escape(a.not_applicable)}</p>'
                              for name, a in result.attacks.items() if a.not_applicable))
    sections = []
    if rows:
        sections.append((f"Records at risk (top {min(TOP_RECORDS, len(rows))} of {len(rows)})",
                         _records_html(result, rows, members, judged)))
    sections.append(("What to do next", _steps_html(result, judged)))
    if result.warnings:
        items = "".join(f"<li>{escape(w)}</li>" for w in result.warnings)
        sections.append(("Warnings", f'<div class="warning"><ul>{items}</ul></div>'))
    sections.append(("Results", results_body))
    lines, items = cost_lines(result)
    if lines:
        sections.append(("Cost", "".join(f"<p>{escape(line)}</p>" for line in lines)
                         + (f"<ul>{''.join(f'<li>{escape(i)}</li>' for i in items)}</ul>" if items else "")))
    sections.append(("ROC curves", "<p>Log-log axes show the low-FPR regime that matters for privacy; linear axes "
                                   "the whole curve. The dashed line is chance, the dotted verticals the FPR levels "
                                   "of the table.</p>\n"
                     + img_tag(paths["loglog"], alt="ROC, log-log") + img_tag(paths["linear"], alt="ROC, linear")))
    sections.append(("Attacks", _attacks_table(result)))
    if result.skipped:
        skipped = [{**s, "label": "member" if s["label"] == 1 else "non-member"} for s in result.skipped]
        sections.append((f"Skipped texts ({len(skipped)})",
                         html_table(skipped, ["index", "label", "reason", "text"])))
    page = html_page(result.title, sections, settings=result.settings, lead=_verdict_html(judged))
    paths["html"] = atomic_write_text(out_dir / "report.html", page)
    return paths


def threshold_tie(attack: AttackResult, fpr: float) -> dict | None:
    """The tie that holds an attack's TPR@``fpr`` down, or None.

    Reported when the texts tied at the first score whose inclusion takes the FPR past ``fpr`` hold at least two
    non-members and every threshold above the tie reaches at most half of ``fpr``: no threshold can split a tie, so
    the attack's canonical TPR stops above it (the tree ensemble's P = 1.0 ties gave TPR@10% = 0.0 this way).
    Keys: ``score``, ``size``, ``members``, ``nonmembers``, ``tpr_with`` and ``fpr_with`` (counting the whole tie).
    """
    scores, labels = np.asarray(attack.scores, dtype=float), np.asarray(attack.labels)
    finite = np.isfinite(scores)
    scores, labels = scores[finite], labels[finite]
    n_mem, n_non = int(labels.sum()), int(len(labels) - labels.sum())
    values = np.unique(scores)[::-1]
    non = np.sort(scores[labels == 0])
    non_at_or_above = len(non) - np.searchsorted(non, values, side="left")
    # The lowest score admits every non-member (FPR 1 > fpr), so a first score past fpr always exists.
    k = int(np.argmax(non_at_or_above / n_non > fpr))
    above_non = non_at_or_above[k - 1] if k else 0
    non_in = int(non_at_or_above[k] - above_non)
    if non_in < 2 or above_non / n_non > fpr / 2:
        return None
    group, at_or_above = scores == values[k], scores >= values[k]
    return {"score": float(values[k]), "size": int(group.sum()), "members": int((group & (labels == 1)).sum()),
            "nonmembers": non_in, "tpr_with": float((at_or_above & (labels == 1)).sum() / n_mem),
            "fpr_with": float(non_at_or_above[k] / n_non)}


def _verdict_html(judged: Verdict) -> str:
    """The verdict box at the top of the page: confounding first, the sentence, the strongest attack per FPR."""
    parts = [f"<h2>{escape(judged.headline)}</h2>"]
    if judged.confounded:
        parts.append(f'<div class="alert">Confounded split: {escape(judged.confounded)}</div>')
    parts.append(f'<p class="sentence">{escape(judged.sentence)}</p>')
    columns = ["measure", "strongest attack", "figure [95% CI]", "guessing"]
    rows = [dict(zip(columns, (f"TPR at {pct(b.fpr)} FPR", b.attack,
                               pct(b.value) + (f" [{pct(b.ci[0])}, {pct(b.ci[1])}]" if b.ci else ""), pct(b.fpr))))
            for b in judged.strongest]
    if judged.best_auc:
        b = judged.best_auc
        rows.append(dict(zip(columns, ("AUC", b.attack, auc_text({"auc": b.value, "auc_ci": b.ci}), "0.500"))))
    if rows:
        parts.append(html_table(rows, columns))
    parts += [f'<p class="note">{escape(n)}</p>' for n in [*judged.notes, LEVELS_TEXT]]
    body = "\n".join(parts)
    return f'<section id="verdict" class="verdict {judged.level}">\n{body}\n</section>'


def _records_html(result: MIAResult, rows: list[dict], members: Members | None, judged: Verdict) -> str:
    """The most exposed members and how to read the table."""
    n_attacks = len(model_attacks(result))
    n_flagging = sum(a.tpr(FLAG_FPR) is not None for a in model_attacks(result).values())
    where = f"its 0-based record number in {members.file}" if members and members.file else \
        "its position in the member texts given"
    table = [{"rank": r["rank"], "record": r["index"], "mean rank": r["aggregate"],
              "flagged by": f"{r['flagged_by']} of {n_flagging}" if r["flagged_by"] is not None else None,
              "excerpt": r["excerpt"]} for r in rows[:TOP_RECORDS]]
    columns = ["rank", "record", "mean rank", "flagged by", *(["excerpt"] if members else [])]
    note = (f"The members ranked by the mean of their ranks under the {n_attacks} model attacks (1 = the highest "
            f"score among the {len(rows)} evaluated members); record = {where}; flagged by = the attacks whose "
            f"{pct(FLAG_FPR)}-FPR threshold the record reaches. All {len(rows)} are in exposure.jsonl, beside this "
            "page.")
    caveat = ('<p class="note">No measurable leak: this ranking is mostly noise.</p>\n'
              if judged.level == "none" else "")
    return f'{caveat}{html_table(table, columns)}\n<p class="note">{escape(note)}</p>'


def _steps_html(result: MIAResult, judged: Verdict) -> str:
    items = "".join(f"<li>{escape(s.text)}" + (f"<br><code>{escape(s.command)}</code>" if s.command else "")
                    + "</li>" for s in next_steps(result, judged))
    return f"<ol>{items}</ol>"


def _attacks_table(result: MIAResult) -> str:
    """One row per attack: what it computes, each parameter's value with its declared help, and its notes."""
    rows = [{"attack": name, "computes": a.summary, "parameters": _parameters(name, a),
             "dropped (non-finite)": a.metrics["n_dropped"],
             "note": "; ".join(n for n in (a.not_applicable and f"not applicable: {a.not_applicable}", a.note) if n)}
            for name, a in result.attacks.items()]
    return html_table(rows, ["attack", "computes", "parameters", "dropped (non-finite)", "note"])


def _parameters(name: str, attack: AttackResult) -> str:
    """``name = value: help`` per declared parameter (from the attack's declaration when it is registered)."""
    from tuneguard.attacks import ATTACKS

    if name not in ATTACKS:  # a saved result of an attack this version does not have: the values alone
        return json.dumps(attack.params, default=str)
    lines = [f"{info.name} = {json.dumps(attack.params.get(info.name, info.default), default=str)}: {info.help}"
             + (f" ({info.allowed})" if info.allowed else "")
             for info in ATTACKS.get(name).Params.describe()]
    return "\n".join(lines) or "none"


def _rows(result: MIAResult) -> tuple[list[dict], list[str], list[str]]:
    """Table rows, columns and the footnotes explaining each dash and each tie (deduplicated, in order)."""
    keys: list[str] = []
    for a in result.attacks.values():
        keys += [k for k in a.metrics["tpr"] if k not in keys]
    tpr_columns = {k: f"TPR@{float(k) * 100:g}%" for k in keys}
    rows, notes = [], []
    for name, a in result.attacks.items():
        m = a.metrics
        row = {"attack": name, AUC_COLUMN: auc_text(m)}
        for k, column in tpr_columns.items():
            tpr, ci = m["tpr"].get(k), m["tpr_ci"].get(k)
            if tpr is None:
                row[column] = DASH
                note = f"{column}: {m['tpr_note'].get(k) or 'not computed'}"
                notes += [note] if note not in notes else []
                continue
            row[column] = f"{tpr:.1%}" + (f" [{ci[0] * 100:.1f}, {ci[1] * 100:.1f}]" if ci else "")
            tie = threshold_tie(a, float(k))
            if tie:
                row[column] += TIE_MARK
                notes.append(f"{column} ({name}), tie: {tie['size']} texts ({tie['members']} members, "
                             f"{tie['nonmembers']} non-members) tie at score {tie['score']:.4g}; no threshold splits "
                             f"a tie, so the highest TPR at FPR <= {pct(float(k))} stops above it at {tpr:.1%}. "
                             f"Counting the whole tie gives TPR {tie['tpr_with']:.1%} at FPR {tie['fpr_with']:.1%}.")
        rows.append(row)
    return rows, ["attack", AUC_COLUMN, *tpr_columns.values()], notes


def _by_model(passes: dict[str, int]) -> str:
    """``target 186, reference 186``."""
    return ", ".join(f"{model} {n}" for model, n in passes.items())


def _summary(result: MIAResult) -> str:
    metrics = [a.metrics for a in result.attacks.values()]
    first = metrics[0]
    boot = f"95% bootstrap CIs over {first['n_boot']} draws" if first["n_boot"] else "no bootstrap CIs"
    return (f"{max(m['n_members'] for m in metrics)} members, {max(m['n_nonmembers'] for m in metrics)} "
            f"non-members; {boot}; TPR@FPR rule: {first['rule']}")
