"""The ensemble over the extended features as a row of its own, so ``all`` reports it beside SOFT's ensemble.

``ensemble`` with ``features=extended`` under another name: a classifier over every model-based score (SOFT's
features, and EZ-MIA, WBC and the hard-token comparison against the reference model), out of fold. ``all`` runs
both: SOFT's ensemble keeps its features for the paper's table, and this row shows what the target-vs-reference
scores add. Its threat model is the ensemble's: the attacker holds labelled members and non-members (each fold is
scored by a classifier fit on the other folds' labels). ``fast`` runs ``ensemble`` with these features already.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneguard.attacks.ensemble import FEATURE_SETS, THREAT_MODEL, EnsembleAttack, EnsembleParams
from tuneguard.params import param


@dataclass
class EnsembleExtendedParams(EnsembleParams):
    features: str = param("extended", "extended: every model-based score; soft: SOFT's features, each once",
                          choices=tuple(FEATURE_SETS))


class EnsembleExtendedAttack(EnsembleAttack):
    name = "ensemble-extended"
    summary = f"classifier over every model-based score (EZ-MIA, WBC, HT-MIA too), out-of-fold; threat model: " \
              f"{THREAT_MODEL}"
    Params = EnsembleExtendedParams
