"""Top-k / temperature sampling driven by one uniform number per row, so each row follows its own seeded stream."""

from __future__ import annotations

import torch


def sample_top_k(logits: torch.Tensor, uniforms: torch.Tensor, *, top_k: int = 50,
                 temperature: float = 1.0) -> torch.Tensor:
    """Draw one token per row of ``logits`` [B, V] by inverting the top-k CDF at ``uniforms`` [B] in [0, 1).

    Drawing with the row's own uniform (instead of ``torch.multinomial`` on the global generator) makes a row's sample
    independent of the other rows in the batch, hence of batching.
    """
    k = min(top_k, logits.shape[-1]) if top_k > 0 else logits.shape[-1]
    values, index = torch.topk(logits.float() / max(temperature, 1e-6), k, dim=-1)
    cdf = torch.softmax(values, dim=-1).cumsum(dim=-1)
    pick = torch.searchsorted(cdf, (uniforms.to(cdf) * cdf[:, -1]).unsqueeze(-1)).clamp_max(k - 1)
    return index.gather(-1, pick).squeeze(-1)
