"""Watch the membership leak while a plain Hugging Face ``Trainer`` fine-tunes: what stopping at a budget buys.

    python examples/hf_trainer_leak.py --method lora --out runs/leak-lora    # SmolLM2-135M, 256 PubMed abstracts
    python examples/hf_trainer_leak.py --model tiny-gpt2 --members 16 --sample 8 --eval 8 --epochs 1 --out /tmp/leak

The script a user would write: load a model and tokenizer, tokenize the texts, train with ``Trainer`` (evaluating on
held-out texts twice an epoch, and once before the first step), with tuneguard's ``LeakCallback`` added. At each
evaluation the callback attacks ``--sample`` of the training texts and as many held-out non-members (loss, Min-K%++,
ratio, EZ-MIA, WBC; the reference is the base model: the LoRA adapter disabled, or the full model as it was before
training) and logs ``leak/...`` beside the eval loss.

Texts are cut once to ``--max-length`` tokens, so the model trains on exactly what the attacks score. Writes under
``--out``: ``leak/leak.json`` and ``leak/leak.png`` (the leak-vs-step curve, by the callback), ``summary.json`` and
``summary.md``: the curve beside the eval perplexity, and for each attack (and the strongest) the first check where it
goes beyond TPR 0.2 at 10% FPR and beyond AUC 0.6, and the check before it (what a run stopped there keeps), each with
its eval perplexity, against the final and the best one.
``--budget`` also stops training there (checkpoints are then saved at every check, and the one within it is named).
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments, set_seed

from tuneguard.data import clean_texts, fit_to_length, load_texts
from tuneguard.files import atomic_write_json, atomic_write_text
from tuneguard.integrations.hf import LeakCallback
from tuneguard.integrations.leak import figure, first_beyond
from tuneguard.models import load_model
from tuneguard.privacy_target import Target, parse_target

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pubmed" / "pubmedqa_abstracts.jsonl"
CROSSINGS = ("tpr@10%<=0.2", "auc<=0.6")  # the lines the summary reports each curve crossing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA), help="JSONL (or any file tuneguard.data.load_texts reads)")
    p.add_argument("--model", default="smollm2-135m", help="embedded name (tuneguard models), model dir or hub id")
    p.add_argument("--method", choices=("lora", "full"), default="lora")
    p.add_argument("--members", type=int, default=256, help="training texts (as many held-out non-members)")
    p.add_argument("--sample", type=int, default=128, help="members (and non-members) attacked at each check")
    p.add_argument("--eval", type=int, default=128, help="held-out texts for the eval loss (not non-members)")
    p.add_argument("--epochs", type=float, default=5)
    p.add_argument("--checks-per-epoch", type=int, default=2)
    p.add_argument("--lr", type=float, help="default: 1e-3 for LoRA, 1e-4 for full fine-tuning")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128, help="tokens per text, trained and scored")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--target-modules", help="comma-separated modules LoRA adapts (default: peft's choice)")
    p.add_argument("--budget", help="stop training beyond it, e.g. 'tpr@10%%<=0.2' or 'auc<=0.6'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)

    loaded = load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    texts = clean_texts(load_texts(args.data), name=args.data).texts
    need = 2 * args.members + args.eval
    if len(texts) < need:
        p.error(f"{args.data} holds {len(texts)} texts; --members {args.members} and --eval {args.eval} need {need}")
    random.Random(args.seed).shuffle(texts)
    texts = fit_to_length(texts[:need], tokenizer, args.max_length)
    members, nonmembers = texts[:args.members], texts[args.members:2 * args.members]
    heldout = texts[2 * args.members:]

    set_seed(args.seed)  # the adapter's initialisation too: same seed, same curve
    if args.method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        modules = args.target_modules.split(",") if args.target_modules else None
        model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=args.lora_r,
                                                 lora_alpha=2 * args.lora_r, lora_dropout=0.05,
                                                 target_modules=modules))
    steps_per_epoch = math.ceil(args.members / args.batch_size)
    check_every = max(1, steps_per_epoch // args.checks_per_epoch)
    training = TrainingArguments(
        output_dir=str(args.out / "trainer"), num_train_epochs=args.epochs, seed=args.seed,
        learning_rate=args.lr or (1e-3 if args.method == "lora" else 1e-4),
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        eval_strategy="steps", eval_steps=check_every, eval_on_start=True, logging_steps=check_every,
        save_strategy="steps" if args.budget else "no", save_steps=check_every, save_only_model=True,
        report_to="none")
    trainer = Trainer(model=model, args=training, processing_class=tokenizer,
                      train_dataset=[tokenizer(t) for t in members], eval_dataset=[tokenizer(t) for t in heldout],
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    leak = LeakCallback(trainer=trainer, members=members, nonmembers=nonmembers, sample=args.sample,
                        budget=args.budget, max_length=args.max_length, seed=args.seed, out=args.out / "leak")
    trainer.add_callback(leak)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0

    if trainer.is_world_process_zero():
        ppl = {e["step"]: math.exp(e["eval_loss"]) for e in trainer.state.log_history if "eval_loss" in e}
        summary = summarise(leak.points, ppl, vars(args) | {"out": str(args.out)}, seconds, leak.checkpoint_within)
        atomic_write_json(args.out / "summary.json", summary)
        atomic_write_text(args.out / "summary.md", markdown(summary))
        print(markdown(summary))
    return 0


def summarise(points: list[dict], ppl: dict[int, float], settings: dict, seconds: float,
              checkpoint: Path | None = None) -> dict:
    """The curve beside the eval perplexity ``ppl`` (by step), and where each attack's curve (and the strongest's)
    first goes beyond each line of ``CROSSINGS``: that check, and the one before it (the model a run stopped at the
    budget keeps), each with its eval perplexity, to set against the final and the best one."""
    final_step = max(ppl)
    best_step = min(ppl, key=ppl.get)
    curve = [{"step": pt["step"], "epoch": pt["epoch"], "eval_perplexity": ppl.get(pt["step"]),
              "nonmember_perplexity": pt["nonmember_perplexity"],
              "strongest_auc": figure(pt, "auc")[0], "strongest_tpr@10%": figure(pt, "tpr", 0.1)[0],
              "strongest_attack": pt["strongest"]["attack"],
              "auc": {name: r["auc"] for name, r in pt["attacks"].items()}} for pt in points]
    crossings = []
    for attack in [None, *points[-1]["attacks"]]:
        row: dict = {"attack": attack or "strongest"}
        for text in CROSSINGS:
            target = parse_target(text)
            crossed = first_beyond(points, target, attack)
            if crossed is None:
                row[text] = None
                continue
            at = points.index(crossed)
            row[text] = {"beyond": _check(crossed, ppl, target, attack),
                         "kept": _check(points[at - 1], ppl, target, attack) if at else None}
        crossings.append(row)
    return {"settings": settings, "train_seconds": round(seconds, 1),
            "leak_seconds": round(sum(pt["seconds"] for pt in points), 1),
            "final": {"step": final_step, "eval_perplexity": ppl[final_step]},
            "best": {"step": best_step, "eval_perplexity": ppl[best_step]}, "crossings": crossings,
            "curve": curve, "budget_checkpoint": checkpoint and str(checkpoint)}


def _check(point: dict, ppl: dict[int, float], target: Target, attack: str | None) -> dict:
    """One check of the curve as the summary quotes it: where, the figure the target is on, the eval perplexity."""
    return {"step": point["step"], "epoch": point["epoch"], "eval_perplexity": ppl.get(point["step"]),
            "value": figure(point, target.metric, target.fpr, attack)[0]}


def markdown(summary: dict) -> str:
    """The summary as a Markdown note: where each curve goes beyond each line and what a stop there keeps, then the
    curve itself."""
    s, final, best = summary["settings"], summary["final"], summary["best"]
    lines = [f"# Leak while training: {s['model']}, {s['method']}, {s['members']} members, {s['epochs']:g} epochs",
             "", f"{s['sample']} members and as many non-members attacked at each check; training "
             f"{summary['train_seconds']:.0f} s, of which the leak checks {summary['leak_seconds']:.0f} s. "
             f"Eval perplexity: final {final['eval_perplexity']:.2f} (step {final['step']}), best "
             f"{best['eval_perplexity']:.2f} (step {best['step']}). Each cell: the first check beyond the line, and "
             "the check before it (what a run stopped at that budget keeps), as step (epoch): figure, eval ppl.", "",
             "| curve | " + " | ".join(f"beyond {t} | kept at {t}" for t in CROSSINGS) + " |",
             "|---|" + "---|---|" * len(CROSSINGS)]
    for row in summary["crossings"]:
        cells = []
        for text in CROSSINGS:
            hit = row[text]
            cells += (["never", "the final model"] if hit is None else
                      [_where(hit["beyond"]), _where(hit["kept"]) if hit["kept"] else "nothing (the first check)"])
        lines.append(f"| {row['attack']} | " + " | ".join(cells) + " |")
    lines += ["", "| step | epoch | eval ppl | non-member ppl | strongest AUC | strongest TPR@10% | by AUC |",
              "|---|---|---|---|---|---|---|"]
    for pt in summary["curve"]:
        lines.append(f"| {pt['step']} | {pt['epoch']:.2f} | {_num(pt['eval_perplexity'])} | "
                     f"{_num(pt['nonmember_perplexity'])} | "
                     f"{pt['strongest_auc']:.3f} | {_num(pt['strongest_tpr@10%'], 3)} | {pt['strongest_attack']} |")
    if summary["budget_checkpoint"]:
        lines += ["", f"Checkpoint within the budget {s['budget']}: `{summary['budget_checkpoint']}`"]
    return "\n".join(lines) + "\n"


def _where(at: dict) -> str:
    return f"{at['step']} ({at['epoch']:.1f}): {at['value']:.3f}, ppl {_num(at['eval_perplexity'])}"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    raise SystemExit(main())
