"""The headline figures of a `tuneguard run` experiment as a small table to commit (JSON + Markdown).

    python bench/experiment_table.py RESULTS_JSON --out bench/results/NAME [--gap-to COLUMN]

Per dataset and column: the average attack AUC and the strongest attack's AUC and TPR at 1% and 10% FPR (with their
95% bootstrap CIs and the attack), held-out perplexity and the share of the perplexity gap from the pretrained column
to the plain fine-tuning column it closes (--gap-to; default the full fine-tuning column, else the LoRA one), and for
SOFT columns the retained-token share (with its chance baseline), the share of member tokens never trained on and the
originals kept. Reads results.json only (no model).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PLAIN = ("full", "lora")  # the kinds of the plain fine-tuning a gap is closed to, by preference


def gap_column(summary: dict, name: str | None) -> str | None:
    """The column the perplexity gap closes to: ``name`` (checked), else the first of kind full, else of lora."""
    columns = {n: c["kind"] for cells in summary["cells"].values() for n, c in cells.items()}
    if name is not None:
        if name not in columns:
            raise SystemExit(f"--gap-to: no column {name!r} in the results (columns: {', '.join(columns)})")
        return name
    return next((n for kind in PLAIN for n, k in columns.items() if k == kind), None)


def rows_of(summary: dict, gap_to: str | None = None) -> list[dict]:
    """One flat row per (dataset, column) of an experiment's results.json; the gap is closed to column ``gap_to``."""
    rows = []
    for dataset, cells in summary["cells"].items():
        start = next((c["ppl_domain"] for c in cells.values() if c["kind"] == "pretrained"), None)
        end = cells[gap_to]["ppl_domain"] if gap_to in cells else None
        span = None if start is None or end is None else start - end
        for name, cell in cells.items():
            soft, retained = cell.get("soft") or {}, (cell.get("retained") or {}).get("all") or {}
            rows.append({
                "dataset": dataset, "column": name, "kind": cell["kind"],
                "average_auc": cell["average_auc"], "average_auc_ci": cell.get("average_auc_ci"),
                "max_auc": cell["max_auc"], "max_tpr_at_1pct": (cell.get("max_tpr") or {}).get("0.01"),
                "max_tpr_at_10pct": cell.get("max_tpr_at_10pct"), "ppl": cell["ppl_domain"],
                "gap_closed": None if not span else (start - cell["ppl_domain"]) / span,
                "recipe": soft.get("recipe"), "train_size": cell.get("train_size"),
                "originals_kept": soft.get("originals_kept"), "paraphrased": soft.get("paraphrased"),
                "retained_share": retained.get("share"), "retained_chance": retained.get("chance"),
                "never_trained_share": soft.get("never_trained_share")})
    return rows


def _ci(ci: list | None) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _leader(leader: dict | None) -> str:
    return "-" if leader is None else f"{leader['value']:.3f} {leader['attack']}{_ci(leader.get('ci'))}"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown(rows: list[dict], command: str, gap_to: str | None) -> str:
    """The rows as one Markdown table per dataset."""
    head = (f"| column | avg AUC [CI] | max AUC (attack) [CI] | TPR@1% (attack) [CI] | TPR@10% (attack) [CI] | ppl | "
            f"gap closed (to {gap_to or '-'}) | retained (chance) | never trained | orig. kept |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    out = [f"Made by: `{command}`\n"]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        out.append(f"\n### {dataset}\n\n" + head)
        for r in (r for r in rows if r["dataset"] == dataset):
            retained = "-" if r["retained_share"] is None else \
                f"{r['retained_share']:.3f} ({r['retained_chance']:.3f})"
            out.append(f"| {r['column']} | {r['average_auc']:.3f}{_ci(r['average_auc_ci'])} | {_leader(r['max_auc'])} "
                       f"| {_leader(r['max_tpr_at_1pct'])} | {_leader(r['max_tpr_at_10pct'])} | {r['ppl']:.2f} | "
                       f"{_num(r['gap_closed'], '.0%')} | {retained} | {_num(r['never_trained_share'], '.1%')} | "
                       f"{_num(r['originals_kept'], 'd')} |\n")
    return "".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="an experiment's results.json")
    p.add_argument("--out", type=Path, required=True, help="output prefix: writes PREFIX.json and PREFIX.md")
    p.add_argument("--command", default="", help="the command that made the results (quoted in the table)")
    p.add_argument("--gap-to", help="the plain fine-tuning column the perplexity gap closes to (default: the full "
                                    "fine-tuning column, else the LoRA one)")
    args = p.parse_args()
    summary = json.loads(args.results.read_text(encoding="utf-8"))
    gap_to = gap_column(summary, args.gap_to)
    rows = rows_of(summary, gap_to)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"name": summary["name"], "command": args.command,
                                                         "settings": summary["settings"], "gap_to": gap_to,
                                                         "rows": rows}, indent=2)
                                             + "\n", encoding="utf-8")
    table = markdown(rows, args.command, gap_to)
    args.out.with_suffix(".md").write_text(f"# {summary['name']}\n\n{table}", encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
