"""zlib (Carlini et al. 2021): log-likelihood calibrated by the text's zlib-compressed size."""

import zlib

import numpy as np

from tuneguard.attacks.base import Attack, AttackContext, AttackOutput
from tuneguard.errors import TuneguardError


def zlib_bytes(text: str) -> int:
    """Length in bytes of the zlib-compressed UTF-8 text."""
    return len(zlib.compress(text.encode("utf-8")))


class ZlibAttack(Attack):
    """``form="canonical"``: LL / zlib_bytes. ``form="ratio"`` (SOFT's code): -NLL / (zlib_bytes / len(x))."""

    name = "zlib"
    defaults = {"form": "canonical"}
    summary = "LL(x) / zlib bytes of x"

    def run(self, ctx: AttackContext) -> AttackOutput:
        ll = ctx.target_ll()
        size = np.array([zlib_bytes(t) for t in ctx.texts], dtype=float)
        if self.params["form"] == "canonical":
            return AttackOutput(scores=ll / size, raw=-ll / size, raw_name="NLL / zlib bytes")
        if self.params["form"] == "ratio":
            scores = ll / (size / np.array([len(t) for t in ctx.texts], dtype=float))
            return AttackOutput(scores=scores, raw=-scores, raw_name="NLL / (zlib bytes / chars)",
                                note="zlib-ratio form (SOFT's code), not the canonical one")
        raise TuneguardError(f"zlib form must be 'canonical' or 'ratio', got {self.params['form']!r}")


ATTACK = ZlibAttack
