"""`tuneguard run EXPERIMENT.toml`: the privacy-utility table (datasets × regimes × attacks), resumable per cell."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run a privacy-utility experiment described in a TOML file",
        description="Each (dataset, regime) cell fine-tunes (or protects) the base model, attacks it and measures "
                    "held-out perplexity; finished cells are saved and skipped on a re-run. Writes the SOFT paper's "
                    "Table 1 layout (table1.txt), the trade-off curve (tradeoff.png) and report.html.",
        epilog="example: tuneguard run bench/table1_mini.toml")
    p.add_argument("experiment", type=Path, help="experiment TOML file (see bench/table1_mini.toml)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tuneguard.experiment import load_experiment, run_experiment

    summary = run_experiment(load_experiment(args.experiment))
    print(summary["paths"]["table"].read_text())
    print(f"report: {summary['paths']['html']}\ntrade-off plot: {summary['paths']['plot']}")
    return 0
