"""What the MIA suite costs: the shared scoring engine against one-pass-per-attack and against bare forward passes.

    python bench/bench_scoring.py                                    # tiny model, well under 2 minutes
    flock /tmp/tuneguard-cpu.lock python bench/bench_scoring.py --model smollm2-135m --texts 40   # the real figure
    flock /tmp/tuneguard-cpu.lock python bench/bench_scoring.py --model smollm2-135m --parts memory   # peak memory

Measurements on the same texts (PubMed abstracts from ../shared/data, cut to --words words), chosen by --parts:
- suite: ``run_attacks`` with every attack sharing one engine per model (scores cache off, bootstrap off: only the
  scoring is timed); naive: each attack alone with a fresh engine, recomputing every pass it needs (the ensemble
  is left out: it needs the others' scores and costs no pass);
- single: the single-pass group (loss, zlib, min-k, min-k++, dc-pdd) on its own, --repeat times (other jobs share
  the CPU: the median ratio is the figure);
- bare: every call the engine made to the model replayed as a plain ``model(**inputs)``, no reduction: the floor
  (for the suite and the single-pass group; the naive runs are not replayed). A ReCall prefix is read once and
  its key/value cache continued by every text behind it; the replay replays those calls as made;
- precision: the engine's reduction (float32 terms, float64 sums) timed against the float64 log-softmax it replaced
  and against log-probs alone, its largest deviation from that float64 reference on random and on the model's own
  logits, and how far a text's scores move between batch 1, batch 8 and a token budget;
- memory: the peak RSS of a 200-text audit (loss, zlib, min-k, min-k++, ratio) of a LoRA target, in its own process.
Forward hooks time the model calls inside the engine, so the remainder (reductions, tokenisation, formulas) is
reported too. Every run reports its own peak RSS beside its times.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tuneguard.attacks import resolve_attacks, run_attacks
from tuneguard.data import load_texts
from tuneguard.files import atomic_write_json
from tuneguard.models import LoadedModel, load_model, tiny_model
from tuneguard.scoring import ScoringEngine
from tuneguard.scoring.engine import BATCH_TOLERANCE, POSITION_BLOCK, _reduce

SINGLE_PASS = ["loss", "zlib", "min-k", "min-k++", "dc-pdd"]
SUITE = resolve_attacks(["all", "dc-pdd"])  # the default suite plus dc-pdd (neighbour attacks: their own bench)
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pubmed" / "pubmedqa_abstracts.jsonl"


class ModelCalls:
    """Forward hooks on a model: the time spent in its forward calls and the batches it was given."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.seconds, self.batches, self._t0, self.active = 0.0, [], 0.0, True
        model.register_forward_pre_hook(self._pre, with_kwargs=True)
        model.register_forward_hook(self._post, with_kwargs=True)

    def _pre(self, module, args, kwargs):
        if self.active:
            # The call's inputs as given (a shared prefix's cache copied: the call appends to it), for the replay.
            self.batches.append({k: copy.deepcopy(v) if k == "past_key_values" else
                                 v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})
            self._t0 = time.perf_counter()

    def _post(self, module, args, kwargs, output):
        if self.active:
            self.seconds += time.perf_counter() - self._t0

    def reset(self) -> None:
        self.seconds, self.batches = 0.0, []


@torch.no_grad()
def replay(model: torch.nn.Module, batches: list[dict]) -> float:
    """Seconds for plain forward passes over ``batches``: the floor any scorer pays."""
    t0 = time.perf_counter()
    for batch in batches:
        model(**batch)
    return time.perf_counter() - t0


def new_tokens(batch: dict) -> int:
    """Tokens a call forwards: its inputs' real (unpadded) positions, not the cached prefix it continues from."""
    return int(batch["attention_mask"][:, -batch["input_ids"].shape[1]:].sum())


def measure(target: LoadedModel, reference: LoadedModel, hooked: list[tuple[ModelCalls, torch.nn.Module]],
            members, nonmembers, attacks: list[str], corpus: list[str], args, *, bare: bool = True) -> dict:
    """One ``run_attacks`` with a fresh uncached engine per model; its time, passes, and (``bare``) the replay."""
    for c, _ in hooked:
        c.reset()
    t0 = time.perf_counter()
    out = run_attacks(target, members, nonmembers, attacks=attacks, reference=reference, corpus=corpus,
                      n_shots=args.shots, seed=args.seed, batch_size=args.batch_size, max_length=args.max_length,
                      n_boot=0, cache=False, progress=False)
    seconds = time.perf_counter() - t0
    model_seconds = sum(c.seconds for c, _ in hooked)
    bare_seconds = math.nan
    if bare:
        for c, _ in hooked:
            c.active = False
        bare_seconds = sum(replay(model, c.batches) for c, model in hooked)
        for c, _ in hooked:
            c.active = True
    passes = out.cost["forward_passes"]
    return {"attacks": attacks, "seconds": seconds, "model_seconds": model_seconds, "bare_seconds": bare_seconds,
            "forward_passes": sum(passes.values()), "passes_by_model": passes,
            "model_calls": sum(out.cost["model_calls"].values()),
            "tokens": sum(new_tokens(b) for c, _ in hooked for b in c.batches),
            "evaluated": out.settings["evaluated"]}


