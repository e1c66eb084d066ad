"""The headline figures of a `tuneguard run` experiment as a small table to commit (JSON + Markdown).

    python bench/experiment_table.py RESULTS_JSON --out bench/results/NAME

Per dataset and column: the average attack AUC and the strongest attack's AUC and TPR at 10% FPR (with their 95%
bootstrap CIs and the attack), held-out perplexity and the share of the perplexity gap from the pretrained column to
the full fine-tuning column it closes, and for SOFT columns the retained-token share (with its chance baseline), the
share of member tokens never trained on and the originals kept. Reads results.json only (no model).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REFERENCES = ("pretrained", "full")  # the kinds that span the perplexity gap


def rows_of(summary: dict) -> list[dict]:
    """One flat row per (dataset, column) of an experiment's results.json."""
    rows = []
    for dataset, cells in summary["cells"].items():
        ppl = {c["kind"]: c["ppl_domain"] for c in cells.values() if c["kind"] in REFERENCES}
        span = ppl["pretrained"] - ppl["full"] if len(ppl) == 2 else None
        for name, cell in cells.items():
            soft, retained = cell.get("soft") or {}, (cell.get("retained") or {}).get("all") or {}
            rows.append({
                "dataset": dataset, "column": name, "kind": cell["kind"],
                "average_auc": cell["average_auc"], "average_auc_ci": cell.get("average_auc_ci"),
                "max_auc": cell["max_auc"], "max_tpr_at_10pct": cell.get("max_tpr_at_10pct"),
                "ppl": cell["ppl_domain"],
                "gap_closed": None if not span else (ppl["pretrained"] - cell["ppl_domain"]) / span,
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


def markdown(rows: list[dict], command: str) -> str:
    """The rows as one Markdown table per dataset."""
    head = ("| column | avg AUC [CI] | max AUC (attack) [CI] | TPR@10% (attack) [CI] | ppl | gap closed | retained "
            "(chance) | never trained | orig. kept |\n|---|---|---|---|---|---|---|---|---|\n")
    out = [f"Made by: `{command}`\n"]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        out.append(f"\n### {dataset}\n\n" + head)
        for r in (r for r in rows if r["dataset"] == dataset):
            retained = "-" if r["retained_share"] is None else \
                f"{r['retained_share']:.3f} ({r['retained_chance']:.3f})"
            out.append(f"| {r['column']} | {r['average_auc']:.3f}{_ci(r['average_auc_ci'])} | {_leader(r['max_auc'])} "
                       f"| {_leader(r['max_tpr_at_10pct'])} | {r['ppl']:.2f} | {_num(r['gap_closed'], '.0%')} | "
                       f"{retained} | {_num(r['never_trained_share'], '.1%')} | "
                       f"{_num(r['originals_kept'], 'd')} |\n")
    return "".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="an experiment's results.json")
    p.add_argument("--out", type=Path, required=True, help="output prefix: writes PREFIX.json and PREFIX.md")
    p.add_argument("--command", default="", help="the command that made the results (quoted in the table)")
    args = p.parse_args()
    summary = json.loads(args.results.read_text(encoding="utf-8"))
    rows = rows_of(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"name": summary["name"], "command": args.command,
                                                         "settings": summary["settings"], "rows": rows}, indent=2)
                                             + "\n", encoding="utf-8")
    table = markdown(rows, args.command)
    args.out.with_suffix(".md").write_text(f"# {summary['name']}\n\n{table}", encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
