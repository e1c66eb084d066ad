"""`tuneguard defend compare`: measure the candidate defences on your own data and recommend the most useful one
that meets your privacy target (a sub-command of `tuneguard defend`, registered by `commands.defend`)."""

from __future__ import annotations

import argparse
import textwrap

from tuneguard.attacks.options import AttackOptions
from tuneguard.commands import add_device_args, add_params, listed, number, output, privacy_target
from tuneguard.commands.finetune import add_data_args, add_train_args, read_texts, train_config
from tuneguard.defenses.compare import CANDIDATES
from tuneguard.privacy_target import DEFAULT_TARGET


SUMMARY = "measure the candidate defences on your data; recommend the most useful that meets a target"


def _candidate(name: str) -> str:
    if name not in CANDIDATES:
        raise argparse.ArgumentTypeError(f"unknown candidate {name!r} (choose from {', '.join(CANDIDATES)})")
    return name


def register(defences: argparse._SubParsersAction) -> None:
    p = defences.add_parser(
        "compare", help=SUMMARY,
        description=textwrap.fill(
            "How to fine-tune without leaking, answered on your own data: split --data (seeded) into shadow members "
            "and non-members, train every candidate regime on the members with your fine-tuning settings, attack "
            "each with the strongest attacks (ratio, EZ-MIA, WBC and their ensemble: a regime is judged by its "
            "strongest), measure its held-out perplexity, and recommend the most useful regime whose strongest "
            "attack meets --target, with the command that trains the final model on all the data. Writes "
            "compare.json, compare.md and frontier.png to --out; every cell is saved and a re-run resumes. The time "
            "it will take is estimated before it starts.", 100),
        epilog="candidates: plain (your settings), fewer-epochs (half), lower-rank (a quarter, LoRA), dropout "
               "(LoRA dropout 0.1), layer-exclusion (LoRA on the lower half of the layers), dp-eps8 / dp-eps4 / "
               "dp-eps1 (DP-SGD LoRA), soft (rho 1, local anti-copy paraphraser), goldfish (full fine-tuning, "
               "k 4).\nChoosing among regimes on your private data is itself a use of that data: DP-SGD's "
               "epsilon does not cover the selection.\n\nexample: tuneguard defend compare --model smollm2-135m "
               "--data notes.jsonl --epochs 3 --lr 1e-3 --max-length 96 --target 'tpr@1%<=0.05' --out runs/compare",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="embedded name (tuneguard models), model dir, .gguf or hub id")
    add_data_args(p)
    g = p.add_argument_group("comparison")
    g.add_argument("--target", type=privacy_target, default=DEFAULT_TARGET,
                   help="privacy target on each regime's strongest attack: tpr@FPR%%<=BOUND (FPR 0.1, 1 or 10; TPR at "
                        "1%% FPR needs >= 100 shadow non-members) or auc<=BOUND; default: %(default)s")
    g.add_argument("--candidates", type=listed(_candidate), default=CANDIDATES, metavar="NAMES",
                   help=f"comma-separated, from: {', '.join(CANDIDATES)} (plain always runs); default: all")
    g.add_argument("--member-fraction", type=number(float, gt=0, lt=1), default=0.5,
                   help="share of --data the shadow runs train on; default: %(default)s")
    g.add_argument("--eval", metavar="FILE", help="your own held-out texts: the utility is their perplexity "
                                                 "(default: the shadow non-members')")
    g.add_argument("--budget-minutes", type=number(float, gt=0), metavar="M",
                   help="drop the most expensive candidates (estimated) until the run fits in M minutes")
    g.add_argument("--tokens-per-second", type=number(float, gt=0), metavar="N",
                   help="forward speed for the estimate (default: measured on your data before the start)")
    g.add_argument("--estimate-only", action="store_true",
                   help="print the estimated time (after --budget-minutes) and stop before the first cell")
    add_params(g, AttackOptions, ["n_boot", "batch_size"], flags={"n_boot": "--bootstrap",
                                                                    "batch_size": "--score-batch-size"},
               metavars={"batch_size": "N"})
    add_train_args(p)
    add_device_args(p, train=True)
    p.add_argument("--out", required=True, type=output(), help="output directory (resumable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tuneguard.defenses.compare import check_measurable, plan_compare, run_compare
    from tuneguard.report.compare import compare_text, estimate_text

    texts = read_texts(args.data, args.column, args.limit)
    print(texts.summary())
    # Before the model, the evaluation texts or any training: a target this split cannot measure.
    check_measurable(args.target, len(texts.texts), args.member_fraction)
    eval_texts = read_texts(args.eval).texts if args.eval else None
    plan = plan_compare(args.model, texts.texts, args.out, target=args.target, train=train_config(args),
                        names=args.candidates, member_fraction=args.member_fraction, seed=args.seed,
                        eval_texts=eval_texts, budget_minutes=args.budget_minutes,
                        tokens_per_second=args.tokens_per_second, n_boot=args.bootstrap,
                        batch_size=args.score_batch_size, data=args.data, column=args.column)
    print(estimate_text(plan))
    if args.estimate_only:
        return 0
    comparison = run_compare(plan)
    print(compare_text(comparison))
    paths = comparison["paths"]
    print(f"\nsaved: {paths['json']}, {paths['markdown']}, {paths['plot']}")
    return 0

