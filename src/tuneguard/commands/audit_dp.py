"""`tuneguard audit-dp`: empirical epsilon lower bounds for DP fine-tuning, from canaries and one training run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from tuneguard.commands import add_device_args, add_params, listed, number, output
from tuneguard.commands.defend import add_dp_args, epsilon
from tuneguard.commands.finetune import add_data_args, add_train_args, read_texts, train_config
from tuneguard.defenses.dp_sgd import BUGS
from tuneguard.dpaudit.canaries import KINDS, CanaryParams
from tuneguard.errors import TuneguardError
from tuneguard.report.table import printable

if TYPE_CHECKING:  # the bound imports scipy: only when the command runs, not when the CLI builds its parser
    from tuneguard.dpaudit.bound import BoundParams

EXAMPLES = ("examples: tuneguard audit-dp --model smollm2-135m --data notes.jsonl --epsilon 1,4,8 --canaries 1000 "
            "--out runs/dp-audit; tuneguard audit-dp ... --epsilon 4 --plant-bug noise=0.1 --out runs/dp-bug (does "
            "the audit catch a broken run?); tuneguard audit-dp --scores my_canaries.jsonl --delta 1e-5 --out "
            "runs/my-audit")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit-dp", help="check that DP fine-tuning delivers its epsilon: canaries, one run each, lower bounds",
        description="Plant canaries (each trained on with probability 1/2, seeded and saved), fine-tune MODEL with "
                    "LoRA on --data plus the chosen canaries once per --epsilon with DP-SGD (the settings of "
                    "'tuneguard defend dp': the same options and defaults) and once without DP, score every canary "
                    "(its log-likelihood ratio to the base model) and turn the guesses into one-run epsilon lower "
                    "bounds with 95% confidence: Steinke, Nasr & Jagielski (2023) and the f-DP audit of "
                    "Mahloujifar, Melis & Chaudhuri (2025), each at the run's delta and as a pure-DP test at "
                    "delta 0. A bound above the claimed epsilon means the training did not deliver it; "
                    "--plant-bug shows whether the audit would notice. Writes audit.json, report.html and "
                    "bound_vs_epsilon.png to --out; every stage is saved and a re-run resumes. With --scores FILE "
                    "(JSON Lines: score, higher = more likely included, and included true/false per canary) it "
                    "only computes the bounds from your own canaries.",
        epilog=EXAMPLES)
    p.add_argument("--model", help="base model: embedded name, model dir, .gguf or hub id")
    add_data_args(p)
    for action in p._actions:  # --data is needed only without --scores (checked in run)
        if "--data" in action.option_strings:
            action.required = False
    p.add_argument("--out", required=True, type=output(), help="output directory")
    g = p.add_argument_group("audit")
    g.add_argument("--epsilon", type=listed(epsilon()), default="1,4,8",
                   help="comma-separated target epsilons of the DP-SGD runs; default: %(default)s")
    g.add_argument("--no-baseline", action="store_true", help="skip the fine-tuning run without DP")
    add_params(g, CanaryParams, ["count"], flags={"count": "--canaries"})
    g.add_argument("--canary-kind", default=",".join(CanaryParams().kinds),
                   help=f"comma-separated, from {', '.join(KINDS)}; default: %(default)s")
    add_params(g, CanaryParams, ["length", "prefix_length"], flags={"length": "--canary-length",
                                                                    "prefix_length": "--canary-prefix"})
    g.add_argument("--holdout", type=number(float, gt=0, lt=1), default=0.1,
                   help="share of --data held out for perplexity; default: %(default)s")
    # The ranges and choices of tuneguard.dpaudit.bound's BoundParams, which imports scipy (checked again there).
    g.add_argument("--beta", type=number(float, gt=0, lt=1), default=0.05,
                   help="the bounds hold with confidence 1 - beta; default: %(default)s")
    g.add_argument("--guesses", type=listed(number(float, gt=0, le=0.5)), default="0.05",
                   help="k+ = k- as fractions of the canaries, fixed in advance; several are each tested at beta / "
                        "their number; default: %(default)s")
    g.add_argument("--tradeoff", choices=("gaussian", "dp"), default="gaussian",
                   help="the f-DP bound's curve at delta > 0: gaussian (the Gaussian mechanism with the claimed "
                        "(epsilon, delta), as DP-SGD; tighter) or dp (any (epsilon, delta)-DP mechanism); "
                        "default: %(default)s")
    g.add_argument("--plant-bug", metavar="BUG",
                   help=f"plant a bug into every DP run, to check the audit catches it: {BUGS}. Those runs are NOT "
                        "your mechanism (their record and the report say so)")
    g.add_argument("--score-batch-size", type=number(int, ge=1), default=8,
                   help="texts per forward pass; default: %(default)s")
    g.add_argument("--scores", type=Path, metavar="FILE",
                   help="only compute the bounds from this JSON Lines file of canary scores (no training)")
    add_train_args(p)
    add_dp_args(p, g, delta_help="delta of DP-SGD and of the bounds; default: min(1/(10·n), 1e-5), n = real "
                                 "training texts + half the canaries; with --scores: 0 (a pure-DP test)")
    add_device_args(p)  # DP-SGD trains in the model's dtype, without gradient checkpointing
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tuneguard.dpaudit.bound import BoundParams

    bound = {"beta": args.beta, "guesses": args.guesses, "tradeoff": args.tradeoff, "seed": args.seed}
    if args.scores is not None:
        given = [f"--{n.replace('_', '-')}" for n in ("model", "data", "plant_bug") if getattr(args, n)]
        if given:
            raise TuneguardError(f"--scores computes the bounds from your scores alone: drop {' and '.join(given)}")
        bound["delta"] = args.delta or 0.0
        return _from_scores(args.scores, args.out, BoundParams.create("audit-dp", bound))
    missing = [f"--{n}" for n in ("model", "data") if not getattr(args, n)]
    if missing:
        raise TuneguardError(f"audit-dp needs {' and '.join(missing)} (or --scores FILE to bound your own canaries)")
    return _train_and_audit(args, BoundParams.create("audit-dp", bound))


def _train_and_audit(args: argparse.Namespace, bound: BoundParams) -> int:
    from tuneguard.defenses.dp_sgd import check_method
    from tuneguard.dpaudit.audit import DPAuditParams, audit_dp
    from tuneguard.report.dpaudit import audit_table, write_audit_report

    train = train_config(args)
    check_method(train)  # as `defend dp` does, before any data or model is read
    audit = DPAuditParams.create("audit-dp", {"epsilons": args.epsilon, "no_dp": not args.no_baseline,
                                              "delta": args.delta, "max_grad_norm": args.max_grad_norm,
                                              "holdout": args.holdout, "seed": args.seed,
                                              "batch_size": args.score_batch_size, "plant_bug": args.plant_bug})
    kinds = [k.strip() for k in args.canary_kind.split(",") if k.strip()]
    canaries = CanaryParams.create("audit-dp canaries", {"count": args.canaries, "kinds": kinds,
                                                         "length": args.canary_length,
                                                         "prefix_length": args.canary_prefix, "seed": args.seed})
    texts = read_texts(args.data, args.column, args.limit)
    print(texts.summary())
    result = audit_dp(args.model, texts.texts, args.out, train=train, audit=audit, canaries=canaries, bound=bound,
                      report=lambda line: print(line, flush=True))
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
    steinke = one_run_audit(scores, included, bound)
    fdp = one_run_audit(scores, included, bound, method="fdp")
    # Steinke's bound at the top level (as before the f-DP bound was added), the f-DP one beside it.
    target = atomic_write_json(out / "audit.json", {"source": str(path), **steinke.to_json(), "fdp": fdp.to_json()})
    print(f"epsilon lower bound: {steinke.epsilon_lower_bound:.3f} (Steinke) / {fdp.epsilon_lower_bound:.3f} (f-DP, "
          f"{fdp.curve} curve) ({steinke.confidence:.0%} confidence, delta {steinke.delta:g}; {steinke.correct} of "
          f"{steinke.guesses} guesses right, k+ {steinke.k_plus}, k- {steinke.k_minus}, {steinke.m} canaries)")
    print(printable(f"json: {target}"))
    return 0
