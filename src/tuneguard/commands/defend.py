"""`tuneguard defend`: fine-tune with a defence against membership inference: SOFT (paraphrase the samples the model
memorises first), Goldfish (leave a hashed 1/k of the tokens out of the loss), DP-SGD (LoRA with per-sample clipping
and noise at a target epsilon); `defend compare` measures them on your data and recommends one."""

from __future__ import annotations

import argparse
import json
import math
import textwrap
from typing import Callable

from tuneguard.commands import add_params, class_attributes, declared, defend_compare, params_from_args
from tuneguard.commands.finetune import add_finetune_args, print_run, read_texts, train_config
from tuneguard.paraphrase import PARAPHRASERS, GateConfig
from tuneguard.regimes import REGIMES


def _paraphraser_help() -> str:
    """The registered paraphrasers and their parameters (for --paraphraser-param / --fallback-param)."""
    return "paraphrasers (set a parameter with --paraphraser-param NAME=VALUE; the seed is --seed):\n" + "\n".join(
        "  " + PARAPHRASERS.get(name).help().replace("\n", "\n  ") for name in PARAPHRASERS)


def defence_summaries() -> dict[str, str]:
    """The defences `defend` offers, name -> one-line summary: every registered experiment regime with a privacy knob
    (``Regime.knob``), read from its declaration without importing it (SOFT's imports torch). A regime's summary
    describes a column of `tuneguard run`'s table; its first clause (before " (") is the sub-command's."""
    found = {}
    for name in REGIMES:
        declared_ = class_attributes(REGIMES.entry(name), ("summary", "knob"))  # "module:Class", not imported
        if declared_["knob"] is not None:
            found[name] = declared_["summary"].split(" (")[0]
    return found


def register(sub: argparse._SubParsersAction, argv: list[str] | None = None) -> None:
    """`defend` and one sub-command per defence (:func:`defence_summaries`) and `compare`. Given the command line
    ``argv``, only the defence it names is built (the others are listed with their summary), so that `defend --help`
    and `defend dp ...` import no torch; without it every one is built."""
    summaries = defence_summaries()
    offered = {**summaries, "compare": defend_compare.SUMMARY}
    p = sub.add_parser("defend", help=f"fine-tune with a privacy defence ({', '.join(summaries)}), or compare them",
                       description="Fine-tune with a defence against membership inference.")
    defences_ = p.add_subparsers(dest="defence", metavar="DEFENCE", required=True)
    chosen = None
    if argv is not None and "defend" in argv:
        chosen = next((a for a in argv[argv.index("defend") + 1:] if not a.startswith("-")), None)
    bespoke = {"soft": _register_soft, "goldfish": _register_goldfish, "dp": _register_dp,
               "compare": lambda defences, summary: defend_compare.register(defences)}
    for name, summary in offered.items():
        if argv is not None and name != chosen:
            defences_.add_parser(name, help=summary, add_help=False)  # listed, not built
        elif name in bespoke:
            bespoke[name](defences_, summary)
        else:
            _register_regime(defences_, name, summary)


def _register_soft(defences: argparse._SubParsersAction, summary: str) -> None:
    from tuneguard.defenses.soft import DEFAULT_FALLBACK, SoftConfig

    s = defences.add_parser(
        "soft", help=summary,
        description=textwrap.fill(
            "SOFT (Zhang et al., USENIX Security 2025): warm up on --data, score every text's loss, replace the "
            "lowest-loss fraction (--ratio) by quality-checked paraphrases, and fine-tune on the result. Each stage is "
            "saved in --out and an interrupted run resumes; paraphrases.jsonl lists what was selected, how it was "
            "rewritten and what became of it.", 100),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_paraphraser_help() + "\n\nexample: tuneguard defend soft --model smollm2-135m --data notes.jsonl "
                                     "--ratio 0.5 --paraphraser local --out runs/soft")
    d = SoftConfig()
    g = s.add_argument_group("selection")
    add_params(g, SoftConfig, ["ratio", "quantile"], flags={"quantile": "--threshold-quantile"},
               defaults={"quantile": None}, metavars={"quantile": "Q"},
               helps={"quantile": "instead of --ratio: paraphrase texts whose loss is below the Q-quantile of "
                                  "--reference losses"})
    g.add_argument("--reference", help="held-out public texts for --threshold-quantile (same formats as --data)")
    add_params(g, SoftConfig, ["warmup_epochs", "start", "select_by"],
               helps={"start": "final run starts from the base model or the warmed-up one (the protected model's "
                               "recorded base is the base model either way)"})
    recipe = s.add_argument_group("the released code's recipe (each off by default; --preset authors: all four)")
    add_params(recipe, SoftConfig, ["rewrite_span", "schedule", "preset", "drop_unrewritten",
                                    "holdout_scored_as_members"], metavars={"holdout_scored_as_members": "F"})
    q = s.add_argument_group("paraphrasing")
    q.add_argument("--paraphraser", choices=PARAPHRASERS.names(), default=d.paraphraser, help="default: %(default)s")
    q.add_argument("--paraphraser-param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter of the paraphraser (listed below); repeatable")
    q.add_argument("--paraphraser-model",
                   help="local: model to paraphrase with (default smollm2-135m); openai: model name (gpt-4o-mini)")
    q.add_argument("--base-url", help="openai: endpoint (default $OPENAI_BASE_URL, else api.openai.com)")
    q.add_argument("--api-key-env", help="openai: variable holding the key (default OPENAI_API_KEY)")
    add_params(q, GateConfig, ["min_similarity", "max_common_run", "max_ngram_overlap", "max_tries"])
    add_params(q, SoftConfig, ["on_failure"])
    q.add_argument("--fallback-paraphraser", choices=PARAPHRASERS.names(),
                   help=f"--on-failure fallback: the second paraphraser (default {DEFAULT_FALLBACK})")
    q.add_argument("--fallback-param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter of the fallback paraphraser; repeatable")
    add_finetune_args(s)
    s.set_defaults(func=run)


