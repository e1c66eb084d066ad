"""Turn examples into token ids and labels, and group them into length-sorted batches to avoid padding waste."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

import torch

from tuneguard.errors import TuneguardError

IGNORE = -100  # label value the loss skips


@dataclass
class Encoded:
    """One training example: token ids and per-token labels (or one class label)."""

    input_ids: list[int]
    labels: list[int] | int


def examples_digest(examples: list) -> str:
    """sha256 of the training examples, recorded in the run record."""
    return hashlib.sha256(json.dumps(examples, ensure_ascii=False).encode("utf-8")).hexdigest()


def encode_examples(examples: list, tokenizer, max_length: int, *, seq_cls: bool = False) -> list[Encoded]:
    """Encode texts (loss on every token), (prompt, completion) pairs (loss on the completion only), or, with
    ``seq_cls``, (text, class) pairs. Texts are truncated to ``max_length`` tokens; a prompt is cut from its start so
    its completion always fits."""
    if not examples:
        raise TuneguardError("no training examples")
    encoded = []
    for i, ex in enumerate(examples):
        if isinstance(ex, str):
            ids = tokenizer(ex, truncation=True, max_length=max_length)["input_ids"]
            encoded.append(Encoded(ids, list(ids)))
        elif seq_cls and isinstance(ex, (tuple, list)) and len(ex) == 2 and isinstance(ex[1], int):
            ids = tokenizer(ex[0], truncation=True, max_length=max_length)["input_ids"]
            encoded.append(Encoded(ids, ex[1]))
        elif isinstance(ex, (tuple, list)) and len(ex) == 2 and all(isinstance(x, str) for x in ex):
            prompt = tokenizer(ex[0])["input_ids"]
            completion = tokenizer(ex[1], add_special_tokens=False)["input_ids"]
            if len(completion) >= max_length:
                raise TuneguardError(f"example {i + 1}: the completion alone has {len(completion)} tokens, more than "
                                     f"max length {max_length}")
            prompt = prompt[len(prompt) + len(completion) - max_length:] if len(prompt) + len(completion) > max_length \
                else prompt
            encoded.append(Encoded(prompt + completion, [IGNORE] * len(prompt) + completion))
        else:
            kind = "(text, class) pairs" if seq_cls else "texts or (prompt, completion) pairs"
            raise TuneguardError(f"example {i + 1} is a {type(ex).__name__}; expected {kind}")
        if not encoded[-1].input_ids:
            raise TuneguardError(f"example {i + 1} is empty after tokenisation")
    return encoded


def length_grouped_batches(lengths: list[int], batch_size: int, *, seed: int, epoch: int,
                           group: bool = True) -> list[list[int]]:
    """Indices in batches for one epoch, deterministic in (seed, epoch).

    With ``group``, indices are shuffled, cut into mega-batches of 50 batches, each sorted by length so a batch holds
    similar lengths; the batch order is then shuffled so lengths do not trend through the epoch.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group:
        mega = batch_size * 50
        order = [i for k in range(0, len(order), mega)
                 for i in sorted(order[k:k + mega], key=lambda i: -lengths[i])]
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    if group:
        rng.shuffle(batches)
    return batches


def collate(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padded positions get attention 0 and label IGNORE."""
    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    seq_cls = isinstance(items[0].labels, int)
    labels = torch.tensor([e.labels for e in items]) if seq_cls else torch.full((len(items), width), IGNORE)
    for row, e in enumerate(items):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        mask[row, :n] = 1
        if not seq_cls:
            labels[row, :n] = torch.tensor(e.labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
