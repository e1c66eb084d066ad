"""Data: load texts from files or `datasets`, clean them, split members / non-members, fit them to a token length."""

from tuneguard.data.cleaning import CleanReport, clean_texts
from tuneguard.data.loading import load_labelled, load_texts
from tuneguard.data.splits import Split, make_split, split_members
from tuneguard.data.tokens import fit_to_length

__all__ = ["CleanReport", "Split", "clean_texts", "fit_to_length", "load_labelled", "load_texts", "make_split",
           "split_members"]