def _register_goldfish(defences: argparse._SubParsersAction, summary: str) -> None:
    from tuneguard.train.goldfish import GoldfishConfig

    p = defences.add_parser(
        "goldfish", help=summary,
        description=textwrap.fill(
            "Goldfish loss (Hans et al., NeurIPS 2024): fine-tune as 'tuneguard finetune' does, but leave one token "
            "in --k out of the loss, chosen by a hash of the --h tokens before it, so a passage repeated anywhere in "
            "the data always drops the same tokens and is never learnt verbatim in full. Saves the model with a run "
            "record (run.json, method '<method>+goldfish'); an interrupted run resumes.", 100),
        epilog="example: tuneguard defend goldfish --model smollm2-135m --data notes.jsonl --method full --lr 1e-4 "
               "--out runs/goldfish")
    add_params(p.add_argument_group("goldfish"), GoldfishConfig)
    add_finetune_args(p)
    p.set_defaults(func=run_goldfish)


def _register_regime(defences: argparse._SubParsersAction, name: str, summary: str) -> None:
    """A defence regime without options of its own here: its declared options (an option named like a fine-tuning
    one is prefixed with the regime's name) and the fine-tuning ones; it trains as a `tuneguard run` column does."""
    regime = REGIMES.get(name)
    p = defences.add_parser(name, help=summary, description=f"{regime.summary}. Fine-tunes --model on --data as "
                                                            f"'tuneguard run' regime {name} does, in --out.")
    add_finetune_args(p)
    g = p.add_argument_group(name)
    added = {}
    for field in [info.name for info in regime.Params.describe()]:
        try:
            added |= add_params(g, regime.Params, [field], unset=True)
        except argparse.ArgumentError:  # e.g. a regime's own --seed or --method
            added |= add_params(g, regime.Params, [field], unset=True, flags={field: f"--{name}-{field}".replace(
                "_", "-")})
    p.set_defaults(func=run_regime, regime=name, regime_options=added)


def _register_dp(defences: argparse._SubParsersAction, summary: str) -> None:
    from tuneguard.defenses.dp_sgd import DPConfig

    p = defences.add_parser(
        "dp", help=summary,
        description=textwrap.fill(
            "DP-SGD (Opacus, RDP accountant): fine-tune LoRA parameters with Poisson-sampled batches of expected "
            "size --batch-size x --grad-accum, each text's gradient clipped to --max-grad-norm and noise calibrated "
            "so the whole run spends --epsilon at --delta. The run record (run.json) holds the epsilon spent, the "
            "noise multiplier and the noise on each step's mean gradient. DP steps need a larger learning rate and "
            "batch than non-private ones, so --lr and --grad-accum default to 10x and 4x 'tuneguard finetune's "
            "(as 'tuneguard run' regime dp scales them); check the result with 'tuneguard audit-dp'.", 100),
        epilog="example: tuneguard defend dp --model smollm2-135m --data notes.jsonl --epsilon 8 --out runs/dp")
    g = p.add_argument_group("differential privacy")
    g.add_argument("--epsilon", type=epsilon(), default=DPConfig().target_epsilon,
                   help="target epsilon of the whole run (inf: clipping only, no noise); default: %(default)s")
    add_finetune_args(p)
    add_dp_args(p, g, delta_help="target delta; default: 1/(10·n), n = training texts")
    p.set_defaults(func=run_dp)


