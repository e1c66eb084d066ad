"""What the MIA suite costs: the shared scoring engine against one-pass-per-attack and against bare forward passes.

    python bench/bench_scoring.py                                    # tiny model, well under 2 minutes
    flock /tmp/tuneguard-cpu.lock python bench/bench_scoring.py --model smollm2-135m --texts 40   # the real figure

Three measurements in one run, on the same texts (PubMed abstracts from ../shared/data, cut to --words words):
- suite: ``run_attacks`` with every attack sharing one engine per model (scores cache off, bootstrap off: only the
  scoring is timed), and the single-pass group (loss, zlib, min-k, min-k++, dc-pdd) on its own;
- naive: each attack alone with a fresh engine, recomputing every pass it needs (the ensemble is left out: it needs
  the others' scores and costs no pass);
- bare: every call the engine made to the model replayed as a plain ``model(**inputs)``, no reduction: the floor
  (for the suite and the single-pass group; the naive runs are not replayed). A ReCall prefix is read once and
  its key/value cache continued by every text behind it; the replay replays those calls as made.
Forward hooks time the model calls inside the engine, so the remainder (log-softmax reductions, tokenisation,
formulas) is reported too, and the float64 reduction is timed against cheaper variants on the same logits' shape.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch

from tuneguard.attacks import resolve_attacks, run_attacks
from tuneguard.data import load_texts
from tuneguard.files import atomic_write_json
from tuneguard.models import LoadedModel, load_model, tiny_model
from tuneguard.scoring.engine import POSITION_BLOCK

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


def reduction_variants(vocab: int, positions: int, repeats: int = 3) -> dict[str, float]:
    """Seconds per 1,000 positions of each way to get lp, mu, sigma from float32 logits (the engine's block size)."""
    logits = torch.randn(positions, vocab) * 3
    targets = torch.randint(vocab, (positions,))

    def current():  # the engine: float64 log_softmax, exp, two-pass variance, the top-1 token and its log-prob
        for s in range(0, positions, POSITION_BLOCK):
            logp = torch.log_softmax(logits[s:s + POSITION_BLOCK].double(), dim=-1)
            p = logp.exp()
            logp.gather(-1, targets[s:s + POSITION_BLOCK, None])
            m1 = (p * logp).sum(-1)
            (p * (logp - m1[:, None]).square()).sum(-1).sqrt()
            logp.max(-1)

    def float32_two_pass():
        for s in range(0, positions, POSITION_BLOCK):
            logp = torch.log_softmax(logits[s:s + POSITION_BLOCK], dim=-1)
            p = logp.exp()
            logp.gather(-1, targets[s:s + POSITION_BLOCK, None])
            m1 = (p * logp).sum(-1)
            (p * (logp - m1[:, None]).square()).sum(-1).sqrt()

    def float32_lp_only():  # what loss / zlib / min-k need: no moments
        for s in range(0, positions, POSITION_BLOCK):
            block = logits[s:s + POSITION_BLOCK]
            block.gather(-1, targets[s:s + POSITION_BLOCK, None])[:, 0] - torch.logsumexp(block, dim=-1)

    out = {}
    for name, fn in (("float64 two-pass (engine)", current), ("float32 two-pass", float32_two_pass),
                     ("float32 log-prob only", float32_lp_only)):
        fn()
        best = min(_timed(fn) for _ in range(repeats))
        out[name] = best / positions * 1000
    return out


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-gpt2", help="tiny-gpt2 | tiny-llama | smollm2-135m | a model dir")
    parser.add_argument("--texts", type=int, default=24, help="members + non-members (half each)")
    parser.add_argument("--words", type=int, default=48, help="words kept per text")
    parser.add_argument("--shots", type=int, default=3, help="ReCall shots")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="/tmp/tuneguard-bench/scoring.json")
    args = parser.parse_args(argv)

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

    with torch.no_grad():  # warm-up: first calls allocate
        target.model(**target.tokenizer(texts[:2], return_tensors="pt", padding=True))

    suite = measure(target, reference, hooked, members, nonmembers, SUITE, corpus, args)
    single = measure(target, reference, hooked, members, nonmembers, SINGLE_PASS, corpus, args)
    naive = [measure(target, reference, hooked, members, nonmembers, [name], corpus, args, bare=False)
             for name in SUITE if name != "ensemble"]
    naive_total = {k: sum(r[k] for r in naive) for k in ("seconds", "forward_passes", "model_seconds", "tokens")}
    vocab = target.model.get_output_embeddings().weight.shape[0]
    reductions = reduction_variants(vocab, 256)

    result = {
        "model": target.ref, "texts": args.texts, "words": args.words, "max_length": args.max_length,
        "batch_size": args.batch_size, "shots": args.shots, "threads": torch.get_num_threads(),
        "suite": suite, "single_pass": single, "naive": {"total": naive_total, "per_attack": naive},
        "goals": {
            "single_pass_vs_bare": single["seconds"] / single["bare_seconds"],
            "suite_vs_bare_of_its_passes": suite["seconds"] / suite["bare_seconds"],
            "naive_vs_suite_seconds": naive_total["seconds"] / suite["seconds"],
            "naive_vs_suite_passes": naive_total["forward_passes"] / suite["forward_passes"],
        },
        "reduction_ms_per_1000_positions": {k: v * 1000 for k, v in reductions.items()},
        "vocab": vocab,
    }
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

    row("single-pass group (shared)", r["single_pass"])
    row("full suite (shared engine)", r["suite"])
    row("naive: one engine per attack", {**r["naive"]["total"], "bare_seconds": math.nan})
    for m in r["naive"]["per_attack"]:
        row(f"  naive {m['attacks'][0]}", m)
    g = r["goals"]
    print(f"\nsingle-pass group / bare passes: {g['single_pass_vs_bare']:.2f}  (goal <= 1.10)")
    print(f"full suite / bare replay of its passes: {g['suite_vs_bare_of_its_passes']:.2f}  (goal <= 1.20)")
    print(f"naive / suite: {g['naive_vs_suite_seconds']:.2f}x the time, {g['naive_vs_suite_passes']:.2f}x the passes")
    print("\nreduction per 1,000 scored positions (ms):")
    for k, v in r["reduction_ms_per_1000_positions"].items():
        print(f"  {k:<28}{v:>8.1f}")


if __name__ == "__main__":
    raise SystemExit(main())
