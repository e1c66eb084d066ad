"""Weight-level detector: the spread of dimension-normalised LoRA update norms, read from the adapter file alone.

For each LoRA module, ``n_m = scale * ||B A||_F / sqrt(d_in * d_out)`` is computed through the r x r trace identity
``||B A||_F^2 = trace((B^T B)(A A^T))`` without forming ``B A``; ``frob_std`` is the population standard deviation of
``n_m`` over modules. The scale PEFT applies (alpha/r, or alpha/sqrt(r) with rsLoRA; rank/alpha patterns honoured) is
included. No model is loaded and nothing is executed.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from tuneguard.adapters.adapter_files import AdapterFiles
from tuneguard.adapters.detectors.base import Detector, DetectorResult


def lora_frobenius(a: np.ndarray, b: np.ndarray) -> float:
    """``||B A||_F`` via ``trace((B^T B)(A A^T))``: O(r^2 (d_in + d_out)) instead of O(r d_in d_out)."""
    # float64 throughout: the Gram products of large finite float32 weights would overflow to inf in float32.
    a = a.reshape(a.shape[0], -1).astype(np.float64, copy=False)
    b = b.reshape(b.shape[0], -1).astype(np.float64, copy=False)
    # Both Gram matrices are symmetric, so the trace of their product is their element-wise product summed. Weights
    # too large even for float64's squares (or NaN/inf) give a non-finite norm without a warning: the scan reports
    # them as findings (AdapterFiles.non_finite) and never judges a non-finite statistic clean.
    with np.errstate(over="ignore", invalid="ignore"):
        sq = float(np.sum((b.T @ b) * (a @ a.T)))
    return max(sq, 0.0) ** 0.5


def module_norms(adapter: AdapterFiles) -> list[dict]:
    """Per-module records of the pairs that would load: name, layer, rank, scale, d_in, d_out, frobenius (scaled)
    and the normalised norm. One module's tensors are in memory at a time."""
    rows = []
    stream = adapter.iter_tensors([k for p in adapter.pairs for k in (p.a_key, p.b_key)])
    for pair, (_, a), (_, b) in zip(adapter.pairs, stream, stream):
        d_in, d_out = int(np.prod(a.shape[1:])), int(b.shape[0])
        scale = adapter.scale(pair)
        frob = scale * lora_frobenius(a, b)
        rows.append({
            "module": pair.module, "layer": pair.layer, "kind": pair.module.rsplit(".", 1)[-1], "rank": pair.rank,
            "scale": scale, "d_in": d_in, "d_out": d_out, "frobenius": frob, "norm": frob / (d_in * d_out) ** 0.5,
        })
    return rows


def _profile(rows: list[dict], key: str) -> dict:
    groups: dict = defaultdict(list)
    for r in rows:
        groups[r[key]].append(r["norm"])
    return {str(k): float(np.mean(v)) for k, v in sorted(groups.items(), key=lambda kv: (kv[0] is None, str(kv[0])))}


class WeightDetector(Detector):
    """``frob_std`` (and mean / max) of the normalised LoRA norms; its direction differs between bases, so calibrate."""

    name = "weights"
    summary = "spread of the scaled, dimension-normalised LoRA update norms, read from the adapter file (no model)"
    statistics = ("frob_std", "frob_mean", "frob_max")
    default_statistic = "frob_std"
    default_direction = "two-sided"  # the sign flips between base models; learn it from poisoned adapters when possible

    def score(self, adapter: AdapterFiles) -> DetectorResult:
        """Statistics plus per-module and per-layer profiles and the tensors the statistic cannot see."""
        rows = module_norms(adapter)
        norms = np.array([r["norm"] for r in rows])
        with np.errstate(invalid="ignore"):  # inf norms give a NaN spread, which the scan never judges clean
            stats = {"frob_std": float(norms.std(ddof=0)), "frob_mean": float(norms.mean()),
                     "frob_max": float(norms.max())}
        details = {
            "scale_applied": "alpha/sqrt(r) (rsLoRA)" if adapter.use_rslora else "alpha/r",
            "modules": rows,
            "per_layer": _profile(rows, "layer"),
            "per_kind": _profile(rows, "kind"),
            "invisible": adapter.invisible_tensors(),
            "not_loaded": dict(adapter.unloaded),
        }
        return DetectorResult(self.name, str(adapter.path), stats, details)
