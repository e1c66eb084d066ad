"""SPV-MIA reproduction on a real model: SPV-MIA and its ablations against loss, ratio (base reference), neighbourhood.

    flock /tmp/tuneguard-cpu.lock python bench/spv_repro.py --quick     # 16+16 records, a few minutes on 2 cores
    flock /tmp/tuneguard-cpu.lock python bench/spv_repro.py             # 100+100 records (much longer on 2 cores)

A LoRA target is fine-tuned from SmolLM2-135M on member abstracts (PubMed); non-members and the attacker's prompt
pool come from the same corpus, all three disjoint. Every attack runs through ``tuneguard.attacks.run_attacks`` (the
scoring engine, its cache, ``tuneguard.metrics``). SPV-MIA runs first and alone, so its cost (forward passes,
seconds, share spent generating self-prompt texts) is its own; the neighbourhood attack and the ablations then reuse
its neighbours and log-likelihoods from the caches. Neighbours default to ``lm-fill`` with the base model (no T5
offline). Stage outputs live under --work (resumable; a rerun finds them and costs far less: use a fresh --work and
TUNEGUARD_CACHE to measure the cost from scratch). Prints the AUC / TPR table and writes everything as JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from tuneguard.attacks import run_attacks
from tuneguard.data import fit_to_length, load_texts
from tuneguard.files import atomic_write_json
from tuneguard.models import load_model
from tuneguard.report.table import format_table
from tuneguard.train import TrainConfig, finetune

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pubmed" / "pubmedqa_abstracts.jsonl"
# SPV-MIA ablations: label -> params on top of the paper's set-up.
ABLATIONS = {"spv-mia logprob form": {"form": "logprob"}, "spv-mia no calibration": {"reference": "none"},
             "spv-mia base reference": {"reference": "base"}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--quick", action="store_true", help="16+16 records, 64 tokens, J=4, M=16: a few minutes")
    p.add_argument("--members", type=int, default=100)
    p.add_argument("--pool", type=int, default=100, help="attacker's prompt pool (disjoint public texts)")
    p.add_argument("--self-prompt", type=int, default=100, help="M, self-prompt texts generated from the target")
    p.add_argument("--neighbours", type=int, default=10, help="J")
    p.add_argument("--neighbour-generator", default="lm-fill")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--target-epochs", type=int, default=4)
    p.add_argument("--target-lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="/tmp/tuneguard-spv-repro", help="stage outputs (resumable)")
    p.add_argument("--out", default="/tmp/tuneguard-bench/spv_repro.json")
    args = p.parse_args(argv)
    if args.quick:
        args.members, args.pool, args.self_prompt, args.neighbours, args.max_length = 16, 16, 16, 4, 64
        args.target_epochs = min(args.target_epochs, 3)
    work = Path(args.work) / ("quick" if args.quick else "full")

    base = load_model(args.model)
    n = args.members
    texts = load_texts(args.data)
    rng = np.random.default_rng(args.seed)
    texts = [texts[k] for k in rng.permutation(len(texts))[:2 * n + args.pool]]
    # Cut once, so the target is trained on exactly what the attacks score and perturb.
    texts = fit_to_length(texts, base.tokenizer, args.max_length)
    members, nonmembers, pool = texts[:n], texts[n:2 * n], texts[2 * n:]
    target_cfg = TrainConfig(method="lora", epochs=args.target_epochs, lr=args.target_lr,
                             batch_size=args.batch_size, max_length=args.max_length, seed=args.seed)
    target = finetune(base, members, work / "target", target_cfg).model

    spv = {"prompts": pool, "n_texts": args.self_prompt, "total_tokens": args.max_length,
           "neighbours": args.neighbour_generator, "n_neighbours": args.neighbours, "max_length": args.max_length,
           "train_batch_size": args.batch_size, "out_dir": str(work / "spv")}
    common = {"reference": base, "seed": args.seed, "batch_size": args.batch_size, "max_length": args.max_length}
    runs = {"spv-mia": run_attacks(target, members, nonmembers, attacks=["spv-mia"], params={"spv-mia": spv},
                                   **common)}
    runs["others"] = run_attacks(target, members, nonmembers, attacks=["loss", "ratio", "neighbourhood"],
                                 params={"neighbourhood": {"generator": args.neighbour_generator,
                                                           "n": args.neighbours}}, **common)
    for label, change in ABLATIONS.items():
        runs[label] = run_attacks(target, members, nonmembers, attacks=["spv-mia"],
                                  params={"spv-mia": {**spv, **change}}, **common)
    attacks = {**runs["others"].attacks, "spv-mia": runs["spv-mia"].attacks["spv-mia"],
               **{label: runs[label].attacks["spv-mia"] for label in ABLATIONS}}

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"  # n/a: too few non-members for that FPR

    rows = [{"attack": name, "AUC": fmt(a.auc),
             "AUC 95% CI": "n/a" if a.metrics["auc_ci"] is None else "[{:.3f}, {:.3f}]".format(*a.metrics["auc_ci"]),
             "TPR@1%": fmt(a.tpr(0.01)), "TPR@10%": fmt(a.tpr(0.1))}
            for name, a in attacks.items()]
    print(format_table(rows, ["attack", "AUC", "AUC 95% CI", "TPR@1%", "TPR@10%"],
                       title=f"\nSPV-MIA reproduction: {args.model}, LoRA target ({args.target_epochs} ep, lr "
                             f"{args.target_lr}), {n}+{n} records, {args.max_length} tokens, J={args.neighbours} "
                             f"({args.neighbour_generator}), M={args.self_prompt}"))
    first = runs["spv-mia"]
    print(f"\nSPV-MIA alone: {first.cost['seconds']['spv-mia']:.1f} s for {first.settings['evaluated']} "
          f"records; {first.attacks['spv-mia'].note}")
    stages = first.attacks["spv-mia"].cost["stage_seconds"]
    total = sum(stages.values())
    print("SPV-MIA stages: " + ", ".join(f"{k} {v:.0f} s ({100 * v / total:.0f}%)" for k, v in stages.items()))
    for name, a in attacks.items():
        if a.note and name != "spv-mia":
            print(f"note ({name}): {a.note}")
    out = {"settings": vars(args), "attacks": {name: a.to_json() for name, a in attacks.items()},
           "runs": {k: {"cost": r.cost, "warnings": r.warnings, "settings": r.settings} for k, r in runs.items()}}
    atomic_write_json(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
