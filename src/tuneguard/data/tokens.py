"""Fit texts to a token budget: truncate each, or pack all into equal blocks."""

from __future__ import annotations

from tuneguard.errors import TuneguardError


def fit_to_length(texts: list[str], tokenizer, max_tokens: int, *, mode: str = "truncate") -> list[str]:
    """Return texts of at most ``max_tokens`` tokens.

    ``truncate`` keeps the first ``max_tokens`` tokens of each text; ``pack`` joins all texts (separated by the eos
    token) and cuts the stream into blocks of exactly ``max_tokens`` tokens (the last partial block is dropped).
    """
    if max_tokens < 1:
        raise TuneguardError(f"max tokens must be positive, got {max_tokens}")
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    if mode == "truncate":
        return [t if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])
                for t, ids in zip(texts, encoded)]
    if mode == "pack":
        sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        stream = [tok for ids in encoded for tok in ids + sep]
        blocks = [stream[i:i + max_tokens] for i in range(0, len(stream) - max_tokens + 1, max_tokens)]
        if not blocks:
            raise TuneguardError(f"all texts together hold {len(stream)} tokens, fewer than one block of {max_tokens}")
        return [tokenizer.decode(b) for b in blocks]
    raise TuneguardError(f"unknown length mode {mode!r}: use 'truncate' or 'pack'")
