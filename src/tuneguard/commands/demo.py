"""`tuneguard demo`: the embedded end-to-end run behind `make demo` (real model, real text, a few minutes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tuneguard.cache import cache_dir
from tuneguard.data.stdlib import stdlib_docstrings
from tuneguard.train import TrainConfig, finetune


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="fine-tune SmolLM2-135M with LoRA on Python standard-library docstrings",
                       description="A real pretrained model (SmolLM2-135M-Instruct, from PyPI) fine-tuned with LoRA "
                                   "on real text every machine has (Python standard-library docstrings).")
    p.add_argument("--model", default="smollm2-135m", help="default: %(default)s")
    p.add_argument("--texts", type=int, default=64, help="training texts; default: %(default)s")
    p.add_argument("--epochs", type=int, default=2, help="default: %(default)s")
    p.add_argument("--out", type=Path, help="default: <cache>/demo/<model>")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = args.out or cache_dir("demo") / args.model
    texts = stdlib_docstrings(args.texts, seed=0)
    print(f"fine-tuning {args.model} with LoRA on {len(texts)} standard-library docstrings -> {out}")
    result = finetune(args.model, texts, out, TrainConfig(method="lora", epochs=args.epochs, lr=2e-4, batch_size=8,
                                                          max_length=128))
    r = result.record
    print(f"loss per epoch: {r['epoch_loss']}  ({r['train_seconds']:.0f} s, {r['tokens_per_second']:.0f} tokens/s)")
    print(f"adapter:    {out}")
    print(f"run record: {out / 'run.json'}")
    return 0
