"""`tuneguard attack`: run membership inference attacks on a model with known members and non-members."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from tuneguard.attacks import DEFAULT_ATTACKS, REGISTRY
from tuneguard.commands.finetune import read_texts
from tuneguard.data import load_texts
from tuneguard.errors import TuneguardError


def parse_params(items: list[str] | None) -> dict[str, dict]:
    """``ATTACK.KEY=VALUE`` options into ``{attack: {key: value}}`` (values read as JSON when they parse)."""
    params: dict[str, dict] = defaultdict(dict)
    for item in items or []:
        head, sep, value = item.partition("=")
        attack, dot, key = head.rpartition(".")
        if not sep or not dot or not attack or not key:
            raise TuneguardError(f"--param {item!r}: expected ATTACK.KEY=VALUE, e.g. min-k.k=0.1")
        try:
            params[attack][key] = json.loads(value)
        except json.JSONDecodeError:
            params[attack][key] = value
    return dict(params)


def add_attack_args(p: argparse.ArgumentParser, *, plain_names: bool = False) -> None:
    """Options shared by `attack` and `audit`; ``plain_names`` also names the scoring options --batch-size and
    --max-length (for a command without fine-tuning options, which use those names)."""
    g = p.add_argument_group("attacks")
    g.add_argument("--attacks", default="all",
                   help=f"comma-separated, from: {', '.join(REGISTRY)}; 'all' = {', '.join(DEFAULT_ATTACKS)}")
    g.add_argument("--param", action="append", metavar="ATTACK.KEY=VALUE",
                   help="an attack parameter, repeatable (e.g. min-k.k=0.1, ratio.form=ratio, con-recall.gamma=0.5)")
    g.add_argument("--corpus", help="reference corpus file for dc-pdd's token frequencies")
    g.add_argument("--shots", type=int, default=7, help="ReCall / CON-ReCall shots; default: %(default)s")
    plain = (lambda name: [name]) if plain_names else (lambda name: [])
    g.add_argument("--score-batch-size", *plain("--batch-size"), dest="score_batch_size", type=int, default=8,
                   metavar="N", help="texts per forward pass; default: %(default)s")
    g.add_argument("--score-max-length", *plain("--max-length"), dest="score_max_length", type=int, metavar="N",
                   help="truncate scored texts to N tokens (default: the model context; for audit, the training "
                        "--max-length)")
    g.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws for the CIs; default: %(default)s")


def attack_options(args: argparse.Namespace) -> dict:
    """Keyword arguments for run_attacks from `add_attack_args` options."""
    return {"attacks": args.attacks, "params": parse_params(args.param), "n_shots": args.shots,
            "corpus": load_texts(args.corpus) if args.corpus else None, "batch_size": args.score_batch_size,
            "max_length": args.score_max_length, "n_boot": args.bootstrap}


def print_report(result: dict, paths: dict) -> None:
    """The terminal table, warnings, and where the report went."""
    from tuneguard.report import mia_table

    print(mia_table(result))
    for warning in result["warnings"]:
        print(f"warning: {warning}")
    print(f"report: {paths['html']}\nresults: {paths['json']}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attack", help="membership inference on a model with known members / non-members",
        description="Score every text under the target (and a reference model), run the attacks, and write "
                    "results.json, ROC plots and report.html to --out. Scores are cached, so re-runs and added "
                    "attacks cost no repeated forward pass.",
        epilog="example: tuneguard attack --target runs/lora --members train.jsonl --nonmembers heldout.jsonl "
               "--out runs/lora/audit")
    p.add_argument("--target", required=True, help="fine-tuned model: adapter dir, model dir, embedded name, hub id")
    p.add_argument("--members", required=True, help="texts the target was trained on")
    p.add_argument("--nonmembers", required=True, help="texts it was not trained on, from the same distribution")
    p.add_argument("--reference", help="reference model for ratio (default: the target's base model)")
    p.add_argument("--column", help="text column of the member/non-member files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path, help="output directory")
    add_attack_args(p, plain_names=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tuneguard.attacks import run_attacks
    from tuneguard.report import write_mia_report

    members = read_texts(args.members, args.column).texts
    nonmembers = read_texts(args.nonmembers, args.column).texts
    result = run_attacks(args.target, members, nonmembers, reference=args.reference, seed=args.seed,
                         **attack_options(args))
    print_report(result, write_mia_report(args.out, result))
    return 0
