"""Scoring throughput on a GPU: tuneguard's engine against a bare batched forward and a MIMIR-style loop.

    python bench/gpu_bench.py                                   # one H200: about 6 minutes, all three sizes
    python bench/gpu_bench.py --sizes 135m --texts 40 --lengths 128-256 --device cpu   # a CPU check of the bench

Randomly initialised Llama models with the shapes of SmolLM2-135M (its vocabulary widened to GPT-2's, the texts'
tokenizer), Llama-3.2-1B and Llama-3.1-8B (no weights downloaded), and seeded texts of random tokens (``--lengths`` tokens each). Per size, in one run on the same texts:
- floor: a bare batched forward in the model's dtype over the texts sorted by length, nothing reduced;
- single-pass suite: ``run_attacks`` with loss, zlib, min-k and min-k++ (one shared pass, cache off);
- full suite: the default suite (``all``) with a reference model of the same shape (ratio, EZ-MIA, ReCall, ...);
- MIMIR-style: batch 1, one forward pass per attack and model it needs (the target's pass recomputed by each
  attack, ReCall's prefix read again for every text), on the first ``--loop-texts`` texts;
tokens/s count each evaluated text's own tokens once; ratios are against the floor and the MIMIR-style loop of the
same run; the peak is ``torch.cuda.max_memory_allocated`` of each stage.
"""

from __future__ import annotations

import argparse
import inspect
import random
import sys
import time

import torch

from tuneguard.attacks import resolve_attacks, run_attacks
from tuneguard.files import atomic_write_json
from tuneguard.models import LoadedModel
from tuneguard.models.device import dtype_name, resolve_device
from tuneguard.models.embedded import gpt2_tokenizer

# Published shapes (config.json of each model); the weights are random.
SHAPES = {
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0),
}
NAMES = {"135m": "SmolLM2-135M", "1b": "Llama-3.2-1B", "8b": "Llama-3.1-8B"}
# Texts per size that keep one H200 run of all three under 8 minutes (the full suite reads each text ~6 times).
DEFAULT_TEXTS = {"135m": 2000, "1b": 2000, "8b": 800}
SINGLE_PASS = ["loss", "zlib", "min-k", "min-k++"]
# What a MIMIR-style loop forwards per text for each attack: (model, input) pairs.
LOOP_PASSES = {"loss": ["t"], "zlib": ["t"], "min-k": ["t"], "min-k++": ["t"], "lowercase": ["t", "t:lower"],
               "ratio": ["t", "r"], "ez-mia": ["t", "r"], "wbc": ["t", "r"], "ht-mia": ["t", "r"],
               "recall": ["t", "t:non"], "con-recall": ["t", "t:mem", "t:non"], "bag-of-words": [], "ensemble": []}


def build(size: str, seed: int, device: torch.device, dtype: torch.dtype, tokenizer) -> LoadedModel:
    """A random model of ``size``'s shape, built in place in ``dtype`` (no float32 copy)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    # SmolLM2's 49,152-token vocabulary is widened to GPT-2's 50,257, the tokenizer the texts are made with.
    shape = {**SHAPES[size], "vocab_size": max(SHAPES[size]["vocab_size"], len(tokenizer))}
    config = LlamaConfig(**shape, max_position_embeddings=8192, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, ref=f"random {NAMES[size]} (seed {seed})")


def make_texts(n: int, lengths: tuple[int, int], tokenizer, seed: int) -> list[str]:
    """``n`` seeded texts decoded from random GPT-2 token ids of ``lengths`` tokens (re-encoding changes the count a
    little: the tokens actually scored are counted)."""
    rng = random.Random(seed)
    return [tokenizer.decode([rng.randrange(256, 50000) for _ in range(rng.randint(*lengths))]) for _ in range(n)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stage(device: torch.device, fn) -> tuple[float, float | None, object]:
    """Seconds and peak GPU memory (GiB) of ``fn()``."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 1024 ** 3 if device.type == "cuda" else None
    return seconds, peak, out


@torch.no_grad()
def floor(model: LoadedModel, ids: list[list[int]], batch_size: int) -> None:
    """Batched forward passes over length-sorted texts, logits computed and dropped."""
    pad, dev = model.tokenizer.pad_token_id, model.device
    ordered = sorted(ids, key=len)
    for s in range(0, len(ordered), batch_size):
        batch = ordered[s:s + batch_size]
        width = max(map(len, batch))
        x = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(x)
        for row, seq in enumerate(batch):
            x[row, :len(seq)], mask[row, :len(seq)] = torch.tensor(seq), 1
        model.model(input_ids=x.to(dev), attention_mask=mask.to(dev))


@torch.no_grad()
def mimir_loop(target: LoadedModel, reference: LoadedModel, texts: list[str], attacks: list[str],
               shots: dict[str, str]) -> int:
    """Batch 1, one forward pass per (attack, model) with its own log-softmax statistic; returns the passes."""
    tok, passes = target.tokenizer, 0
    for text in texts:
        for attack in attacks:
            for spec in LOOP_PASSES[attack]:
                who, _, variant = spec.partition(":")
                model = target if who == "t" else reference
                body = text.lower() if variant == "lower" else text
                prefix = shots.get(variant, "")
                ids = torch.tensor([tok(prefix + body)["input_ids"][-4096:]], device=model.device)
                logits = model.model(input_ids=ids).logits[0, :-1].float()
                torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).mean().item()
                passes += 1
    return passes


