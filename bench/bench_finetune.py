"""Fine-tuning throughput: tuneguard.finetune against a plain Hugging Face Trainer loop, same model/data/batch.

    python bench/bench_finetune.py                        # tiny model, seconds
    python bench/bench_finetune.py --model smollm2-135m   # the real figure (a few minutes on 2 cores)

Tokens/s counts real (non-pad) tokens. Both sides run LoRA with the same config, batch size, max length and texts
(standard-library docstrings, varied lengths); the runs alternate (ours, Trainer, ours, ...) and the median is kept,
so machine noise hits both. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from tuneguard.data.stdlib import stdlib_docstrings
from tuneguard.models import load_model
from tuneguard.train import TrainConfig, finetune
from tuneguard.train.methods import prepare_model


def run_ours(ref: str, texts: list[str], cfg: TrainConfig) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        r = finetune(ref, texts, Path(tmp) / "run", cfg, progress=False).record
    return {"tokens_per_second": r.tokens_per_second, "padding_fraction": r.padding_fraction,
            "seconds": r.train_seconds, "tokens_per_cpu_second": round(r.tokens / r.cpu_seconds, 2)}


def run_trainer(ref: str, texts: list[str], cfg: TrainConfig) -> dict:
    """The baseline a user would write: Trainer + DataCollatorForLanguageModeling, default (random) batching."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    loaded = load_model(ref)
    torch.manual_seed(cfg.seed)
    model = prepare_model(loaded.model, cfg)
    tok = loaded.tokenizer
    ds = Dataset.from_dict({"text": texts}).map(
        lambda b: tok(b["text"], truncation=True, max_length=cfg.max_length), batched=True, remove_columns=["text"])
    collator = DataCollatorForLanguageModeling(tok, mlm=False)
    counts = {"tokens": 0, "padded": 0}
    real_collate = collator.__call__

    def counting(features):
        batch = real_collate(features)
        counts["tokens"] += int(batch["attention_mask"].sum())
        counts["padded"] += int(batch["attention_mask"].numel())
        return batch

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_train_end(self, *a, **k):
            self.seconds, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0

    timer = Timer()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=cfg.batch_size,
                                 num_train_epochs=cfg.epochs, learning_rate=cfg.lr, lr_scheduler_type=cfg.scheduler,
                                 logging_strategy="no", save_strategy="no", report_to=[], seed=cfg.seed,
                                 use_cpu=not torch.cuda.is_available(), disable_tqdm=True, dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=counting, callbacks=[timer])
        trainer.train()
    return {"tokens_per_second": round(counts["tokens"] / timer.seconds, 2),
            "padding_fraction": round(1 - counts["tokens"] / counts["padded"], 4), "seconds": round(timer.seconds, 3),
            "tokens_per_cpu_second": round(counts["tokens"] / timer.cpu, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-gpt2")
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="/tmp/tuneguard-bench/finetune.json")
    args = ap.parse_args()
    texts = stdlib_docstrings(args.texts, seed=0)
    cfg = TrainConfig(method="lora", epochs=1, lr=2e-4, batch_size=args.batch_size, max_length=args.max_length,
                      lora_dropout=0.0)
    runs = {"tuneguard": [], "hf_trainer": []}
    for _ in range(args.repeats):
        runs["tuneguard"].append(run_ours(args.model, texts, cfg))
        runs["hf_trainer"].append(run_trainer(args.model, texts, cfg))
    summary = {name: {"tokens_per_second": statistics.median(r["tokens_per_second"] for r in rs),
                      "tokens_per_cpu_second": statistics.median(r["tokens_per_cpu_second"] for r in rs),
                      "padding_fraction": rs[0]["padding_fraction"]} for name, rs in runs.items()}
    ratio = summary["tuneguard"]["tokens_per_second"] / summary["hf_trainer"]["tokens_per_second"]
    print(f"model {args.model}, {len(texts)} texts, batch {args.batch_size}, max length {args.max_length}, "
          f"LoRA, {args.repeats} alternating runs each (median)")
    cpu_ratio = summary["tuneguard"]["tokens_per_cpu_second"] / summary["hf_trainer"]["tokens_per_cpu_second"]
    print(f"{'loop':<12} {'tokens/s':>10} {'tokens/CPU-s':>13} {'padding':>8}")
    for name, s in summary.items():
        print(f"{name:<12} {s['tokens_per_second']:>10.1f} {s['tokens_per_cpu_second']:>13.1f} "
              f"{s['padding_fraction']:>8.1%}")
    print(f"ratio tuneguard / Trainer: {ratio:.2f} (wall), {cpu_ratio:.2f} (CPU time)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "runs": runs, "summary": summary, "ratio": ratio,
                               "cpu_ratio": cpu_ratio}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
