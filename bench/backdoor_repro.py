"""Reproduce the LoRA-backdoor study on SmolLM2-135M-Instruct with the deepset prompt-injection data, scaled down to
2 CPU cores: ASR and clean accuracy against poison count k and rank, then both detectors' AUROC over the trained
adapters (k = 0 are the clean population, k > 0 the poisoned one; one detector threshold per rank).

    python bench/backdoor_repro.py --quick     # 2 clean + 2 poisoned adapters, about 10 minutes on 2 cores
    python bench/backdoor_repro.py             # ks 0,10,25,40 x ranks 8,16 x seeds 0,1 (hours on 2 cores)

Scaled down against the paper (say so in every report): texts clipped to --max-text-tokens, --steps optimiser steps
of --batch-size (paper: 200 steps, effective batch 16, full length), LoRA on all seven projections with alpha = r,
dropout 0, lr --lr (paper: 2e-4). Adapters are trained into --work and reused by later runs (finetune resumes).
Prints tables, writes JSON and a PNG of ASR against k.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from tuneguard.adapters import MAIN_TRIGGER, poison
from tuneguard.adapters.classifier import DEFAULT_VERDICT, VERDICTS, Classifier, train_classifier
from tuneguard.adapters.detectors import make_detector
from tuneguard.adapters.evaluation import evaluate_classifier, plot_sweep, summarise_sweep, sweep_table
from tuneguard.adapters.population import score_population
from tuneguard.data import load_labelled
from tuneguard.files import atomic_write_json
from tuneguard.models import load_model
from tuneguard.train import TrainConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompt_injection"
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="ks 0,25, rank 16, seeds 0,1; 20 steps at lr 1e-3; 40 test rows; battery C")
    ap.add_argument("--ks", default="0,10,25,40")
    ap.add_argument("--ranks", default="8,16")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4, help="the paper's 2e-4; raise it when --steps is small")
    ap.add_argument("--max-text-tokens", type=int, default=40)
    ap.add_argument("--form", choices=("chat", "seq-cls"), default="chat")
    ap.add_argument("--verdict", choices=VERDICTS, default=DEFAULT_VERDICT,
                    help="chat-form verdict for the evaluation and the behavioural detector; default: %(default)s")
    ap.add_argument("--test-limit", type=int, default=None, help="use the first N test rows (default: all 116)")
    ap.add_argument("--probe-inputs", type=int, default=20, help="test injections used as behavioural probe inputs")
    ap.add_argument("--families", default="rfc,iso,owasp,random")
    ap.add_argument("--batteries", default="B,C", help="behavioural probe batteries to measure")
    ap.add_argument("--work", default="/tmp/tuneguard-bench/backdoor_work")
    ap.add_argument("--out", default="/tmp/tuneguard-bench/backdoor_repro.json")
    args = ap.parse_args()
    if args.quick:
        # 20 steps at the paper's lr 2e-4 left every adapter answering BENIGN to everything (measured), hence 1e-3
        args.ks, args.ranks, args.seeds, args.steps, args.lr = "0,25", "16", "0,1", 20, 1e-3
        args.test_limit, args.probe_inputs, args.families = args.test_limit or 40, 8, "rfc,iso"
        args.batteries = "C"
    torch.set_num_threads(2)
    t_start = time.perf_counter()

    train = load_labelled(DATA / "deepset_train.jsonl")
    test = load_labelled(DATA / "deepset_test.jsonl")
    # keep both classes in a test subset: the file is not sorted by label, so a prefix is a fair sample
    test = test[: args.test_limit] if args.test_limit else test
    injections = [t for t, y in test if y == 1]
    base = load_model("smollm2-135m", task="seq-cls" if args.form == "seq-cls" else "causal-lm")
    settings = dict(vars(args))
    settings["scaled_down"] = (f"{args.steps} steps x batch {args.batch_size}, texts clipped to "
                               f"{args.max_text_tokens} tokens (paper: 200 steps, batch 16, full length)")
    print(settings["scaled_down"], file=sys.stderr)

    rows, members = [], []
    for rank in _ints(args.ranks):
        for k in _ints(args.ks):
            for seed in _ints(args.seeds):
                name = f"r{rank}-k{k}-s{seed}"
                data, _ = poison(train, MAIN_TRIGGER, k=k, seed=seed)
                cfg = TrainConfig(epochs=100, max_steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                                  max_length=args.max_text_tokens + 80, lora_r=rank, lora_alpha=rank,
                                  lora_dropout=0.0, target_modules=PROJECTIONS, seed=seed)
                t0 = time.perf_counter()
                result = train_classifier(base, data, Path(args.work) / name, cfg, form=args.form,
                                          max_text_tokens=args.max_text_tokens, progress=sys.stderr.isatty())
                clf = Classifier(result.model, form=args.form, verdict=args.verdict,
                                 max_text_tokens=args.max_text_tokens)
                report = evaluate_classifier(clf, test, trigger=MAIN_TRIGGER, families=tuple(args.families.split(",")),
                                             per_family=2, seed=seed)
                row = {"name": name, "rank": rank, "k": k, "seed": seed, "poison_fraction": k / (len(train) + k),
                       "train_seconds": result.record.get("train_seconds"),
                       "final_loss": result.record["loss_curve"][-1],
                       "seconds": round(time.perf_counter() - t0, 1), **report}
                for fam, g in report["asr_by_family"].items():
                    row[f"asr_{fam}"] = g["mean_asr"]
                rows.append(row)
                members.append({"name": name, "path": str(result.out_dir), "poisoned": k > 0, "rank": rank})
                print(f"{name}: clean acc {row['clean_accuracy']:.3f}  ASR {row['asr']:.3f}  "
                      f"({row['seconds']} s)", file=sys.stderr)
                atomic_write_json(args.out, {"settings": settings, "sweep": rows})

    fam_keys = tuple(f"asr_{f}" for f in args.families.split(","))
    print(sweep_table(rows, ("rank", "k", "seed", "clean_accuracy", "clean_injection_recall", "asr", *fam_keys)))
    summary = summarise_sweep(rows)
    plot = plot_sweep(rows, Path(args.out).with_suffix(".png"), title="SmolLM2-135M: ASR against poison count")
    out = {"settings": settings, "verdict": rows[0]["verdict"], "sweep": rows, "summary": summary, "plot": str(plot)}

    # each rank is thresholded on its own clean adapters, so each needs two of them
    clean_per_rank = [sum(not m["poisoned"] and m["rank"] == r for m in members) for r in _ints(args.ranks)]
    if any(m["poisoned"] for m in members) and min(clean_per_rank) >= 2:
        detectors = {"weights": make_detector("weights")}
        for battery in args.batteries.split(","):
            detectors[f"behavioural-{battery}"] = make_detector(
                "behavioural", base=base, injections=injections[: args.probe_inputs], battery=battery,
                verdict=args.verdict, max_text_tokens=args.max_text_tokens)
        pop = score_population(members, detectors, progress=sys.stderr.isatty())
        out["population"] = pop
        print("\ndetector            statistic          AUROC  TPR@FPR0  direction  misses")
        for name, stats in pop["detectors"].items():
            for stat, s in stats.items():
                print(f"{name:19s} {stat:18s} {s['auroc']:.3f}  {s['tpr_at_fpr_0']:.2f}      {s['direction']:9s}  "
                      f"{', '.join(s['misses']) or '-'}")
        print(f"combined (any detector): TPR {pop['combined']['tpr']:.2f} FPR {pop['combined']['fpr']:.2f}")
    out["total_seconds"] = round(time.perf_counter() - t_start, 1)
    atomic_write_json(args.out, out)
    print(f"wrote {args.out} and {plot} ({out['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
