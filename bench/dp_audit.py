"""Issue 28's measurement: does the one-run DP audit have power on a real fine-tuning?

    python bench/dp_audit.py --estimate                       # time a few DP-SGD steps, print the run's estimate
    python bench/dp_audit.py --tiny --out /tmp/tuneguard-bench/dp_audit-tiny   # the pipeline at a tiny size
    python bench/dp_audit.py --compare-kinds secret,rare-tokens,random-tokens  # each kind without DP (AUC, TPR@1%)
    nohup python bench/dp_audit.py --out /tmp/tuneguard-bench/dp_audit > dp_audit.log 2>&1 &   # the measurement

SmolLM2-135M, LoRA (r 16 on q/v, peft's default), fine-tuned on --texts PubMed abstracts from ../shared/data (a
tenth held out for perplexity) plus --canaries secret canaries (a real abstract's first 32 tokens, then an 8-token
secret of rare tokens, each canary's tokens its own; only the secret is trained on and scored), each included with
probability 1/2. One run per setting, all from the same canaries and inclusion draw: no DP, DP-SGD at epsilon 8, 4
and 1, and DP-SGD at epsilon 4 with a planted bug (--bug: the noise secretly scaled down, the accountant still
claiming epsilon 4). Every DP run has `tuneguard defend dp`'s settings (lr 10x, expected batch 4x the fine-tuning
defaults; clipping norm 1) and is planned for the real texts + half the canaries, at delta 1e-5. The table: claimed
epsilon; the Steinke et al. and f-DP (Gaussian curve) lower bounds at delta 1e-5 and as pure-DP tests at delta 0
(95% confidence, k+ = k- = 5% of the canaries fixed in advance); TPR at 1% FPR and AUC on the canaries; held-out
perplexity. The goal (issue 28): audited epsilon >= 1.0 at epsilon 4 and >= 2.0 at epsilon 8, never above the
claim, the planted bug well above its claim; the note under the table says which measurement stands in the way
when the goal is missed (the canaries' memorisation without DP, or the bound's ceiling at this m).

Resumable: the split, canaries, each run and its scores are saved under --out (`tuneguard audit-dp`'s stages). Writes
dp_audit.json and dp_audit.md to --results (bench/results; under --out with --tiny).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from tuneguard.data import clean_texts, load_texts
from tuneguard.dpaudit import BoundParams, CanaryParams
from tuneguard.dpaudit.audit import DPAuditParams, RunAudit, audit_dp
from tuneguard.files import atomic_write_json, atomic_write_text
from tuneguard.models import LoadedModel, load_model
from tuneguard.report.table import format_table
from tuneguard.train import TrainConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pubmed" / "pubmedqa_abstracts.jsonl"
RESULTS = Path(__file__).resolve().parent / "results"
DELTA = 1e-5
COLUMNS = ["run", "claimed epsilon", "Steinke (1e-5)", "Steinke (delta 0)", "f-DP (1e-5)", "f-DP (delta 0)",
           "TPR@1%FPR", "AUC", "held-out perplexity", "train s"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--texts", type=int, default=1000, help="real abstracts read (a tenth held out)")
    p.add_argument("--canaries", type=int, default=1000)
    p.add_argument("--epsilons", default="8,4,1")
    p.add_argument("--bug", default="noise=0.1", help="planted into an extra DP run at --bug-epsilon")
    p.add_argument("--bug-epsilon", type=float, default=4.0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="tiny-gpt2, 40 texts, 40 canaries, 1 epoch: a pipeline check")
    p.add_argument("--estimate", action="store_true", help="time a few DP-SGD and LoRA steps and scoring passes, "
                                                            "print the full run's estimate, train nothing else")
    p.add_argument("--compare-kinds", metavar="KINDS",
                   help="instead: one run without DP per canary kind (comma-separated, e.g. secret,rare-tokens), "
                        "their TPR@1%% and AUC on the canaries: the measurement that chooses the default kind")
    p.add_argument("--out", default="/tmp/tuneguard-bench/dp_audit", help="stage outputs (resumable)")
    p.add_argument("--results", help="where dp_audit.json and .md go (default bench/results; --out with --tiny)")
    args = p.parse_args(argv)
    if args.tiny:
        args.model, args.texts, args.canaries, args.epochs, args.max_length = "tiny-gpt2", 40, 40, 1, 64
    out = Path(args.out)
    results = Path(args.results) if args.results else (out if args.tiny else RESULTS)

    texts = clean_texts(load_texts(args.data, limit=args.texts), name=args.data).texts
    base = load_model(args.model)
    train = TrainConfig(method="lora", epochs=args.epochs, max_length=args.max_length, seed=args.seed)
    train = train.replace(lr=train.lr * 10, grad_accum=train.grad_accum * 4)  # defend dp's (the DP regime's) scaling
    canaries = CanaryParams(count=args.canaries, seed=args.seed,
                            **({"length": 4, "prefix_length": 16} if args.tiny else {}))
    bound = BoundParams(seed=args.seed)
    if args.estimate:
        return estimate(base, texts, train, canaries, args)

    if args.compare_kinds:
        return compare_kinds(base, texts, train, canaries, bound, args, out, results)

    t0 = time.perf_counter()
    epsilons = tuple(float(e) for e in args.epsilons.split(","))
    common = dict(train=train, canaries=canaries, bound=bound, report=log)
    honest = audit_dp(base, texts, out, audit=DPAuditParams(epsilons=epsilons, delta=DELTA, seed=args.seed),
                      **common)
    planted = audit_dp(base, texts, out, audit=DPAuditParams(epsilons=(args.bug_epsilon,), no_dp=False, delta=DELTA,
                                                             seed=args.seed, plant_bug=args.bug), **common)
    runs = honest.runs + planted.runs
    rows = [row(r) for r in runs]
    s = honest.settings
    title = (f"One-run DP audit, {s['model']}: {s['n_real_train']} PubMed abstracts + {s['n_canaries']} secret "
             f"canaries ({s['n_included']} trained on), {args.epochs} epochs, max length {args.max_length}; base "
             f"held-out perplexity {honest.base_perplexity:.2f}; ceilings (every guess right): Steinke "
             f"{s['ceilings']['bound']:.2f}, f-DP {s['ceilings']['fdp']:.2f} at delta {DELTA:g}, "
             f"{s['ceilings']['bound_pure']:.2f} at delta 0")
    table = format_table(rows, COLUMNS, title=title)
    lines = note(runs, s["ceilings"])
    print(table + "\n" + "\n".join(lines))
    report = {"settings": {**vars(args), "train": train.to_dict(), "canaries": canaries.to_dict(),
                           "bound": bound.to_dict(), "audit": s},
              "base_perplexity": honest.base_perplexity, "runs": [r.to_json() for r in runs], "note": lines,
              "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_json(results / "dp_audit.json", report)
    atomic_write_text(results / "dp_audit.md", f"```\n{table}\n```\n\n" + "\n".join(f"- {n}" for n in lines) + "\n")
    print(f"results: {results / 'dp_audit.json'}, {results / 'dp_audit.md'}")
    return 0


def row(run: RunAudit) -> dict:
    """A run's line of the table."""
    return {"run": run.name, "claimed epsilon": "inf (no DP)" if math.isinf(run.epsilon) else run.epsilon,
            "Steinke (1e-5)": run.bound.epsilon_lower_bound, "Steinke (delta 0)": run.bound_pure.epsilon_lower_bound,
            "f-DP (1e-5)": run.fdp.epsilon_lower_bound, "f-DP (delta 0)": run.fdp_pure.epsilon_lower_bound,
            "TPR@1%FPR": run.tpr, "AUC": run.auc, "held-out perplexity": run.perplexity,
            "train s": run.train_seconds}


