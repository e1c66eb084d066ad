"""`tuneguard defend soft`: fine-tune with SOFT (paraphrase the samples the model memorises first)."""

from __future__ import annotations

import argparse
import json
import textwrap

from tuneguard.commands import declared, output
from tuneguard.commands.finetune import add_data_args, add_train_args, read_texts, train_config
from tuneguard.models.device import add_device_args
from tuneguard.paraphrase import PARAPHRASERS, GateConfig


def _paraphraser_help() -> str:
    """The registered paraphrasers and their parameters (for --paraphraser-param / --fallback-param)."""
    return "paraphrasers (set a parameter with --paraphraser-param NAME=VALUE; the seed is --seed):\n" + "\n".join(
        "  " + PARAPHRASERS.get(name).help().replace("\n", "\n  ") for name in PARAPHRASERS)


def register(sub: argparse._SubParsersAction) -> None:
    from tuneguard.defenses.soft import DEFAULT_FALLBACK, ON_FAILURE, STARTS, SoftConfig

    p = sub.add_parser("defend", help="fine-tune with a privacy defence (SOFT)",
                       description="Fine-tune with a defence against membership inference.")
    defences = p.add_subparsers(dest="defence", metavar="DEFENCE", required=True)
    s = defences.add_parser(
        "soft", help="SOFT: paraphrase the lowest-loss samples, then fine-tune",
        description=textwrap.fill(
            "SOFT (Zhang et al., USENIX Security 2025): warm up on --data, score every text's loss, replace the "
            "lowest-loss fraction (--ratio) by quality-checked paraphrases, and fine-tune on the result. Each stage is "
            "saved in --out and an interrupted run resumes; paraphrases.jsonl lists what was selected, how it was "
            "rewritten and what became of it.", 100),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_paraphraser_help() + "\n\nexample: tuneguard defend soft --model smollm2-135m --data notes.jsonl "
                                     "--ratio 0.5 --paraphraser local --out runs/soft")
    s.add_argument("--model", required=True, help="embedded name (tuneguard models), model dir, .gguf or hub id")
    add_data_args(s)
    d = SoftConfig()
    g = s.add_argument_group("selection")
    g.add_argument("--ratio", type=declared(SoftConfig, "ratio"), default=d.ratio,
                   help="fraction of texts to paraphrase (ρ); default: %(default)s")
    g.add_argument("--threshold-quantile", type=declared(SoftConfig, "quantile"), metavar="Q",
                   help="instead of --ratio: paraphrase texts whose loss is below the Q-quantile of --reference losses")
    g.add_argument("--reference", help="held-out public texts for --threshold-quantile (same formats as --data)")
    g.add_argument("--warmup-epochs", type=declared(SoftConfig, "warmup_epochs"), default=d.warmup_epochs,
                   help="0 scores with the base model; default: %(default)s")
    g.add_argument("--start", choices=STARTS, default=d.start,
                   help="final run starts from the base model or the warmed-up one (the protected model's recorded "
                        "base is the base model either way); default: %(default)s")
    q = s.add_argument_group("paraphrasing")
    q.add_argument("--paraphraser", choices=PARAPHRASERS.names(), default=d.paraphraser, help="default: %(default)s")
    q.add_argument("--paraphraser-param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter of the paraphraser (listed below); repeatable")
    q.add_argument("--paraphraser-model",
                   help="local: model to paraphrase with (default smollm2-135m); openai: model name (gpt-4o-mini)")
    q.add_argument("--base-url", help="openai: endpoint (default $OPENAI_BASE_URL, else api.openai.com)")
    q.add_argument("--api-key-env", help="openai: variable holding the key (default OPENAI_API_KEY)")
    gate = GateConfig()
    q.add_argument("--min-similarity", type=declared(GateConfig, "min_similarity"), default=gate.min_similarity,
                   help="default: %(default)s")
    q.add_argument("--max-common-run", type=declared(GateConfig, "max_common_run"), default=gate.max_common_run,
                   help="most words a paraphrase may copy in a row; default: %(default)s")
    q.add_argument("--max-ngram-overlap", type=declared(GateConfig, "max_ngram_overlap"),
                   default=gate.max_ngram_overlap,
                   help="largest share of the original's word 3-grams kept; default: %(default)s")
    q.add_argument("--max-tries", type=declared(GateConfig, "max_tries"), default=gate.max_tries,
                   help="paraphrase attempts per text and paraphraser; default: %(default)s")
    q.add_argument("--on-failure", choices=ON_FAILURE, default=d.on_failure,
                   help="a text whose paraphrases all fail the gate: original = train on it unprotected (counted), "
                        "fallback = try --fallback-paraphraser first, drop = leave it out; default: %(default)s")
    q.add_argument("--fallback-paraphraser", choices=PARAPHRASERS.names(),
                   help=f"--on-failure fallback: the second paraphraser (default {DEFAULT_FALLBACK})")
    q.add_argument("--fallback-param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter of the fallback paraphraser; repeatable")
    add_train_args(s)
    add_device_args(s, train=True)
    s.add_argument("--out", required=True, type=output(), help="run directory")
    s.set_defaults(func=run)


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
        "warmup_epochs": args.warmup_epochs, "start": args.start, "paraphraser": args.paraphraser,
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
