"""Goldfish loss (Hans et al., NeurIPS 2024, "Be like a Goldfish, Don't Memorize!"): leave a pseudo-random 1/k of
the tokens out of the training loss, so no passage is ever learnt verbatim in full.

The hashed mask: token t (0-based position in the text) is dropped when a hash of the h tokens before it,
x_{t-h..t-1}, is 0 mod k. The decision depends on that context only, so a passage repeated in the data (at any
offset, in any text, in any batch) always drops the same tokens: seeing it again never fills the gaps. A position with
fewer than h preceding tokens (the first h tokens of a text, or a context that reaches into padding) is never dropped:
its context would otherwise depend on where the text starts. Texts of at most h tokens are therefore learnt whole.

The authors' code (``apply_goldfish``, strategy "hash-table") hashes the dropped token itself with the h - 1 tokens
before it, x_{t-h+1..t}: its window is ours shifted one token to the right. Both first drop position h (their windows
run over the shifted targets, which start at x_1), both drop about 1/k of the tokens and both always drop the same
tokens of a repeated passage. They differ in what a decision depends on: theirs on the token predicted, so one
context followed by different tokens gets independent decisions; ours on the context alone, so every token that
follows one h-token context is dropped, or kept, alike.

The hash is fixed (not Python's salted ``hash``) and vectorised: a polynomial hash of the window modulo the prime
2^31 - 1 (int64 arithmetic that never overflows), then a 32-bit integer finaliser so that windows differing in one
token get unrelated decisions. It is the same on every device and every run. The authors hash with a seeded random
table instead, so even with their window the dropped tokens would differ; the rate (about 1/k) and the repeat
property are the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tuneguard.params import Params, param

if TYPE_CHECKING:  # declaring the settings (a regime's options, `tuneguard run --help`) loads no torch
    import torch

_PRIME = 2_147_483_647  # 2^31 - 1: a window hash times the base stays below 2^62
_BASE = 1_000_003
_MIX = 0x45D9F3B  # the multiplier of the well-known 32-bit integer hash finaliser (below 2^27: no int64 overflow)
_LOW32 = 0xFFFFFFFF


@dataclass
class GoldfishConfig(Params):
    """The Goldfish loss settings: drop one token in ``k``, decided by the hash of the ``h`` tokens before it."""

    k: int = param(4, "drop one token in k from the loss (k = 4 in the paper)", ge=2)
    h: int = param(13, "preceding tokens hashed to decide whether a token is dropped (h = 13 in the paper)", ge=1)


def goldfish_mask(input_ids: torch.Tensor, k: int = 4, h: int = 13,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bool tensor shaped like ``input_ids`` ((batch, length) or (length,)): True where the token is dropped.

    ``attention_mask`` (1 = a real token) keeps padding out: a padded position is never dropped, nor is a token
    whose h-token context reaches into padding (left padding), so each decision depends on real tokens only.
    """
    import torch

    ids = input_ids.long()
    single = ids.ndim == 1
    if single:
        ids = ids[None]
    length = ids.shape[1]
    drop = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
    if length > h:
        n = length - h  # positions h..length-1 have h tokens before them
        acc = torch.zeros((ids.shape[0], n), dtype=torch.long, device=ids.device)
        for j in range(h):  # window of position h+i is ids[i : i+h]
            acc = (acc * _BASE + ids[:, j:j + n] % _PRIME) % _PRIME
        drop[:, h:] = _finalise(acc) % k == 0
        if attention_mask is not None:
            real = attention_mask.bool()
            if single:
                real = real[None]
            context_real = torch.ones((ids.shape[0], n), dtype=torch.bool, device=ids.device)
            for j in range(h):
                context_real &= real[:, j:j + n]
            drop[:, h:] &= context_real & real[:, h:]
    return drop[0] if single else drop


def goldfish_labels(batch: dict[str, torch.Tensor], config: GoldfishConfig) -> torch.Tensor:
    """The batch's labels with the dropped tokens set to IGNORE.

    Labels are aligned with ``input_ids`` before the causal shift (the model predicts ``labels[t]`` from the tokens
    before t), so ``labels[t] = IGNORE`` leaves token t's prediction out of the loss.
    """
    from tuneguard.train.batching import IGNORE

    drop = goldfish_mask(batch["input_ids"], config.k, config.h, batch.get("attention_mask"))
    return batch["labels"].masked_fill(drop, IGNORE)


def _finalise(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xor-shift, multiply, twice) in int64: every value stays below 2^59."""
    x = (((x >> 16) ^ x) * _MIX) & _LOW32
    x = (((x >> 16) ^ x) * _MIX) & _LOW32
    return (x >> 16) ^ x
