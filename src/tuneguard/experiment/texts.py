"""An experiment's texts: a dataset's cleaned texts, its seeded member / non-member draw, and the DC-PDD corpus."""

from __future__ import annotations

import random

from tuneguard.data import clean_texts, load_texts
from tuneguard.errors import TuneguardError
from tuneguard.experiment.schema import Dataset


def dataset_texts(ds: Dataset) -> list[str]:
    """Every text of ``ds`` once cleaned."""
    return clean_texts(load_texts(ds.path, column=ds.column), name=ds.name).texts


def corpus_texts(path: str) -> list[str]:
    """The token-frequency corpus file's texts, cleaned."""
    return clean_texts(load_texts(path), name=path).texts


def draw_texts(ds: Dataset, seed: int) -> tuple[list[str], list[str]]:
    """The seeded member / non-member draw of one dataset."""
    texts = dataset_texts(ds)
    need = ds.members + ds.nonmembers
    if len(texts) < need:
        raise TuneguardError(f"dataset {ds.name} has {len(texts)} texts, fewer than the {need} asked for")
    picked = random.Random(seed).sample(texts, need)
    return picked[:ds.members], picked[ds.members:]