def add_dp_args(p: argparse.ArgumentParser, group: argparse._ArgumentGroup, *, delta_help: str) -> None:
    """--delta and --max-grad-norm (into ``group``) and the DP regime's scaling of the --lr and --grad-accum defaults:
    what `defend dp` and `audit-dp` share, so the run audit-dp audits is the run `defend dp` trains. Call it after
    the fine-tuning options are added (it changes their defaults)."""
    from tuneguard.defenses.dp_sgd import DPConfig
    from tuneguard.regimes.dp import DPOptions
    from tuneguard.train import TrainConfig

    group.add_argument("--delta", type=declared(DPConfig, "delta"), help=delta_help)
    group.add_argument("--max-grad-norm", type=declared(DPConfig, "max_grad_norm"), default=DPConfig().max_grad_norm,
                       help="per-sample gradient clipping bound; default: %(default)s")
    # Clipped, noisy steps need a larger step size and batch than the non-private defaults: the DP regime's factors.
    scale, train = DPOptions(), TrainConfig()
    p.set_defaults(lr=train.lr * scale.lr_factor, grad_accum=train.grad_accum * scale.batch_factor)


def epsilon() -> Callable[[str], float]:
    """An argparse ``type`` for a target epsilon: DPConfig's declared bound, or ``inf`` (clipping only, no noise),
    which the experiment file's ``epsilon = inf`` also means: one rule for both."""
    from tuneguard.defenses.dp_sgd import DPConfig

    finite = declared(DPConfig, "target_epsilon")

    def parse(text: str) -> float:
        return math.inf if text.strip().lower() in ("inf", "infinity") else finite(text)

    parse.__name__ = "epsilon"
    return parse


def _params(pairs: list[str], flag: str) -> dict:
    """NAME=VALUE pairs as a dict (values are read as JSON where they parse, by the declared parameters)."""
    from tuneguard.errors import TuneguardError

    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise TuneguardError(f"{flag} {pair!r} must read NAME=VALUE")
        out[name.strip()] = value
    return out


def run(args: argparse.Namespace) -> int:
    from tuneguard.defenses.soft import SoftConfig, run_soft, summary_line

    options = _params(args.paraphraser_param, "--paraphraser-param")
    for key, value in (("model", args.paraphraser_model), ("base_url", args.base_url),
                       ("api_key_env", args.api_key_env)):
        if value is not None:
            options[key] = value
    threshold = args.threshold_quantile is not None
    reference = read_texts(args.reference, args.column).texts if args.reference else None
    # Checked here, before the data or any model is read.
    config = SoftConfig.create("defend soft", {
        "mode": "threshold" if threshold else "ratio", "ratio": args.ratio,
        **({"quantile": args.threshold_quantile} if threshold else {}), "reference": reference,
        "warmup_epochs": args.warmup_epochs, "start": args.start, "select_by": args.select_by,
        "rewrite_span": args.rewrite_span, "drop_unrewritten": args.drop_unrewritten, "schedule": args.schedule,
        "holdout_scored_as_members": args.holdout_scored_as_members, "preset": args.preset,
        "paraphraser": args.paraphraser,
        "paraphraser_options": options,
        "gate": {"min_similarity": args.min_similarity, "max_common_run": args.max_common_run,
                 "max_ngram_overlap": args.max_ngram_overlap, "max_tries": args.max_tries},
        "on_failure": args.on_failure, "fallback_paraphraser": args.fallback_paraphraser,
        "fallback_options": _params(args.fallback_param, "--fallback-param"), "seed": args.seed})
    train = train_config(args)
    texts = read_texts(args.data, args.column, args.limit)
    print(texts.summary())
    result = run_soft(args.model, texts.texts, args.out, train=train, config=config)
    print(summary_line(result.summary))
    print(json.dumps(result.summary, indent=2))
    return 0


def run_goldfish(args: argparse.Namespace) -> int:
    from tuneguard.train import finetune
    from tuneguard.train.goldfish import GoldfishConfig

    goldfish = GoldfishConfig.create("defend goldfish", {"k": args.k, "h": args.h})
    return _train(args, lambda texts, train: finetune(args.model, texts, args.out, train, goldfish=goldfish))


def run_dp(args: argparse.Namespace) -> int:
    from tuneguard.defenses.dp_sgd import DPConfig, check_method, dp_finetune

    dp = DPConfig.create("defend dp", {"target_epsilon": args.epsilon, "delta": args.delta,
                                       "max_grad_norm": args.max_grad_norm})
    check_method(train_config(args))  # before any data or model is read
    return _train(args, lambda texts, train: dp_finetune(args.model, texts, args.out, train, dp))


def run_regime(args: argparse.Namespace) -> int:
    """A defence regime built as a `tuneguard run` column is, from the base model and all of --data."""
    from tuneguard.models import load_model

    regime = REGIMES.make(args.regime, **params_from_args(args, args.regime_options, drop_none=True))
    train = regime.train_config(train_config(args))
    texts = read_texts(args.data, args.column, args.limit)
    print(texts.summary())
    _, facts = regime.build(load_model(args.model), texts.texts, args.out, train)
    print(json.dumps(facts, default=str))
    print(f"saved in {args.out}")
    return 0


def _train(args: argparse.Namespace, fit) -> int:
    """Read --data, fit on it with the command's TrainConfig, print the run."""
    train = train_config(args)
    texts = read_texts(args.data, args.column, args.limit)
    print(texts.summary())
    print_run(fit(texts.texts, train))
    return 0
