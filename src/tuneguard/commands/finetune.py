"""`tuneguard finetune`: fine-tune a model on a text file (full, LoRA, prefix tuning, (IA)^3)."""

from __future__ import annotations

import argparse
import json
import re
from typing import TYPE_CHECKING

from tuneguard.commands import add_device_args, add_params, number, output, privacy_target
from tuneguard.data import clean_texts, load_texts
from tuneguard.errors import TuneguardError
from tuneguard.train import METHODS, TrainConfig

if TYPE_CHECKING:
    from tuneguard.integrations.leak import LeakMonitor


def add_data_args(p: argparse.ArgumentParser) -> None:
    """--data/--column/--limit, shared by the commands that read one text file."""
    p.add_argument("--data", required=True, help="JSONL/JSON/CSV/TSV/parquet/.txt file, a directory of text files, "
                                                 "or hf:NAME for a datasets hub dataset")
    p.add_argument("--column", help="text column (default: 'text' or the only string column)")
    p.add_argument("--limit", type=number(int, ge=1), help="use only the first N texts")


def read_texts(path: str, column: str | None = None, limit: int | None = None):
    """The cleaned texts of a file named on the command line (a ``CleanReport``: ``.texts``, ``.summary()``)."""
    return clean_texts(load_texts(path, column=column, limit=limit), name=path)


# The TrainConfig parameters every command that trains sets, as --name options from their declarations (order:
# the help's); target_modules and lora_layers are comma-separated lists (their own options).
TRAIN_OPTIONS = ("method", "epochs", "lr", "batch_size", "grad_accum", "max_length", "scheduler", "warmup_ratio",
                 "weight_decay", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "lora_layers",
                 "num_virtual_tokens", "seed")


def layer_list(text: str) -> list[int]:
    """An argparse ``type``: layer indices as ``0,1,2`` or ranges ``0-14`` (inclusive), or both (``0-3,20``)."""
    layers: set[int] = set()
    for part in text.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        first, last = (int(match[1]), int(match[2] or match[1])) if match else (0, -1)
        if last < first:
            raise argparse.ArgumentTypeError(f"expected layer indices like 0,1,2 or 0-14, got {text!r}")
        layers.update(range(first, last + 1))
    return sorted(layers)


def add_train_args(p: argparse.ArgumentParser) -> None:
    """The fine-tuning hyperparameters, shared by every command that trains: TrainConfig's declarations."""
    g = p.add_argument_group("fine-tuning")
    methods = "; ".join(METHODS.describe().splitlines())
    for name in TRAIN_OPTIONS:
        if name == "method":
            g.add_argument("--method", choices=METHODS.names(), default=TrainConfig().method,
                           help=f"{methods}; default: %(default)s")
        elif name == "target_modules":
            g.add_argument("--target-modules", metavar="NAMES",
                           help="comma-separated module names to adapt (default: peft's choice for the model)")
        elif name == "lora_layers":
            declared = next(info.help for info in TrainConfig.describe() if info.name == name)
            g.add_argument("--lora-layers", metavar="LAYERS", type=layer_list,
                           help=f"{declared}, written 0,1,2 or as ranges 0-14")
        else:
            add_params(g, TrainConfig, [name])


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig described by ``add_train_args`` options."""
    values = {name: getattr(args, name) for name in TRAIN_OPTIONS}
    values["target_modules"] = args.target_modules.split(",") if args.target_modules else None
    return TrainConfig(**values)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune a model on your texts",
        description="Fine-tune MODEL on the texts of --data and save the adapter (or full model) as safetensors in "
                    "--out with a run record (run.json). Interrupted runs resume from the last finished epoch. "
                    "For several processes or GPUs: accelerate launch -m tuneguard.cli finetune ...",
        epilog="example: tuneguard finetune --model smollm2-135m --data notes.jsonl --method lora --out runs/lora")
    add_finetune_args(p)
    add_leak_args(p)
    p.set_defaults(func=run)


def add_finetune_args(p: argparse.ArgumentParser) -> None:
    """What every command that fine-tunes on one text file takes: model, data, fine-tuning, device and --out."""
    p.add_argument("--model", required=True, help="embedded name (tuneguard models), model dir, .gguf or hub id")
    add_data_args(p)
    add_train_args(p)
    add_device_args(p, train=True)
    p.add_argument("--out", required=True, type=output(), help="output directory")


def add_leak_args(p: argparse.ArgumentParser) -> None:
    """--leak-every / --leak-nonmembers / --leak-sample / --leak-budget: the leak watched while training."""
    g = p.add_argument_group("the membership leak while training (tuneguard.integrations.leak)")
    g.add_argument("--leak-every", type=number(int, ge=1), metavar="N",
                   help="every N optimizer steps, attack a fixed sample of the training texts and as many "
                        "--leak-nonmembers (loss, Min-K%%++, ratio, EZ-MIA, WBC against the base model): "
                        "2 x --leak-sample forward passes a check; the curve goes to OUT/leak/leak.json and leak.png")
    g.add_argument("--leak-nonmembers", metavar="FILE", help="held-out texts from the data's distribution, never "
                                                             "trained on (needed with --leak-every)")
    g.add_argument("--leak-sample", type=number(int, ge=2), default=128,
                   help="training texts (and as many non-members) attacked at each check; default: %(default)s")
    g.add_argument("--leak-budget", type=privacy_target,
                   help="stop training at the first check where the strongest attack goes beyond it: "
                        "tpr@10%%<=0.2 or auc<=0.6 (TPR at 10%% FPR needs a --leak-sample of 10 or more)")


def leak_monitor(args: argparse.Namespace, members: list[str]) -> LeakMonitor | None:
    """The LeakMonitor the --leak-* options describe (None without --leak-every); refused before any training."""
    if args.leak_every is None:
        if args.leak_budget or args.leak_nonmembers:
            raise TuneguardError("--leak-budget and --leak-nonmembers watch the leak every N steps: add --leak-every N")
        return None
    if not args.leak_nonmembers:
        raise TuneguardError("--leak-every compares training texts with held-out ones: pass --leak-nonmembers FILE")
    from tuneguard.integrations.leak import LeakMonitor

    return LeakMonitor(members, read_texts(args.leak_nonmembers).texts, sample=args.leak_sample,
                       budget=args.leak_budget, out=args.out / "leak", max_length=args.max_length, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    from tuneguard.train import finetune

    report = read_texts(args.data, args.column, args.limit)
    print(report.summary())
    leak = leak_monitor(args, report.texts)
    print_run(finetune(args.model, report.texts, args.out, train_config(args), leak=leak,
                       leak_every=args.leak_every or 1))
    return 0


def print_run(result) -> None:
    """A finished training run's figures as JSON and where it was saved (one process reports under `accelerate
    launch`)."""
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    r = result.record
    print(json.dumps({"method": r.method, "epochs_done": r.epochs_done, "steps": r.steps, "epoch_loss": r.epoch_loss,
                      "train_seconds": r.train_seconds, "tokens_per_second": r.tokens_per_second,
                      "padding_fraction": r.padding_fraction, **({"dp": r.dp} if r.dp else {})}))
    print(f"saved: {result.out_dir} (run record: {result.out_dir / 'run.json'})")
