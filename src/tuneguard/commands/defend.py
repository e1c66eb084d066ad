"""`tuneguard defend soft`: fine-tune with SOFT (paraphrase the samples the model memorises first)."""

from __future__ import annotations

import argparse
import json

from tuneguard.commands.finetune import add_data_args, add_train_args, read_texts, train_config
from tuneguard.paraphrase import PARAPHRASERS, GateConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("defend", help="fine-tune with a privacy defence (SOFT)",
                       description="Fine-tune with a defence against membership inference.")
    defences = p.add_subparsers(dest="defence", metavar="DEFENCE", required=True)
    s = defences.add_parser(
        "soft", help="SOFT: paraphrase the lowest-loss samples, then fine-tune",
        description="SOFT (Zhang et al., USENIX Security 2025): warm up on --data, score every text's loss, replace "
                    "the lowest-loss fraction (--ratio) by quality-checked paraphrases, and fine-tune on the result. "
                    "Each stage is saved in --out and an interrupted run resumes; paraphrases.jsonl lists what was "
                    "selected and how it was rewritten.",
        epilog="example: tuneguard defend soft --model smollm2-135m --data notes.jsonl --ratio 0.5 "
               "--paraphraser local --out runs/soft")
    s.add_argument("--model", required=True, help="embedded name (tuneguard models), model dir, .gguf or hub id")
    add_data_args(s)
    g = s.add_argument_group("selection")
    g.add_argument("--ratio", type=float, default=0.5, help="fraction of texts to paraphrase (ρ); default: %(default)s")
    g.add_argument("--threshold-quantile", type=float, metavar="Q",
                   help="instead of --ratio: paraphrase texts whose loss is below the Q-quantile of --reference losses")
    g.add_argument("--reference", help="held-out public texts for --threshold-quantile (same formats as --data)")
    g.add_argument("--warmup-epochs", type=int, default=1, help="0 scores with the base model; default: %(default)s")
    g.add_argument("--start", choices=("base", "warm"), default="base",
                   help="final run starts from the base model or the warmed-up one; default: %(default)s")
    q = s.add_argument_group("paraphrasing")
    q.add_argument("--paraphraser", choices=list(PARAPHRASERS), default="local", help="default: %(default)s")
    q.add_argument("--paraphraser-model",
                   help="local: model to paraphrase with (default smollm2-135m); openai: model name (gpt-4o-mini)")
    q.add_argument("--base-url", help="openai: endpoint (default $OPENAI_BASE_URL, else api.openai.com)")
    q.add_argument("--api-key-env", default="OPENAI_API_KEY", help="openai: variable holding the key")
    d = GateConfig()
    q.add_argument("--min-similarity", type=float, default=d.min_similarity, help="default: %(default)s")
    q.add_argument("--max-common-run", type=int, default=d.max_common_run,
                   help="most words a paraphrase may copy in a row; default: %(default)s")
    q.add_argument("--max-ngram-overlap", type=float, default=d.max_ngram_overlap,
                   help="largest share of the original's word 3-grams kept; default: %(default)s")
    q.add_argument("--max-tries", type=int, default=d.max_tries, help="paraphrase attempts per text")
    q.add_argument("--on-failure", choices=("drop", "original"), default="drop",
                   help="what a text whose paraphrases all fail becomes in the training set; default: %(default)s")
    add_train_args(s)
    s.add_argument("--out", required=True, help="run directory")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tuneguard.defenses.soft import run_soft
    from tuneguard.paraphrase import QualityGate

    texts = read_texts(args.data, args.column, args.limit)
    print(texts.summary())
    reference = None
    if args.reference:
        reference = read_texts(args.reference, args.column).texts
    options: dict = {"seed": args.seed}
    if args.paraphraser_model:
        options["model"] = args.paraphraser_model
    if args.paraphraser == "openai":
        options.update(base_url=args.base_url, api_key_env=args.api_key_env)
    gate = QualityGate(GateConfig(min_similarity=args.min_similarity, max_common_run=args.max_common_run,
                                  max_ngram_overlap=args.max_ngram_overlap, max_tries=args.max_tries))
    threshold = args.threshold_quantile is not None
    result = run_soft(args.model, texts.texts, args.out, ratio=args.ratio, mode="threshold" if threshold else "ratio",
                      quantile=args.threshold_quantile if threshold else 0.5, reference_texts=reference,
                      paraphraser=args.paraphraser, paraphraser_options=options, gate=gate,
                      train=train_config(args), warmup_epochs=args.warmup_epochs, start=args.start,
                      on_failure=args.on_failure)
    print(json.dumps(result.summary, indent=2))
    return 0
