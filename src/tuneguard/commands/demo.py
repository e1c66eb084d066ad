"""`tuneguard demo`: the embedded end-to-end audit behind `make demo` (real model, real text, a few minutes)."""

from __future__ import annotations

import argparse

from tuneguard.attacks import DEFAULT_SUITE, SUITES
from tuneguard.attacks.options import AttackOptions
from tuneguard.cache import cache_dir
from tuneguard.commands import add_device_args, add_params, number, output
from tuneguard.commands.attack import print_report
from tuneguard.data.stdlib import stdlib_docstrings
from tuneguard.train import TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="audit SmolLM2-135M fine-tuned with LoRA on Python standard-library docstrings",
                       description="A real pretrained model (SmolLM2-135M-Instruct, from PyPI) fine-tuned with LoRA "
                                   "on real text every machine has (Python standard-library docstrings), then "
                                   "attacked with the membership inference suite (base model as reference).")
    p.add_argument("--model", default="smollm2-135m", help="default: %(default)s")
    p.add_argument("--texts", type=number(int, ge=2), default=96, help="members + non-members; default: %(default)s")
    add_params(p, TrainConfig, ["epochs"])
    p.add_argument("--out", type=output(), help="default: <cache>/demo/<model>")
    p.add_argument("--attacks", default=DEFAULT_SUITE,
                   help=f"attacks or a suite ({', '.join(SUITES)}; see `tuneguard attack --help`); "
                        "default: %(default)s")
    add_device_args(p, train=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tuneguard.audit import audit

    out = args.out or cache_dir("demo") / args.model
    texts = stdlib_docstrings(args.texts, seed=0)
    print(f"auditing {args.model}: LoRA fine-tuning on {len(texts) // 2} of {len(texts)} standard-library "
          f"docstrings, then membership inference -> {out}")
    train = TrainConfig(method="lora", epochs=args.epochs, lr=1e-3, batch_size=8, max_length=96)
    # Short texts and 3 ReCall shots (--attacks all) keep the prefixed passes, the most expensive, within minutes;
    # the other options are the declared defaults of `attack` and `audit`.
    options = AttackOptions.create("demo", {"n_shots": 3, "max_length": 96})
    result, paths = audit(args.model, texts, out, train=train, attacks=args.attacks, **options.to_dict())
    print_report(result, paths)
    print(f"fine-tuned adapter and run record: {out / 'target'}")
    return 0