def bench_size(size: str, args, device: torch.device, dtype: torch.dtype) -> dict:
    tok = gpt2_tokenizer()
    n = args.texts or DEFAULT_TEXTS[size]
    texts = make_texts(n, args.lengths, tok, args.seed)
    members, nonmembers = texts[:n // 2], texts[n // 2:]
    target = build(size, 0, device, dtype, tok)
    ids = [tok(t)["input_ids"] for t in texts]
    tokens = sum(map(len, ids))
    batching = {"batch_size": args.batch_size}
    if "batch_tokens" in inspect.signature(run_attacks).parameters:  # the engine's token budget, where it exists
        batching["batch_tokens"] = args.batch_tokens
    common = dict(n_boot=0, cache=False, progress=False, n_shots=args.shots, seed=args.seed, **batching)
    floor(target, ids[:2], 2)  # warm-up: kernels and allocator
    out: dict = {"model": NAMES[size], "texts": n, "tokens": tokens, **batching}

    def record(name: str, seconds: float, peak: float | None, scored_tokens: int, **extra) -> None:
        out[name] = {"seconds": round(seconds, 3), "tokens_per_second": round(scored_tokens / seconds, 1),
                     "peak_gib": None if peak is None else round(peak, 2), **extra}
        print(f"{NAMES[size]} {name}: {seconds:.1f} s", file=sys.stderr)

    record("floor", *stage(device, lambda: floor(target, ids, args.batch_size))[:2], tokens)
    seconds, peak, res = stage(device, lambda: run_attacks(target, members, nonmembers, attacks=SINGLE_PASS,
                                                           **common))
    record("single_pass", seconds, peak, tokens, passes=sum(res.cost["forward_passes"].values()))
    reference = build(size, 1, device, dtype, tok)
    full = resolve_attacks("all")
    seconds, peak, res = stage(device, lambda: run_attacks(target, members, nonmembers, attacks=full,
                                                           reference=reference, **common))
    evaluated = res.settings["evaluated"]  # ReCall's shots leave the evaluation
    record("full_suite", seconds, peak, tokens * evaluated // n, passes=sum(res.cost["forward_passes"].values()))
    rng = random.Random(args.seed)
    shots = {"non": " ".join(rng.sample(nonmembers, args.shots)) + " ",
             "mem": " ".join(rng.sample(members, args.shots)) + " "}
    loop = texts[:min(args.loop_texts, n)]
    loop_tokens = sum(len(i) for i in ids[:len(loop)])
    for name, attacks in (("mimir_single_pass", SINGLE_PASS), ("mimir_full_suite", full)):
        seconds, peak, passes = stage(device, lambda: mimir_loop(target, reference, loop, attacks, shots))
        record(name, seconds, peak, loop_tokens, passes=passes, texts=len(loop))
    tps = {k: out[k]["tokens_per_second"] for k in ("floor", "single_pass", "full_suite", "mimir_single_pass",
                                                    "mimir_full_suite")}
    out["ratios"] = {"single_pass_vs_floor": round(tps["single_pass"] / tps["floor"], 3),
                     "full_suite_vs_floor": round(tps["full_suite"] / tps["floor"], 3),
                     "single_pass_vs_mimir": round(tps["single_pass"] / tps["mimir_single_pass"], 2),
                     "full_suite_vs_mimir": round(tps["full_suite"] / tps["mimir_full_suite"], 2)}
    del target, reference
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def table(results: list[dict]) -> str:
    rows = [("model", "texts", "stage", "tokens/s", "seconds", "peak GiB", "vs floor", "vs MIMIR")]
    for r in results:
        for name in ("floor", "single_pass", "full_suite", "mimir_single_pass", "mimir_full_suite"):
            s = r[name]
            vs_floor = s["tokens_per_second"] / r["floor"]["tokens_per_second"]
            mimir = {"single_pass": "single_pass_vs_mimir", "full_suite": "full_suite_vs_mimir"}.get(name)
            rows.append((r["model"], str(s.get("texts", r["texts"])), name, f"{s['tokens_per_second']:,.0f}",
                         f"{s['seconds']:.1f}", "-" if s["peak_gib"] is None else f"{s['peak_gib']:.1f}",
                         f"{vs_floor:.2f}x", f"{r['ratios'][mimir]:.1f}x" if mimir else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="135m,1b,8b", help="comma-separated, from 135m, 1b, 8b")
    parser.add_argument("--texts", type=int, help=f"texts per size (default: {DEFAULT_TEXTS})")
    parser.add_argument("--lengths", default="128-512", help="tokens per text, MIN-MAX; default: %(default)s")
    parser.add_argument("--loop-texts", type=int, default=100, help="texts of the MIMIR-style loop")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batch-tokens", type=int, default=16384, help="the engine's token budget, if it has one")
    parser.add_argument("--shots", type=int, default=7, help="ReCall shots")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="/tmp/tuneguard-bench/gpu.json")
    args = parser.parse_args(argv)
    low, _, high = args.lengths.partition("-")
    args.lengths = (int(low), int(high or low))
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if unknown := [s for s in sizes if s not in SHAPES]:
        sys.exit(f"gpu_bench: unknown size {unknown[0]!r}: use {', '.join(SHAPES)}")
    device, dtype = resolve_device(args.device, args.dtype)
    results = []
    for size in sizes:
        results.append(bench_size(size, args, device, dtype))
    info = {"device": str(device), "dtype": dtype_name(dtype), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "lengths": list(args.lengths), "shots": args.shots, "seed": args.seed}
    print(f"{info['gpu'] or device} in {info['dtype']}, texts of {args.lengths[0]}-{args.lengths[1]} random tokens")
    print(table(results))
    atomic_write_json(args.out, {**info, "results": results})
    print(f"json: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
