"""Leak benchmark: the attack suites and the fine-tuning attacks' variants, on a LoRA and a fully fine-tuned target.

    python bench/leak_bench.py --model tiny-llama --members 24 --bootstrap 50 --out /tmp/tuneguard-leak/tiny  # a minute
    nohup python bench/leak_bench.py --out /tmp/tuneguard-leak/n500 > /tmp/tuneguard-leak/n500.log 2>&1 &  # the figure
    python bench/leak_bench.py --suites all,fast --cells "" --out ...  # the suites' cost and verdict, side by side
    python bench/leak_bench.py --members 250 --suites fast --cells "" --shadows 4 --out ...  # the owner's audit

SmolLM2-135M is fine-tuned on --members PubMed abstracts (../shared/data, cut once to --max-length tokens, so the
targets are trained on exactly what the attacks score) with LoRA (r 16, alpha 32, q/k/v/o) and with full
fine-tuning; --nonmembers abstracts from the same corpus, disjoint, are the non-members. Each target is attacked by
``run_attacks`` with its base model as the reference: each suite of --suites in a cell of its own (``all``: every
attack; ``fast``: those needing only the target's and the reference's pass, the default of ``attack``), scored with
the score cache off so their wall times compare whichever runs first; ``all`` runs first, and its ReCall shots are
left out of every cell's texts, so every cell scores the same rows. Then the --cells: the named variants
(EZ-MIA's paper edge policy; WBC's paper windows and its mean statistic; hard tokens by confidence and as the share
of hard tokens the target raised), and last GradNorm (a forward and a backward pass per text, batch 1: run after
every target's suites). Left out: dc-pdd (no
disjoint corpus is left for its token frequencies at 500 + 500 of the 1,000 abstracts), neighbourhood and SPV-MIA
(they generate texts with a second model: hours on 2 CPU cores; see bench/spv_repro.py).
With --shadows K a last cell per target adds RMIA and LiRA (offline) over K shadow fine-tunes of the base with the
target's recipe, on a population drawn from the corpus outside the split (--population texts, default all the rest),
beside the fast suite; the table gives the shadows' training time and TPR@1% against ratio for them too.

The table: AUC, TPR@0.1% (measurable from 1,000 non-members), TPR@1% and TPR@10% with 95% bootstrap CIs per cell,
attack and target, the forward passes each attack added (the shared target pass runs before every attack, and an
attack reuses every pass an earlier one made: the suite's order decides who pays, e.g. ratio pays the reference pass
EZ-MIA, WBC and the hard tokens then read) and its seconds; per target, the suites side by side (wall time, forward
passes per model, the verdict, the strongest attack by AUC and at 1% / 10% FPR with CIs) and the paired-bootstrap
difference of TPR@1% between EZ-MIA / WBC / RMIA / LiRA and ratio.
Resumable: the split, each fine-tuning run and each attack cell are saved under --out as they finish and reused
when their settings match (the score cache, $TUNEGUARD_CACHE, keeps every forward pass too). Writes results.json
and results.md under --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tuneguard.attacks import SUITES, MIAResult, run_attacks
from tuneguard.attacks.shadows import ShadowSpec
from tuneguard.data import clean_texts, fit_to_length, load_texts
from tuneguard.files import atomic_write_json, atomic_write_text, read_json
from tuneguard.metrics import tpr_at_fpr
from tuneguard.models import load_model
from tuneguard.report.verdict import mia_verdict
from tuneguard.report.table import cell_text, format_table
from tuneguard.train import TrainConfig, finetune

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pubmed" / "pubmedqa_abstracts.jsonl"
# The cells after the suites, run in this order on each target: (cell, attacks, params, rows: label -> attack).
CELLS = [
    ("variants", ["ez-mia", "wbc", "ht-mia"],
     {"ez-mia": {"edge": "paper"}, "wbc": {"windows": "paper"}, "ht-mia": {"by": "confidence"}},
     {"ez-mia (edge=paper)": "ez-mia", "wbc (windows=paper)": "wbc", "ht-mia (by=confidence)": "ht-mia"}),
    ("variants-2", ["wbc", "ht-mia"], {"wbc": {"statistic": "mean"}, "ht-mia": {"statistic": "fraction"}},
     {"wbc (statistic=mean)": "wbc", "ht-mia (statistic=fraction)": "ht-mia"}),
    ("gradnorm", ["gradnorm"], {}, None),
]
COMPARED = ("ez-mia", "wbc", "rmia", "lira")  # against ratio, where the cell ran them


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--members", type=int, default=500)
    p.add_argument("--nonmembers", type=int, default=None, help="default: as many as --members")
    p.add_argument("--max-length", type=int, default=96)
    p.add_argument("--targets", default="lora,full", help="comma-separated: lora, full")
    p.add_argument("--lora-epochs", type=int, default=3)
    p.add_argument("--lora-lr", type=float, default=1e-3)
    p.add_argument("--lora-modules", default="q_proj,k_proj,v_proj,o_proj", help="modules LoRA adapts (r 16)")
    p.add_argument("--full-epochs", type=int, default=3)
    p.add_argument("--full-lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--suites", default="all,fast", help="comma-separated suites, each a cell (all runs first)")
    p.add_argument("--cells", default=",".join(c[0] for c in CELLS),
                   help="comma-separated cells after the suites (\"\": the suites only)")
    p.add_argument("--shadows", type=int, default=0, help="shadow fine-tunes for RMIA / LiRA (0: none; else >= 2)")
    p.add_argument("--population", type=int, default=None,
                   help="shadow population: texts of the corpus outside the split (default: all of them)")
    p.add_argument("--shots", type=int, default=7, help="ReCall / CON-ReCall shots (taken out of the evaluation)")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="/tmp/tuneguard-leak/run", help="stage outputs and results (resumable)")
    args = p.parse_args(argv)
    args.nonmembers = args.nonmembers or args.members
    out = Path(args.out)
    t_start = time.perf_counter()

    base = load_model(args.model)
    members, nonmembers, population = split(args, base, out)
    targets = listed(args.targets)
    report: dict[str, Any] = {"settings": vars(args), "targets": {}}
    runs, cells = {}, {kind: {} for kind in targets}
    # The cheap cells of every target first (the suites, then the variants from the cached passes), GradNorm's
    # backward passes last: an interrupted run has the main table already.
    order = [(kind, cell) for phase in (False, True) for kind in targets for cell in cells_of(args)
             if (cell[0] == "gradnorm") == phase]
    for kind, (cell, attacks, params, _) in order:
        if kind not in runs:
            t0 = time.perf_counter()
            runs[kind] = finetune(base, members, out / kind / "model", train_config(args, kind))
            log(f"{kind}: target ready ({time.perf_counter() - t0:.0f} s; its training took "
                f"{runs[kind].record.train_seconds:.0f} s)")
        # Every cell after the first evaluates its texts (its ReCall shots left out): the same rows.
        shots = next(iter(cells[kind].values()))["result"].shots if cells[kind] else {"member": [], "nonmember": []}
        cells[kind][cell] = attack_cell(out / kind / f"{cell}.json", runs[kind].model, base,
                                        [t for t in members if t not in set(shots["member"])],
                                        [t for t in nonmembers if t not in set(shots["nonmember"])], attacks, params,
                                        args, cache=not cell.startswith("suite-"),
                                        shadows=ShadowSpec(population, k=args.shadows, seed=args.seed)
                                        if cell == "shadows" else None)
        log(f"{kind}: {cell} done ({cells[kind][cell]['wall_seconds']:.0f} s)")
        suites = {c[len("suite-"):]: done["result"] for c, done in cells[kind].items() if c.startswith("suite-")}
        report["targets"][kind] = {
            "train": {"seconds": runs[kind].record.train_seconds, "config": train_config(args, kind).to_dict()},
            "rows": rows_of(cells[kind], args),
            "comparisons": compare(cells[kind]["shadows"]["result"] if "shadows" in cells[kind]
                                   else next(iter(suites.values())), args),
            "shadows": cells[kind]["shadows"]["result"].cost.get("shadows") if "shadows" in cells[kind] else None,
            "suites": {name: suite_summary(result, cells[kind][f"suite-{name}"]["wall_seconds"])
                       for name, result in suites.items()},
            "cells": {c: {k: v for k, v in done.items() if k != "result"} for c, done in cells[kind].items()}}
        write(out, report, args)
    report["wall_seconds"] = time.perf_counter() - t_start
    write(out, report, args)
    print(markdown(report, args))
    log(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


def listed(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def cells_of(args) -> list[tuple]:
    """The suite cells (``all`` first: its shots leave every cell's texts) and then the --cells asked for."""
    suites = sorted(listed(args.suites), key=lambda s: s != "all")
    unknown = [s for s in suites if s not in SUITES] + [c for c in listed(args.cells) if c not in {c[0] for c in CELLS}]
    if unknown:
        raise SystemExit(f"unknown suite or cell {unknown}: suites {sorted(SUITES)}, cells {[c[0] for c in CELLS]}")
    shadows = [("shadows", ["fast", "rmia", "lira"], {}, None)] if args.shadows else []
    return ([(f"suite-{s}", [s], {}, None) for s in suites] + [c for c in CELLS if c[0] in listed(args.cells)]
            + shadows)


def log(message: str) -> None:
    print(f"[leak_bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def split(args, base, out: Path) -> tuple[list[str], list[str], list[str]]:
    """Members and non-members: disjoint, shuffled with the seed, cut once to the training window; and, with
    --shadows, the shadow population: the texts after them in the same order (so the split does not depend on it)."""
    path = out / "split.json"
    settings = {"data": str(args.data), "model": base.fingerprint, "members": args.members,
                "nonmembers": args.nonmembers, "max_length": args.max_length, "seed": args.seed,
                **({"population": args.population} if args.shadows else {})}
    if path.is_file() and (saved := read_json(path))["key"] == key(settings):
        return saved["members"], saved["nonmembers"], saved.get("population", [])
    texts = clean_texts(load_texts(args.data)).texts
    need = args.members + args.nonmembers
    if need > len(texts):
        raise SystemExit(f"{args.data} holds {len(texts)} texts, {need} needed: lower --members / --nonmembers")
    order = np.random.default_rng(args.seed).permutation(len(texts))
    chosen = fit_to_length([texts[i] for i in order[:need]], base.tokenizer, args.max_length)
    members, nonmembers = chosen[:args.members], chosen[args.members:]
    rest = order[need:need + args.population] if args.population is not None else order[need:]
    population = fit_to_length([texts[i] for i in rest], base.tokenizer, args.max_length) if args.shadows else []
    atomic_write_json(path, {"key": key(settings), "settings": settings, "members": members,
                             "nonmembers": nonmembers, "population": population})
    return members, nonmembers, population


def train_config(args, kind: str) -> TrainConfig:
    common = {"batch_size": args.batch_size, "max_length": args.max_length, "seed": args.seed}
    if kind == "lora":
        return TrainConfig(method="lora", epochs=args.lora_epochs, lr=args.lora_lr, lora_r=16, lora_alpha=32,
                           target_modules=args.lora_modules.split(","), **common)
    if kind == "full":
        return TrainConfig(method="full", epochs=args.full_epochs, lr=args.full_lr, **common)
    raise SystemExit(f"unknown target {kind!r}: use lora, full")


def attack_cell(path: Path, target, base, members, nonmembers, attacks, params, args, cache: bool,
                shadows: ShadowSpec | None = None) -> dict:
    """One ``run_attacks`` on a target, saved to ``path``; reused when everything that decided it matches.
    ``cache=False``: every forward pass is made (and timed), none read from or written to the score cache."""
    settings = {"target": target.fingerprint, "reference": base.fingerprint, "attacks": attacks, "params": params,
                "members": members, "nonmembers": nonmembers, "shots": args.shots, "bootstrap": args.bootstrap,
                "seed": args.seed, "batch_size": args.batch_size,
                **({"shadows": shadows.k, "population": shadows.population} if shadows else {})}
    if path.is_file() and (saved := read_json(path))["key"] == key(settings):
        saved["result"] = MIAResult.from_json(saved["result"])
        return saved
    t0 = time.perf_counter()
    result = run_attacks(target, members, nonmembers, attacks=attacks, reference=base, params=params,
                         n_shots=args.shots, seed=args.seed, batch_size=args.batch_size, n_boot=args.bootstrap,
                         cache=cache, shadows=shadows)
    cell = {"key": key(settings), "wall_seconds": time.perf_counter() - t0, "result": result.to_json()}
    atomic_write_json(path, cell)
    cell["result"] = result
    return cell


def rows_of(cells: dict, args) -> list[dict]:
    """One row per attack (variants by their label): metrics with CIs, passes it added, its seconds."""
    rows = []
    for cell, _, _, labels in cells_of(args):
        if cell not in cells:  # not run yet
            continue
        result: MIAResult = cells[cell]["result"]
        names = labels or {name: name for name in result.attacks}
        for label, name in names.items():
            a = result.attacks[name]
            m = a.metrics
            own = (a.cost or {}).get("forward_passes", 0)  # GradNorm's forward + backward passes, outside the engine
            rows.append({"attack": label, "cell": cell, "auc": m["auc"], "auc_ci": m["auc_ci"],
                         "tpr@0.1%": m["tpr"]["0.001"], "tpr@0.1%_ci": m["tpr_ci"]["0.001"],
                         "tpr@1%": m["tpr"]["0.01"], "tpr@1%_ci": m["tpr_ci"]["0.01"],
                         "tpr@10%": m["tpr"]["0.1"], "tpr@10%_ci": m["tpr_ci"]["0.1"],
                         "forward_passes": sum(result.cost["forward_passes_by_attack"][name].values()) + own,
                         "backward_passes": (a.cost or {}).get("backward_passes", 0),
                         "seconds": result.cost["seconds"][name], "note": a.note})
        passes = result.cost["forward_passes"]
        shared = sum(passes.values()) - sum(sum(v.values()) for v in result.cost["forward_passes_by_attack"].values())
        rows.append({"attack": f"({cell}: shared target pass)", "cell": cell, "forward_passes": shared,
                     "seconds": cells[cell]["wall_seconds"] - sum(result.cost["seconds"].values())})
    return rows


def suite_summary(result: MIAResult, wall_seconds: float) -> dict:
    """What a suite cost (wall time, forward passes per model) and what it concluded (the verdict, the strongest
    attack by AUC with its three figures, the strongest at 1% and 10% FPR)."""
    verdict = mia_verdict(result)
    best = result.attacks[verdict.best_auc.attack]
    at = {f"{b.fpr:g}": {"attack": b.attack, "tpr": b.value, "ci": b.ci} for b in verdict.strongest}
    return {"wall_seconds": wall_seconds, "forward_passes": result.cost["forward_passes"],
            "attacks": list(result.attacks), "verdict": verdict.level, "verdict_label": verdict.label,
            "strongest": {"attack": verdict.best_auc.attack, "auc": best.auc, "auc_ci": best.metrics["auc_ci"],
                          "tpr@1%": best.metrics["tpr"]["0.01"], "tpr@1%_ci": best.metrics["tpr_ci"]["0.01"],
                          "tpr@10%": best.metrics["tpr"]["0.1"], "tpr@10%_ci": best.metrics["tpr_ci"]["0.1"]},
            "strongest_at": {k: at[k] for k in ("0.01", "0.1") if k in at}}


def compare(result: MIAResult, args) -> dict[str, dict]:
    """TPR@1% of each attack of COMPARED the result holds minus ratio's, over paired bootstrap resamples (the same
    texts for both)."""
    ratio = result.attacks["ratio"]
    y = ratio.labels
    mem, non = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rng = np.random.default_rng(args.seed)
    draws = [np.concatenate([rng.choice(mem, len(mem)), rng.choice(non, len(non))]) for _ in range(args.bootstrap)]
    out = {}
    for name in (n for n in COMPARED if n in result.attacks):
        other = result.attacks[name]
        diff = other.tpr(0.01) - ratio.tpr(0.01) if other.tpr(0.01) is not None else None
        deltas = [tpr_at_fpr(y[i], other.scores[i], 0.01) - tpr_at_fpr(y[i], ratio.scores[i], 0.01) for i in draws]
        ci = [float(np.percentile(deltas, 2.5)), float(np.percentile(deltas, 97.5))] if deltas else None
        verdict = ("no TPR@1% (too few non-members)" if diff is None else "no bootstrap" if ci is None else
                   "beats ratio" if ci[0] > 0 else "below ratio" if ci[1] < 0 else "no significant difference")
        out[name] = {"tpr@1%": other.tpr(0.01), "tpr@1%_ci": other.metrics["tpr_ci"]["0.01"],
                     "ratio_tpr@1%": ratio.tpr(0.01), "ratio_tpr@1%_ci": ratio.metrics["tpr_ci"]["0.01"],
                     "difference": diff, "difference_ci": ci, "verdict": verdict}
    return out


def interval(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return cell_text(value)
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def markdown(report: dict, args) -> str:
    lines = [f"# Leak benchmark: {args.model}, {args.members} members / {args.nonmembers} non-members, "
             f"{args.max_length} tokens (PubMed)", "",
             "Reference: the base model. "
             # Only ``all`` runs ReCall and CON-ReCall, the attacks that draw shots.
             + (f"{args.shots} non-member and {args.shots} member texts are ReCall shots, not evaluated. "
                if "all" in args.suites.split(",") else "")
             + "Forward passes: those the attack added in its cell (0 where an earlier attack or cell already scored "
             "the text: the score cache); seconds: the attack's own.",
             f"Command: `{shlex.join(['python', 'bench/leak_bench.py', *sys.argv[1:]])}`", ""]
    for kind, target in report["targets"].items():
        cfg = target["train"]["config"]
        lines += [f"## {kind} target ({cfg['epochs']} epochs, lr {cfg['lr']}"
                  + (f", r {cfg['lora_r']}, {'/'.join(cfg['target_modules'])}" if kind == "lora" else "") + ")", "",
                  "| cell | attack | AUC [95% CI] | TPR@0.1% [95% CI] | TPR@1% [95% CI] | TPR@10% [95% CI] | "
                  "forward passes added | seconds |", "|---|---|---|---|---|---|---|---|"]
        for r in target["rows"]:
            lines.append(f"| {r['cell']} | {r['attack']} | {interval(r.get('auc'), r.get('auc_ci'))} | "
                         f"{interval(r.get('tpr@0.1%'), r.get('tpr@0.1%_ci'))} | "
                         f"{interval(r.get('tpr@1%'), r.get('tpr@1%_ci'))} | "
                         f"{interval(r.get('tpr@10%'), r.get('tpr@10%_ci'))} | {r['forward_passes']}"
                         + (f" (+{r['backward_passes']} backward)" if r.get("backward_passes") else "")
                         + f" | {r['seconds']:.1f} |")
        lines += ["", "The suites (each scored with the score cache off):", "",
                  "| suite | attacks | wall s | forward passes | verdict | strongest by AUC: AUC | its TPR@1% | "
                  "its TPR@10% | strongest at 1% FPR | at 10% FPR |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, su in target["suites"].items():
            b, at = su["strongest"], su["strongest_at"]
            passes = ", ".join(f"{m} {n}" for m, n in su["forward_passes"].items())
            lines.append(f"| {name} | {len(su['attacks'])} | {su['wall_seconds']:.0f} | {passes} | "
                         f"{su['verdict_label']} | {b['attack']} {interval(b['auc'], b['auc_ci'])} | "
                         f"{interval(b['tpr@1%'], b['tpr@1%_ci'])} | {interval(b['tpr@10%'], b['tpr@10%_ci'])} | "
                         + " | ".join(f"{at[k]['attack']} {interval(at[k]['tpr'], at[k]['ci'])}" if k in at else "-"
                                      for k in ("0.01", "0.1")) + " |")
        if target.get("shadows"):
            sh = target["shadows"]
            lines += ["", f"Shadows: {len(sh['train_seconds'])} fine-tunes, {sum(sh['train_seconds']):.0f} s of "
                          f"training ({len(sh['trained_now'])} trained in this run), {sh['forward_passes']} forward "
                          "passes under them."]
        lines += ["", "TPR@1% against ratio (paired bootstrap of the difference):", ""]
        for name, c in target["comparisons"].items():
            lines.append(f"- {name}: {interval(c['tpr@1%'], c['tpr@1%_ci'])} vs ratio "
                         f"{interval(c['ratio_tpr@1%'], c['ratio_tpr@1%_ci'])}; difference "
                         f"{interval(c['difference'], c['difference_ci'])}: **{c['verdict']}**")
        lines.append("")
    return "\n".join(lines)


def write(out: Path, report: dict, args) -> None:
    atomic_write_json(out / "results.json", report)
    atomic_write_text(out / "results.md", markdown(report, args) + "\n")
    for kind, target in report["targets"].items():
        columns = ["cell", "attack", "auc", "tpr@1%", "tpr@10%", "forward_passes", "seconds"]
        print(format_table([{k: r.get(k) for k in columns} for r in target["rows"]], columns,
                           title=f"\n{kind} target"), flush=True)


if __name__ == "__main__":
    sys.exit(main())
