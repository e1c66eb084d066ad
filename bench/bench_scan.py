"""Scan speed of the weight detector: adapters per second and peak memory, against the naive baseline in the same run.

    python bench/bench_scan.py               # 12 synthetic SmolLM2-135M LoRA adapters (r=16, 7 projections x 30 layers)
    python bench/bench_scan.py --n 4 --rank 8

Ours: `WeightDetector().score(read_adapter(dir))` (header parsed without torch, tensors memory-mapped, norms by the
r x r trace identity in float64). Baseline: what a user would write first: `safetensors.numpy.load_file` of the
whole file, then `np.linalg.norm(B @ A)` per module (the d_out x d_in product formed in float32). Both compute the same
frob_std (agreement printed). The methods alternate per repeat and the median time is kept; peak memory is the
tracemalloc peak (numpy allocations included) of one scan of the whole directory; memory-mapped file pages
are the OS page cache, not allocations, and are not counted. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from tuneguard.adapters import find_adapters, read_adapter
from tuneguard.adapters.detectors.weights import WeightDetector
from tuneguard.adapters.synthetic import write_synthetic_adapter


def scan_ours(dirs: list[Path]) -> list[float]:
    det = WeightDetector()
    return [det.score(read_adapter(d)).statistics["frob_std"] for d in dirs]


def scan_naive(dirs: list[Path]) -> list[float]:
    out = []
    for d in dirs:
        cfg = json.loads((d / "adapter_config.json").read_text())
        tensors = load_file(str(d / "adapter_model.safetensors"))
        scale = cfg["lora_alpha"] / cfg["r"]
        norms = []
        for key, a in tensors.items():
            if ".lora_A." in key:
                b = tensors[key.replace(".lora_A.", ".lora_B.")]
                norms.append(scale * float(np.linalg.norm(b @ a)) / np.sqrt(a.shape[1] * b.shape[0]))
        out.append(float(np.std(norms)))
    return out


def measure(fn, dirs: list[Path]) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    result = fn(dirs)
    return time.perf_counter() - t0, result


def peak_memory(fn, dirs: list[Path]) -> int:
    tracemalloc.start()
    fn(dirs)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=12, help="number of synthetic adapters")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="/tmp/tuneguard-bench/bench_scan.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.n):
            write_synthetic_adapter(Path(tmp) / f"adapter-{i:02d}", r=args.rank, alpha=args.rank, seed=i)
        dirs = find_adapters([tmp])
        size_mb = sum((d / "adapter_model.safetensors").stat().st_size for d in dirs) / 2**20
        scan_ours(dirs[:1]), scan_naive(dirs[:1])  # warm imports and the page cache for both
        times: dict[str, list[float]] = {"tuneguard": [], "naive": []}
        results = {}
        for _ in range(args.repeats):
            for name, fn in (("tuneguard", scan_ours), ("naive", scan_naive)):
                seconds, results[name] = measure(fn, dirs)
                times[name].append(seconds)
        peaks = {"tuneguard": peak_memory(scan_ours, dirs), "naive": peak_memory(scan_naive, dirs)}

    agree = float(np.max(np.abs(np.array(results["tuneguard"]) - results["naive"]) / np.array(results["naive"])))
    rows = {}
    for name in times:
        median = statistics.median(times[name])
        rows[name] = {"seconds": round(median, 4), "adapters_per_second": round(len(dirs) / median, 2),
                      "peak_memory_mb": round(peaks[name] / 2**20, 2)}
    speedup = rows["naive"]["seconds"] / rows["tuneguard"]["seconds"]
    memory_ratio = rows["naive"]["peak_memory_mb"] / rows["tuneguard"]["peak_memory_mb"]
    print(f"{len(dirs)} adapters, rank {args.rank}, 210 LoRA modules each, {size_mb:.0f} MB of safetensors")
    print(f"{'method':10s} {'seconds':>8s} {'adapters/s':>11s} {'peak MB':>8s}")
    for name, r in rows.items():
        print(f"{name:10s} {r['seconds']:8.3f} {r['adapters_per_second']:11.2f} {r['peak_memory_mb']:8.1f}")
    print(f"speed-up x{speedup:.1f}, peak memory / {memory_ratio:.1f}; frob_std max relative difference {agree:.1e}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n_adapters": len(dirs), "rank": args.rank, "total_mb": round(size_mb, 1),
                               "repeats": args.repeats, "methods": rows, "speedup": round(speedup, 2),
                               "memory_ratio": round(memory_ratio, 2), "max_relative_difference": agree}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
