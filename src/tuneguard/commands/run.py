"""`tuneguard run EXPERIMENT.toml`: the privacy-utility table (datasets × regimes × attacks), resumable per cell."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from tuneguard.regimes import REGIMES


def regimes_help() -> str:
    """One paragraph per registered regime: its summary and its options (for ``run --help``)."""
    lines = ["regimes (a [regimes] entry's kind; its name by default):"]
    for name in REGIMES:
        cls = REGIMES.get(name)
        lines.append(f"  {name}: {cls.summary}")
        lines += [f"      {p.line()}" for p in cls.Params.describe()]
        lines += [f"      {option}: {what}" for option, what in cls.expands.items()]
    lines.append("  every regime also takes train = {...} (TrainConfig options overriding [train])")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run a privacy-utility experiment described in a TOML file",
        description=textwrap.fill(
            "Each (dataset, regime) cell fine-tunes (or protects) the base model, attacks it within its training "
            "window and measures held-out perplexity; finished cells are saved and reused while everything that "
            "decided them is unchanged. Writes the SOFT paper's Table 1 layout (table1.txt), the trade-off curve "
            "(tradeoff.png) and report.html. The file is checked in full before any model loads.", 100),
        epilog=f"{regimes_help()}\n\nexamples:\n  tuneguard run bench/table1_mini.toml\n"
               "  tuneguard run bench/dp_sweep.toml --regimes 'pretrained,lora,dp-e8-*-ep3'  # a slice",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", type=Path, help="experiment TOML file (see bench/table1_mini.toml)")
    p.add_argument("--regimes", metavar="NAMES",
                   help="run only these regime columns: comma-separated names or shell patterns, e.g. "
                        "'pretrained,lora,dp-e8-*' (the table holds them alone; the others' saved cells are kept, "
                        "untouched, for the full run)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tuneguard.experiment import load_experiment, run_experiment, select_regimes

    exp = load_experiment(args.experiment)
    if args.regimes is not None:
        exp = select_regimes(exp, args.regimes)
    summary = run_experiment(exp)
    print(summary["paths"]["table"].read_text())
    print(f"report: {summary['paths']['html']}\ntrade-off plot: {summary['paths']['plot']}")
    return 0