def note(runs: list[RunAudit], ceilings: dict) -> list[str]:
    """The goal, met or not, and the measurement that explains a miss."""
    best = {r.target_epsilon: max(r.bound.epsilon_lower_bound, r.fdp.epsilon_lower_bound)
            for r in runs if r.target_epsilon is not None and not r.planted_bug}
    lines = [f"goal epsilon {e:g}: audited {best[e]:.2f} (want >= {want})" + (" met" if best[e] >= want else " missed")
             for e, want in ((4.0, 1.0), (8.0, 2.0)) if e in best]
    above = [r.name for r in runs if not r.planted_bug and r.bound.epsilon_lower_bound > r.epsilon]
    lines.append("no honest run audited above its claim" if not above else f"ABOVE THE CLAIM: {', '.join(above)}")
    for r in runs:
        if r.planted_bug:
            caught = r.bound.epsilon_lower_bound > r.epsilon or r.fdp.epsilon_lower_bound > r.epsilon
            lines.append(f"planted bug {r.planted_bug} at claimed {r.epsilon:.2f}: audited "
                         f"{r.bound.epsilon_lower_bound:.2f} / {r.fdp.epsilon_lower_bound:.2f} (Steinke / f-DP): "
                         + ("caught" if caught else "NOT caught"))
    free = next((r for r in runs if r.target_epsilon is None), None)
    if free is not None and any("missed" in line for line in lines):
        at_ceiling = free.fdp.epsilon_lower_bound >= 0.95 * ceilings["fdp"]
        lines.append(f"why: without DP the canaries reach AUC {free.auc:.3f}, TPR@1% "
                     f"{'-' if free.tpr is None else f'{free.tpr:.3f}'} and bound {free.fdp.epsilon_lower_bound:.2f} "
                     f"of a possible {ceilings['fdp']:.2f}: "
                     + ("the bound's ceiling at this m limits it (more canaries or guesses)" if at_ceiling else
                        "the canaries are not memorised enough (memorisation, not the bound, limits it)"))
    return lines


