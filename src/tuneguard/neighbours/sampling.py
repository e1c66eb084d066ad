"""Top-k / nucleus / temperature sampling driven by one uniform number per row, so each row follows its own seeded
stream."""

from __future__ import annotations

import torch


def sample_tokens(logits: torch.Tensor, uniforms: torch.Tensor, *, top_k: int = 0, top_p: float = 1.0,
                  temperature: float = 1.0) -> torch.Tensor:
    """Draw one token per row of ``logits`` [B, V] by inverting the CDF of the top-k (0: all) tokens, cut to the
    nucleus of mass ``top_p``, at ``uniforms`` [B] in [0, 1).

    Drawing with the row's own uniform (instead of ``torch.multinomial`` on the global generator) makes a row's sample
    independent of the other rows in the batch, hence of batching.
    """
    vocab = logits.shape[-1]
    k = min(top_k, vocab) if top_k > 0 else vocab
    scaled = logits.float() / max(temperature, 1e-6)
    # Most likely first (a full sort is faster than topk over the whole vocabulary).
    values, index = torch.topk(scaled, k, dim=-1) if k < vocab else torch.sort(scaled, dim=-1, descending=True)
    probs = torch.softmax(values, dim=-1)
    if top_p < 1:  # the nucleus: each token whose more likely tokens hold less than top_p of the mass
        probs = probs * ((probs.cumsum(dim=-1) - probs) < top_p)
    cdf = probs.cumsum(dim=-1)
    pick = torch.searchsorted(cdf, (uniforms.to(cdf) * cdf[:, -1]).unsqueeze(-1)).clamp_max(k - 1)
    return index.gather(-1, pick).squeeze(-1)