def float64_reference(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """lp, mu, sigma as the engine reduced them before (float64 log-softmax, two-pass variance): the reference."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    p = logp.exp()
    m1 = (p * logp).sum(-1)
    return logp.gather(-1, targets[:, None])[:, 0], m1, (p * (logp - m1[:, None]).square()).sum(-1).sqrt()


def blocks(fn, logits: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
    """``fn`` over the engine's position blocks, concatenated per output."""
    parts = [fn(logits[s:s + POSITION_BLOCK], targets[s:s + POSITION_BLOCK])
             for s in range(0, len(logits), POSITION_BLOCK)]
    return [torch.cat(xs) for xs in zip(*parts)]


def reduction_variants(vocab: int, positions: int, repeats: int = 3) -> dict[str, float]:
    """Seconds per 1,000 positions of each way to get lp, mu, sigma from float32 logits (the engine's block size)."""
    logits = torch.randn(positions, vocab) * 3
    targets = torch.randint(vocab, (positions,))

    def lp_only(block, tgt):  # what loss / zlib / min-k need: no moments
        return (block.gather(-1, tgt[:, None])[:, 0] - torch.logsumexp(block, dim=-1),)

    out = {}
    for name, fn in (("float64 two-pass (before)", float64_reference), ("engine: float32 (now)", _reduce),
                     ("float32 log-prob only", lp_only)):
        blocks(fn, logits, targets)
        best = min(_timed(lambda: blocks(fn, logits, targets)) for _ in range(repeats))
        out[name] = best / positions * 1000
    return out


def reduction_deviation(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Largest |engine - float64 reference| of lp, mu and sigma over the rows of ``logits``."""
    got = blocks(_reduce, logits, targets)[:3]
    want = blocks(float64_reference, logits, targets)
    return {name: float((g - w).abs().max()) for name, g, w in zip(("lp", "mu", "sigma"), got, want)}


@torch.no_grad()
def real_logits(loaded: LoadedModel, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own next-token logits over ``texts`` (unpadded, one text at a time) and the true next tokens."""
    rows, targets = [], []
    for text in texts:
        ids = torch.tensor([loaded.tokenizer(text)["input_ids"]])
        rows.append(loaded.model(input_ids=ids).logits[0, :-1].float())
        targets.append(ids[0, 1:])
    return torch.cat(rows), torch.cat(targets)


def batch_dependence(loaded: LoadedModel, texts: list[str], max_length: int) -> dict[str, float]:
    """Largest |Δ| of a text's lp / mu / sigma between batch 1, batch 8 and a token budget (the engine documents
    BATCH_TOLERANCE)."""
    runs = [ScoringEngine(loaded, max_length=max_length, cache=False, progress=False, **kw).score(texts)
            for kw in ({"batch_size": 1}, {"batch_size": 8}, {"batch_tokens": 1024})]
    return {field: max(float(np.abs(getattr(a, field) - getattr(b, field)).max()) for run in runs[1:]
                       for a, b in zip(runs[0], run)) for field in ("logprobs", "mu", "sigma")}


def single_pass_ratios(target: LoadedModel, reference: LoadedModel, hooked, members, nonmembers, corpus, args,
                       repeats: int) -> dict:
    """The single-pass group against its bare replay, ``repeats`` times (other jobs share the CPU: the median)."""
    ratios = []
    for _ in range(repeats):
        m = measure(target, reference, hooked, members, nonmembers, SINGLE_PASS, corpus, args)
        ratios.append(m["seconds"] / m["bare_seconds"])
    return {"ratios": ratios, "median": statistics.median(ratios)}


def memory_audit(args) -> dict:
    """Peak memory of a 200-text audit (loss, zlib, min-k, min-k++, ratio) of a LoRA target, in a child process so
    its peak is its own: the LoRA (--lora, else one trained here for a few steps) with its base as the reference."""
    lora = Path(args.lora) if args.lora else Path(args.out).with_suffix("") / "lora"
    if not (lora / "adapter_config.json").is_file():
        from tuneguard.train import TrainConfig, finetune

        finetune(load_model(args.model), texts_for(8, args.words), lora,
                 TrainConfig(method="lora", epochs=1, batch_size=4, max_length=32), progress=False)
    call = f"{str(lora)!r}, {args.memory_texts}, {args.words}, {args.batch_size}, {args.max_length}"
    code = (f"import json, resource, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import bench_scoring as b; r = b.audit_once({call}); "
            "r['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; print(json.dumps(r))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def audit_once(lora: str, n: int, words: int, batch_size: int, max_length: int) -> dict:
    """One uncached audit of ``lora`` on ``n`` texts (the child process of :func:`memory_audit`)."""
    texts = texts_for(n, words)
    t0 = time.perf_counter()
    out = run_attacks(lora, texts[:n // 2], texts[n // 2:], attacks=["loss", "zlib", "min-k", "min-k++", "ratio"],
                      batch_size=batch_size, max_length=max_length, n_boot=0, cache=False, progress=False)
    return {"seconds": time.perf_counter() - t0, "texts": n,
            "auc": {k: a.metrics["auc"] for k, a in out.attacks.items()}}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def texts_for(n: int, words: int) -> list[str]:
    """``n`` distinct texts of about ``words`` words from the shared PubMed corpus."""
    if not DATA.is_file():
        sys.exit(f"bench_scoring: the shared corpus is missing: {DATA}")
    cut = [" ".join(t.split()[:words]) for t in load_texts(DATA, limit=4 * n)]
    return list(dict.fromkeys(cut))[:n]


PARTS = ("suite", "single", "precision", "memory")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-gpt2", help="tiny-gpt2 | tiny-llama | smollm2-135m | a model dir")
    parser.add_argument("--texts", type=int, default=24, help="members + non-members (half each)")
    parser.add_argument("--words", type=int, default=48, help="words kept per text")
    parser.add_argument("--shots", type=int, default=3, help="ReCall shots")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default="suite,single,precision",
                        help=f"comma-separated, from {', '.join(PARTS)} (memory: a {200}-text LoRA audit, minutes)")
    parser.add_argument("--repeat", type=int, default=3, help="single-pass group runs (the median ratio is kept)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's; 1 is steadier on a shared CPU)")
    parser.add_argument("--lora", help="memory: the LoRA target (default: one trained here on --model)")
    parser.add_argument("--memory-texts", type=int, default=200)
    parser.add_argument("--out", default="/tmp/tuneguard-bench/scoring.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        sys.exit(f"bench_scoring: unknown --parts {', '.join(sorted(parts - set(PARTS)))}")

    if args.model.startswith("tiny-"):
        target, reference = tiny_model(args.model[5:]), tiny_model(args.model[5:], seed=1)
    else:
        target = load_model(args.model)
        reference = LoadedModel(model=target.model, tokenizer=target.tokenizer, ref=target.ref + " (as reference)")
    texts = texts_for(args.texts + 8, args.words)
    members, nonmembers = texts[:args.texts // 2], texts[args.texts // 2:args.texts]
    corpus = texts[args.texts:]  # dc-pdd's token frequencies
    # Each model hooked once (with a real model the reference is the same weights: one hook sees both engines).
    models = {id(m.model): m.model for m in (target, reference)}.values()
    hooked = [(ModelCalls(model), model) for model in models]
    vocab = target.model.get_output_embeddings().weight.shape[0]

    with torch.no_grad():  # warm-up: first calls allocate
        target.model(**target.tokenizer(texts[:2], return_tensors="pt", padding=True))

    result: dict = {"model": target.ref, "texts": args.texts, "words": args.words, "max_length": args.max_length,
                    "batch_size": args.batch_size, "shots": args.shots, "threads": torch.get_num_threads(),
                    "vocab": vocab, "goals": {}}
    if "suite" in parts:
        suite = measure(target, reference, hooked, members, nonmembers, SUITE, corpus, args)
        naive = [measure(target, reference, hooked, members, nonmembers, [name], corpus, args, bare=False)
                 for name in SUITE if name != "ensemble"]
        naive_total = {k: sum(r[k] for r in naive) for k in ("seconds", "forward_passes", "model_seconds", "tokens")}
        result.update(suite=suite, naive={"total": naive_total, "per_attack": naive})
        result["goals"].update(suite_vs_bare_of_its_passes=suite["seconds"] / suite["bare_seconds"],
                               naive_vs_suite_seconds=naive_total["seconds"] / suite["seconds"],
                               naive_vs_suite_passes=naive_total["forward_passes"] / suite["forward_passes"])
    if "single" in parts:
        result["single_pass"] = measure(target, reference, hooked, members, nonmembers, SINGLE_PASS, corpus, args)
        result["single_pass_ratios"] = single_pass_ratios(target, reference, hooked, members, nonmembers, corpus,
                                                          args, args.repeat)
        result["goals"]["single_pass_vs_bare"] = result["single_pass_ratios"]["median"]
    if "precision" in parts:
        result["reduction_ms_per_1000_positions"] = {k: v * 1000 for k, v in reduction_variants(vocab, 256).items()}
        logits, targets = real_logits(target, members[:4])
        result["reduction_deviation"] = {
            "random logits (randn x 3)": reduction_deviation(*(lambda g: (torch.randn(256, vocab, generator=g) * 3,
                                                                           torch.randint(vocab, (256,), generator=g)))(
                torch.Generator().manual_seed(0))),
            f"{target.ref} logits": reduction_deviation(logits, targets)}
        result["batch_dependence"] = batch_dependence(target, members, args.max_length)
    if "memory" in parts:
        result["memory_audit"] = memory_audit(args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print_table(result)
    atomic_write_json(Path(args.out), result)
    print(f"\nwrote {args.out}")
    return 0


def print_table(r: dict) -> None:
    print(f"\nscoring cost: {r['model']}, {r['texts']} texts of {r['words']} words, max_length {r['max_length']}, "
          f"batch {r['batch_size']}, {r['shots']} shots, {r['threads']} threads, vocab {r['vocab']}")
    head = f"{'run':<34}{'passes':>7}{'tokens':>8}{'seconds':>9}{'s/pass':>8}{'model s':>9}{'bare s':>8}{'x bare':>8}"
    print(head)
    print("-" * len(head))

    def row(name, m):
        print(f"{name:<34}{m['forward_passes']:>7}{m['tokens']:>8}{m['seconds']:>9.2f}"
              f"{m['seconds'] / max(m['forward_passes'], 1):>8.3f}{m.get('model_seconds', math.nan):>9.2f}"
              f"{m['bare_seconds']:>8.2f}{m['seconds'] / m['bare_seconds']:>8.2f}")

    if "single_pass" in r:
        row("single-pass group (shared)", r["single_pass"])
    if "suite" in r:
        row("full suite (shared engine)", r["suite"])
        row("naive: one engine per attack", {**r["naive"]["total"], "bare_seconds": math.nan})
        for m in r["naive"]["per_attack"]:
            row(f"  naive {m['attacks'][0]}", m)
    g = r["goals"]
    if "single_pass_vs_bare" in g:
        ratios = ", ".join(f"{x:.3f}" for x in r["single_pass_ratios"]["ratios"])
        print(f"\nsingle-pass group / bare passes: {g['single_pass_vs_bare']:.3f} median of {ratios}  (goal <= 1.10)")
    if "suite_vs_bare_of_its_passes" in g:
        print(f"full suite / bare replay of its passes: {g['suite_vs_bare_of_its_passes']:.2f}  (goal <= 1.20)")
        print(f"naive / suite: {g['naive_vs_suite_seconds']:.2f}x the time, "
              f"{g['naive_vs_suite_passes']:.2f}x the passes")
    if "reduction_ms_per_1000_positions" in r:
        print("\nreduction per 1,000 scored positions (ms):")
        for k, v in r["reduction_ms_per_1000_positions"].items():
            print(f"  {k:<32}{v:>8.1f}")
        print("largest |engine - float64 reference|:")
        for k, d in r["reduction_deviation"].items():
            print(f"  {k:<32}" + "  ".join(f"{name} {v:.1e}" for name, v in d.items()))
        print("largest |Δ| of a text's scores between batch 1, batch 8 and a 1024-token budget: "
              + "  ".join(f"{k} {v:.1e}" for k, v in r["batch_dependence"].items())
              + f"  (documented tolerance {BATCH_TOLERANCE:.0e})")
    if "memory_audit" in r:
        m = r["memory_audit"]
        print(f"\n{m['texts']}-text LoRA audit (loss, zlib, min-k, min-k++, ratio): "
              f"peak RSS {m['peak_rss_mb']:.0f} MB, {m['seconds']:.0f} s")
    print(f"this bench process: peak RSS {r['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    raise SystemExit(main())