def compare_kinds(base: LoadedModel, texts: list[str], train: TrainConfig, canaries: CanaryParams,
                  bound: BoundParams, args: argparse.Namespace, out: Path, results: Path) -> int:
    """One run without DP per canary kind (each under its own --out/kind-K, the same texts, seed and length), the
    canaries' TPR@1% FPR and AUC and the bounds they give: issue 28's measurement before choosing the default."""
    rows = []
    for kind in (k.strip() for k in args.compare_kinds.split(",") if k.strip()):
        result = audit_dp(base, texts, out / f"kind-{kind}", train=train, canaries=canaries.replace(kinds=(kind,)),
                          audit=DPAuditParams(epsilons=(), seed=args.seed), bound=bound, report=log)
        rows.append({**row(result.runs[0]), "run": f"no-dp, {kind}"})
    table = format_table(rows, ["run", "TPR@1%FPR", "AUC", "Steinke (delta 0)", "f-DP (delta 0)", "train s"],
                         title=f"Canary kinds without DP, {args.model}: {canaries.count} canaries, "
                               f"{canaries.length} trained tokens each")
    print(table)
    atomic_write_json(results / "dp_audit_kinds.json", {"settings": vars(args), "rows": rows})
    atomic_write_text(results / "dp_audit_kinds.md", f"```\n{table}\n```\n")
    return 0


def estimate(base: LoadedModel, texts: list[str], train: TrainConfig, canary_params: CanaryParams,
             args: argparse.Namespace) -> int:
    """Time a few DP-SGD and LoRA optimizer steps and the scoring passes on this machine, and project the run."""
    import tempfile

    from tuneguard.defenses.dp_sgd import DPConfig, dp_finetune
    from tuneguard.dpaudit.audit import trained_log_likelihood
    from tuneguard.dpaudit.canaries import make_canaries
    from tuneguard.scoring import ScoringEngine
    from tuneguard.train import finetune
    from tuneguard.train.batching import encode_examples
    from tuneguard.train.loop import optimizer_steps

    holdout = max(1, round(0.1 * len(texts)))
    real, canaries = texts[holdout:], make_canaries(base.tokenizer, canary_params, avoid_texts=texts,
                                                    prefix_texts=texts[holdout:])
    sample = real[:16] + [c.example for c in canaries[:16]]  # the two kinds of example, a few steps of each
    steps = 1  # the machine is shared: one step each keeps the measurement near a minute
    with tempfile.TemporaryDirectory() as tmp:
        # Expected batch 8 (no accumulation): tokens per second hardly depend on it, and the steps stay short.
        short = train.replace(max_steps=steps, grad_accum=1)
        dp = dp_finetune(base, sample, Path(tmp) / "dp", short, DPConfig(target_epsilon=4.0, delta=DELTA),
                         progress=False).record
        lora = finetune(base, sample, Path(tmp) / "lora", short, progress=False).record
    engine = ScoringEngine(base, max_length=train.max_length, cache=False, progress=False)
    t0 = time.perf_counter()
    trained_log_likelihood(engine, canaries[:32])
    per_canary = (time.perf_counter() - t0) / 32
    t0 = time.perf_counter()
    engine.score(real[:8])
    per_text = (time.perf_counter() - t0) / 8

    # Tokens of the whole data (in the training window), each trained on about `epochs` times per run: a DP run
    # takes steps x q x n = epochs x n examples in expectation.
    def window_tokens(examples: list) -> int:
        return sum(len(e.input_ids) for e in encode_examples(examples, base.tokenizer, train.max_length))

    real_tokens = window_tokens(real)
    canary_tokens = window_tokens([c.example for c in canaries]) / 2  # half of them are included
    population = len(real) + len(canaries) // 2
    tokens = (real_tokens + canary_tokens) * train.epochs
    dp_runs = len(args.epsilons.split(",")) + 1
    dp_seconds, lora_seconds = tokens / dp.tokens_per_second, tokens / lora.tokens_per_second
    score_seconds = len(canaries) * per_canary + holdout * per_text  # each run's model; the base's once (cached)
    total = dp_runs * (dp_seconds + score_seconds) + lora_seconds + 2 * score_seconds
    print(f"measured on this machine ({steps} optimizer step(s) each, expected batch {train.batch_size}): DP-SGD "
          f"{dp.tokens_per_second:.0f} tokens/s, LoRA {lora.tokens_per_second:.0f} tokens/s; scoring "
          f"{per_canary:.3f} s per canary, {per_text:.3f} s per held-out text")
    print(f"the run: {len(real)} real texts ({real_tokens} tokens) + {len(canaries)} canaries, population "
          f"{population}, {optimizer_steps(population, train)} DP steps per run; {tokens / 1e3:.0f}k training "
          f"tokens per run")
    print(f"estimate: {dp_runs} DP runs x {dp_seconds / 3600:.1f} h + no-DP {lora_seconds / 3600:.1f} h + scoring "
          f"{(dp_runs + 2) * score_seconds / 3600:.1f} h = about {total / 3600:.1f} h")
    print(json.dumps({"dp_tokens_per_second": dp.tokens_per_second, "lora_tokens_per_second": lora.tokens_per_second,
                      "seconds_per_canary_score": per_canary, "estimate_hours": round(total / 3600, 2)}))
    return 0


def log(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
