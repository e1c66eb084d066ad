"""Weight-level detector: the spread of dimension-normalised update norms over everything an adapter trains, read
from the adapter file (and, for full tensors, the base model's weight files) alone.

For each LoRA module, ``n_m = scale * ||B A||_F / sqrt(d_in * d_out)`` is computed through the r x r trace identity
``||B A||_F^2 = trace((B^T B)(A A^T))`` without forming ``B A``; the scale PEFT applies (alpha/r, or alpha/sqrt(r)
with rsLoRA; rank/alpha patterns honoured) is included. For each full tensor the adapter saves that the base model
also holds (``modules_to_save`` copies such as ``lm_head`` or ``embed_tokens``, trained biases), the update is the
delta ``adapter tensor - base tensor``, and ``n_m = ||delta||_F / sqrt(its size)``. ``frob_std`` is the population
standard deviation (ddof = 0) of ``n_m`` over all of them, ``frob_mean`` and ``frob_max`` their mean and maximum; the
``*_lora`` variants are the same over the LoRA pairs only (the statistic as the paper defined it, and as tuneguard
computed ``frob_*`` before calibration format 3).

Invisible to every statistic (listed in ``details["invisible"]`` with the reason): full tensors the base's files do
not hold, so that no delta is defined, such as a classification head (``score``, ``classifier``: initialised at
training time, from a starting point no file records), embedding LoRA (``lora_embedding_A/B``) and DoRA magnitudes;
and tensors whose shape differs from the base's. The base's weights are read with numpy from its safetensors files
when this machine has them (the ``--base`` given, else the base the adapter names: a model directory, an embedded
model, the hub cache; nothing is downloaded). When the adapter saves full tensors and no such files are found, the
all-tensor statistics are NaN, with the reason in ``details["not_measured"]``, and a scan leaves them unjudged; the
``*_lora`` ones never need the base. No model is loaded and nothing is executed (a tiny embedded base, built in code,
is the exception).
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

from tuneguard.adapters.adapter_files import AdapterFiles
from tuneguard.adapters.base_weights import BaseWeights, base_weights
from tuneguard.adapters.detectors.base import Detector, DetectorResult
from tuneguard.adapters.lora_pairs import base_tensor_name, layer_of

if TYPE_CHECKING:
    from tuneguard.adapters.base_models import BaseModels
    from tuneguard.models import LoadedModel

SPREADS = ("frob_std", "frob_mean", "frob_max")
LORA_ONLY = tuple(f"{s}_lora" for s in SPREADS)


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


def full_tensor_norms(adapter: AdapterFiles, base: BaseWeights) -> tuple[list[dict], dict[str, str]]:
    """(records of the full tensors whose delta from ``base`` can be measured, as ``module_norms``'s; the others,
    tensor -> why not). One tensor and its base counterpart are in memory at a time."""
    rows, invisible = [], {}
    measurable = {}
    for key in adapter.full_tensors:
        name = base_tensor_name(key)
        held = base.name_of(name)
        shape = adapter.header[key].shape
        if held is None:
            invisible[key] = f"the base model has no tensor {name} to take a delta from"
        elif base.header[held].shape != shape:
            invisible[key] = f"shape {list(shape)} differs from the base's {list(base.header[held].shape)}"
        else:
            measurable[key] = (name, held)
    for key, values in adapter.iter_tensors(list(measurable)):
        name, held = measurable[key]
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite weights are the scan's findings
            frob = float(np.linalg.norm((values.astype(np.float64) - base.tensor(held)).ravel()))
        module = name.rsplit(".", 1)[0]
        d_out = int(values.shape[0]) if values.ndim > 1 else 1
        rows.append({"module": module, "layer": layer_of(module), "kind": module.rsplit(".", 1)[-1], "rank": None,
                     "scale": 1.0, "d_in": int(values.size) // d_out, "d_out": d_out, "frobenius": frob,
                     "norm": frob / values.size**0.5, "tensor": key, "base_tensor": held})
    return rows, invisible


def _spreads(norms: np.ndarray, suffix: str = "") -> dict[str, float]:
    with np.errstate(invalid="ignore"):  # inf norms give a NaN spread, which the scan never judges clean
        return {f"frob_std{suffix}": float(norms.std(ddof=0)), f"frob_mean{suffix}": float(norms.mean()),
                f"frob_max{suffix}": float(norms.max())}


def _profile(rows: list[dict], key: str) -> dict:
    groups: dict = defaultdict(list)
    for r in rows:
        groups[r[key]].append(r["norm"])
    return {str(k): float(np.mean(v)) for k, v in sorted(groups.items(), key=lambda kv: (kv[0] is None, str(kv[0])))}


class WeightDetector(Detector):
    """``frob_std`` (and mean / max) of the normalised update norms over LoRA pairs and the full tensors whose delta
    from the base can be measured; ``*_lora`` over the LoRA pairs only. Its direction differs between bases, so
    calibrate."""

    name = "weights"
    summary = ("spread of the scaled, dimension-normalised update norms (LoRA pairs and full-tensor deltas from the "
               "base), read from the files (no model)")
    statistics = (*SPREADS, *LORA_ONLY)
    default_statistic = "frob_std"
    default_direction = "two-sided"  # the sign flips between base models; learn it from poisoned adapters when possible
    reads_base = True

    def __init__(self, base: str | BaseModels | LoadedModel | None = None, *, progress: bool = False,
                 **params) -> None:
        """``base``: whose weight files the full tensors' deltas are taken from (default: the base each adapter
        names); only its reference is used, never a loaded model."""
        super().__init__(progress=progress, **params)
        self.base_ref = base if base is None or isinstance(base, str) else base.ref

    def score(self, adapter: AdapterFiles) -> DetectorResult:
        """Statistics plus per-module and per-layer profiles and the tensors the statistic cannot see."""
        rows = module_norms(adapter)
        lora = np.array([r["norm"] for r in rows])
        stats, details = _spreads(lora, "_lora"), {}
        if not adapter.full_tensors:  # nothing beyond the pairs: no base needed
            stats |= _spreads(lora)
            invisible, source = {}, None
        else:
            ref = self.base_ref or adapter.base_model
            base = base_weights(ref) if ref else "the adapter names no base model; pass --base"
            if isinstance(base, str):
                why = f"{len(adapter.full_tensors)} full tensor(s) need the base model's weights: {base}"
                stats |= dict.fromkeys(SPREADS, float("nan"))
                details["not_measured"] = dict.fromkeys(SPREADS, why)
                invisible, source = dict.fromkeys(adapter.full_tensors, why), None
            else:
                full, invisible = full_tensor_norms(adapter, base)
                rows += full
                stats |= _spreads(np.array([r["norm"] for r in rows]))
                source = base.source
        details |= {
            "scale_applied": "alpha/sqrt(r) (rsLoRA)" if adapter.use_rslora else "alpha/r",
            "base_weights": source,
            "modules": rows,
            "per_layer": _profile(rows, "layer"),
            "per_kind": _profile(rows, "kind"),
            "invisible": invisible,
            "not_loaded": dict(adapter.unloaded),
        }
        return DetectorResult(self.name, str(adapter.path), {s: stats[s] for s in self.statistics}, details)
