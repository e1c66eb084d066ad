"""`tuneguard audit-dp`: an empirical epsilon lower bound for DP fine-tuning, from canaries and one training run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from tuneguard.commands import declared, listed, number, output
from tuneguard.commands.finetune import add_data_args, add_train_args, read_texts, train_config
from tuneguard.dpaudit.canaries import KINDS, CanaryParams
from tuneguard.errors import TuneguardError
from tuneguard.models.device import add_device_args
from tuneguard.report.table import printable

if TYPE_CHECKING:  # the bound imports scipy: only when the command runs, not when the CLI builds its parser
    from tuneguard.dpaudit.bound import BoundParams

EXAMPLES = ("examples: tuneguard audit-dp --model smollm2-135m --data notes.jsonl --epsilon 1,4,8 --canaries 1000 "
            "--out runs/dp-audit; tuneguard audit-dp --scores my_canaries.jsonl --delta 1e-5 --out runs/my-audit")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit-dp", help="check that DP fine-tuning delivers its epsilon: canaries, one run each, a lower bound",
        description="Plant canaries (each trained on with probability 1/2, seeded and saved), fine-tune MODEL with "
                    "LoRA on --data plus the chosen canaries once per --epsilon with DP-SGD and once without DP, "
                    "score every canary (target vs base likelihood) and turn the guesses into a one-run epsilon "
                    "lower bound with 95% confidence (Steinke, Nasr & Jagielski 2023). A bound above the claimed "
                    "epsilon means the training did not deliver it. Writes audit.json, report.html and "
                    "bound_vs_epsilon.png to --out; every stage is saved and a re-run resumes. With --scores FILE "
                    "(JSON Lines: score, higher = more likely included, and included true/false per canary) it "
                    "only computes the bound from your own canaries.",
        epilog=EXAMPLES)
    p.add_argument("--model", help="base model: embedded name, model dir, .gguf or hub id")
    add_data_args(p)
    for action in p._actions:  # --data is needed only without --scores (checked in run)
        if "--data" in action.option_strings:
            action.required = False
    p.add_argument("--out", required=True, type=output(), help="output directory")
    g = p.add_argument_group("audit")
    g.add_argument("--epsilon", type=listed(number(float, gt=0)), default="1,4,8",
                   help="comma-separated target epsilons of the DP-SGD runs; default: %(default)s")
    g.add_argument("--no-baseline", action="store_true", help="skip the fine-tuning run without DP")
    # The ranges of tuneguard.dpaudit's declarations (DPAuditParams, BoundParams), which import torch and scipy.
    g.add_argument("--delta", type=number(float, ge=0, lt=1),
                   help="delta of DP-SGD and of the bound (default: min(1/(10·n), 1e-5) for training; 0 with --scores)")
    g.add_argument("--max-grad-norm", type=number(float, gt=0), default=1.0,
                   help="DP-SGD clipping norm; default: %(default)s")
    g.add_argument("--canaries", type=declared(CanaryParams, "count"), default=1000,
                   help="number of canaries; default: %(default)s")
    g.add_argument("--canary-kind", default="rare-tokens",
                   help=f"comma-separated, from {', '.join(KINDS)}; default: %(default)s")
    g.add_argument("--canary-length", type=declared(CanaryParams, "length"), default=24,
                   help="tokens per canary; default: %(default)s")
    g.add_argument("--holdout", type=number(float, gt=0, lt=1), default=0.1,
                   help="share of --data held out for perplexity; default: %(default)s")
    g.add_argument("--beta", type=number(float, gt=0, lt=1), default=0.05,
                   help="the bound holds with confidence 1 - beta; default: %(default)s")
    g.add_argument("--score-batch-size", type=number(int, ge=1), default=8,
                   help="texts per forward pass; default: %(default)s")
    g.add_argument("--scores", type=Path, metavar="FILE",
                   help="only compute the bound from this JSON Lines file of canary scores (no training)")
    add_train_args(p)
    add_device_args(p)  # DP-SGD trains in the model's dtype, without gradient checkpointing
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tuneguard.dpaudit.bound import BoundParams

    bound = {"beta": args.beta, "seed": args.seed}
    if args.scores is not None:
        given = [f"--{n}" for n in ("model", "data") if getattr(args, n)]
        if given:
            raise TuneguardError(f"--scores computes the bound from your scores alone: drop {' and '.join(given)}")
        bound["delta"] = args.delta or 0.0
        return _from_scores(args.scores, args.out, BoundParams.create("audit-dp", bound))
    missing = [f"--{n}" for n in ("model", "data") if not getattr(args, n)]
    if missing:
        raise TuneguardError(f"audit-dp needs {' and '.join(missing)} (or --scores FILE to bound your own canaries)")
    return _train_and_audit(args, BoundParams.create("audit-dp", bound))


def _train_and_audit(args: argparse.Namespace, bound: BoundParams) -> int:
    from tuneguard.dpaudit.audit import DPAuditParams, audit_dp
    from tuneguard.report.dpaudit import audit_table, write_audit_report

    audit = DPAuditParams.create("audit-dp", {"epsilons": args.epsilon, "no_dp": not args.no_baseline,
                                              "delta": args.delta, "max_grad_norm": args.max_grad_norm,
                                              "holdout": args.holdout, "seed": args.seed,
                                              "batch_size": args.score_batch_size})
    kinds = [k.strip() for k in args.canary_kind.split(",") if k.strip()]
    canaries = CanaryParams.create("audit-dp canaries", {"count": args.canaries, "kinds": kinds,
                                                         "length": args.canary_length, "seed": args.seed})
    texts = read_texts(args.data, args.column, args.limit)
    print(texts.summary())
    result = audit_dp(args.model, texts.texts, args.out, train=train_config(args), audit=audit, canaries=canaries,
                      bound=bound, report=lambda line: print(line, flush=True))
    paths = write_audit_report(result)
    print(audit_table(result))
    shown = {k: printable(str(v)) for k, v in paths.items()}  # under --out, whose name may hold a newline
    print(f"report: {shown['html']}\njson: {shown['json']}\nplot: {shown['plot']}")
    return 0


def _from_scores(path: Path, out: Path, bound: BoundParams) -> int:
    from tuneguard.dpaudit.audit import read_scores
    from tuneguard.dpaudit.bound import one_run_audit
    from tuneguard.files import atomic_write_json

    scores, included = read_scores(path)
    result = one_run_audit(scores, included, bound)
    target = atomic_write_json(out / "audit.json", {"source": str(path), **result.to_json()})
    print(f"epsilon lower bound: {result.epsilon_lower_bound:.3f} ({result.confidence:.0%} confidence, delta "
          f"{result.delta:g}; {result.correct} of {result.guesses} guesses right, k+ {result.k_plus}, "
          f"k- {result.k_minus}, {result.m} canaries)")
    print(printable(f"json: {target}"))
    return 0

