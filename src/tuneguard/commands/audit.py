"""`tuneguard audit`: fine-tune on a member share of your data, attack, report — one command."""

from __future__ import annotations

import argparse

from tuneguard.commands import add_device_args, number, output
from tuneguard.commands.attack import add_attack_args, attack_options, print_report, read_records
from tuneguard.commands.finetune import add_data_args, add_train_args, train_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit", help="fine-tune on part of your data, then measure how much it leaks membership",
        description="Split --data (seeded) into members and non-members, fine-tune --model on the members, attack "
                    "the result with the base model as reference, and write the report to --out. Each stage is "
                    "saved and a re-run resumes from it. --population FILE adds shadow fine-tunes with the same "
                    "settings and the attacks over them (RMIA, LiRA; offline).",
        epilog="example: tuneguard audit --model smollm2-135m --data notes.jsonl --method lora --epochs 3 "
               "--out runs/audit")
    p.add_argument("--model", required=True, help="base model: embedded name, model dir, .gguf or hub id")
    add_data_args(p)
    p.add_argument("--member-fraction", type=number(float, gt=0, lt=1), default=0.5,
                   help="share trained on; default: %(default)s")
    p.add_argument("--out", required=True, type=output(), help="output directory")
    add_train_args(p)
    add_attack_args(p)
    add_device_args(p, train=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tuneguard.attacks.attacker_data import check_attacker_data
    from tuneguard.audit import audit
    from tuneguard.data import split_members

    texts, records = read_records(args.data, args.column, args.limit)
    options = attack_options(args)
    shadows = options["shadows"]
    if shadows is not None:  # a population overlapping the data is refused before the target is fine-tuned
        split = split_members(texts, member_fraction=args.member_fraction, seed=args.seed)  # audit's own split
        check_attacker_data(shadows.source, shadows.texts(), split.members, split.nonmembers)
    result, paths = audit(args.model, texts, args.out, train=train_config(args), member_fraction=args.member_fraction,
                          seed=args.seed, source=args.data, records=records, **options)
    print_report(result, paths)
    return 0
