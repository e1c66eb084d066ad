"""zlib (Carlini et al. 2021): log-likelihood calibrated by the text's zlib-compressed size."""

import zlib
from dataclasses import dataclass

import numpy as np

from tuneguard.attacks.base import Attack, AttackContext, AttackOutput
from tuneguard.params import Params, param


def zlib_bytes(text: str) -> int:
    """Length in bytes of the zlib-compressed UTF-8 text."""
    return len(zlib.compress(text.encode("utf-8")))


@dataclass
class ZlibParams(Params):
    form: str = param("canonical", "canonical: LL / zlib bytes; ratio (SOFT's code): -NLL / (zlib bytes / chars)",
                      choices=("canonical", "ratio"))


class ZlibAttack(Attack):
    """x is the text as scored: when the engine truncated it, zlib's byte count and its length cover the same
    tokens as LL(x)."""

    name = "zlib"
    summary = "LL(x) / zlib bytes of x"
    ensemble = "soft"
    Params = ZlibParams

    def run(self, ctx: AttackContext) -> AttackOutput:
        ll = ctx.target_ll()
        texts = ctx.scored_texts()  # the span LL covers, not the whole text when it was truncated
        size = np.array([zlib_bytes(t) for t in texts], dtype=float)
        if self.params.form == "canonical":
            return AttackOutput(scores=ll / size, raw=-ll / size, raw_name="NLL / zlib bytes")
        scores = ll / (size / np.array([len(t) for t in texts], dtype=float))
        return AttackOutput(scores=scores, raw=-scores, raw_name="NLL / (zlib bytes / chars)",
                            note="zlib-ratio form (SOFT's code), not the canonical one")
