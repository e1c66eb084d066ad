"""Records at risk: the evaluated members ranked by how exposed they are across the model attacks.

Per model attack (:func:`tuneguard.report.verdict.model_attacks`: neither the blind baseline nor one that does not
apply), each member's score is ranked among the evaluated members: 1 = the highest score, the most exposed; ties
share their average rank; a member the attack could not score has no rank there. A member's ``aggregate`` is the
mean of its ranks over the attacks that scored it (lower = more exposed). ``flagged_by`` counts the attacks whose
FPR-10% threshold it reaches: the canonical operating point of their TPR@10% (at most 10% of the non-members score as
high), so for each attack the flagged share of the members is its TPR@10%; attacks with too few non-members to
measure that FPR (under 10) are not counted, and it is None when none can. Rows run from the most exposed: by
aggregate, then ``flagged_by`` (more first), then index.

The rows hold excerpts of the user's own texts: they are written only into the report's output directory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tuneguard.attacks.result import MIAResult
from tuneguard.report.verdict import model_attacks

FLAG_FPR = 0.1
EXCERPT_CHARS = 100


@dataclass(frozen=True)
class Members:
    """The member texts given to the run, in that order (for excerpts), and where they came from.

    ``rows``: each text's 0-based record index in the user's file (default: its position in ``texts``); ``file``:
    that file's name, for the report to say what the index counts.
    """

    texts: Sequence[str]
    rows: Sequence[int] | None = None
    file: str | None = None


def exposure_rows(result: MIAResult, members: Members | None = None) -> list[dict]:
    """One row per evaluated member, most exposed first (see the module docstring).

    Keys: ``rank`` (1 = most exposed), ``index`` (the record in the user's file, or in the members given; None for
    a result saved without ``origin``), ``aggregate``, ``flagged_by``, ``attacks`` (how many ranked it),
    ``scores`` and ``ranks`` per attack, ``excerpt`` (None without ``members``).
    """
    attacks = model_attacks(result)
    if not attacks:
        return []
    labels = next(iter(attacks.values())).labels
    is_member = np.asarray(labels) == 1
    origin = np.asarray(result.origin, dtype=int) if len(result.origin) == len(labels) else None
    scores = {n: np.asarray(a.scores, dtype=float)[is_member] for n, a in attacks.items()}
    ranks = {n: _ranks(s) for n, s in scores.items()}
    flags = {n: _flags(np.asarray(a.scores, dtype=float), labels) for n, a in attacks.items()
             if a.tpr(FLAG_FPR) is not None}
    rows = []
    for j, i in enumerate(np.flatnonzero(is_member)):
        member = int(origin[i]) if origin is not None else None
        own = {n: float(r[j]) for n, r in ranks.items() if math.isfinite(r[j])}
        rows.append({
            "index": _index(member, members),
            "aggregate": round(sum(own.values()) / len(own), 3) if own else None,
            "flagged_by": sum(bool(f[i]) for f in flags.values()) if flags else None,
            "attacks": len(own),
            "scores": {n: _number(s[j]) for n, s in scores.items()},
            "ranks": {n: own.get(n) for n in attacks},
            "excerpt": excerpt(members.texts[member]) if members and member is not None else None})
    rows.sort(key=lambda r: (math.inf if r["aggregate"] is None else r["aggregate"], -(r["flagged_by"] or 0),
                             math.inf if r["index"] is None else r["index"]))
    return [{"rank": k, **row} for k, row in enumerate(rows, 1)]


def excerpt(text: str, chars: int = EXCERPT_CHARS) -> str:
    """The text's start on one line, cut at ``chars`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= chars else flat[:chars - 1].rstrip() + "…"


def _index(member: int | None, members: Members | None) -> int | None:
    if member is None or members is None or members.rows is None:
        return member
    return int(members.rows[member])


def _ranks(scores: np.ndarray) -> np.ndarray:
    """1 = the highest score; tied scores share their average rank; non-finite scores get NaN."""
    out = np.full(len(scores), np.nan)
    finite = np.isfinite(scores)
    s = np.sort(scores[finite])
    above = np.searchsorted(s, scores[finite], side="right")
    ties = above - np.searchsorted(s, scores[finite], side="left")
    out[finite] = (len(s) - above) + (ties + 1) / 2
    return out


def _flags(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per text: whether it reaches the attack's FPR-10% threshold (at most ⌊0.1·n⌋ of the n non-members score
    as high, as the canonical TPR@FPR rule counts)."""
    finite = np.isfinite(scores)
    non = np.sort(scores[(np.asarray(labels) == 0) & finite])
    allowed = math.floor(FLAG_FPR * len(non) + 1e-9)
    as_high = len(non) - np.searchsorted(non, scores, side="left")  # non-members scoring >= each score
    return finite & (as_high <= allowed)


def _number(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None
