"""The attack interface: what an attack declares, what it receives, what it returns.

An attack is a :class:`~tuneguard.plugin.Plugin` with a ``name``, the run resources it ``needs``, its declared
``Params`` and ``run(ctx)``. It gets an :class:`AttackContext` holding the evaluation texts and labels, the target's
scoring engine, and whatever it declared (a reference engine, ReCall shots, a token-frequency corpus, the other
attacks' outputs). It returns an :class:`AttackOutput` whose ``scores`` are oriented higher = member, plus the raw
statistic (for comparison with toolkits that use the opposite sign, e.g. MIMIR's loss-like scores).

Adding an attack = one module defining an ``Attack`` subclass + one ``ATTACKS.register`` line in
``tuneguard.attacks``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import numpy as np

from tuneguard.data import fit_to_length
from tuneguard.errors import TuneguardError
from tuneguard.plugin import Plugin

if TYPE_CHECKING:
    from tuneguard.attacks.shadows import ShadowScorer
    from tuneguard.scoring import ScoringEngine, TokenScores

ROUNDING = ("ceil", "floor")  # how k·n becomes a token count: ⌈k·n⌉ (canonical) or ⌊k·n⌋ (MIMIR)


class Pass(NamedTuple):
    """One set of forward passes an attack reads: the model (``target``, ``reference``, or another model the attack
    loads) and what it scores. Attacks reading the same pass share it (the scoring engine's cache serves the later
    ones), so a suite's cost is summed over its distinct passes."""

    model: str
    what: str


# The passes a run shares: every evaluated text once under the target (made before the first attack) and once under
# the reference (made once for every attack that needs a reference).
TARGET_TEXTS = Pass("target", "texts")
REFERENCE_TEXTS = Pass("reference", "texts")
SHARED_PASSES = frozenset({TARGET_TEXTS, REFERENCE_TEXTS})


@dataclass
class AttackOutput:
    """Per evaluated text: ``scores`` (higher = member; NaN where the attack could not score) and ``raw``."""

    scores: np.ndarray
    raw: np.ndarray
    raw_name: str
    note: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class AttackContext:
    """Everything an attack may use. ``results`` holds the outputs of the attacks that ran before it."""

    texts: list[str]
    labels: np.ndarray
    target: ScoringEngine
    reference: ScoringEngine | None = None
    nonmember_shots: list[str] = field(default_factory=list)
    member_shots: list[str] = field(default_factory=list)
    corpus: list[str] | None = None
    shadows: ShadowScorer | None = None
    seed: int = 0
    results: dict[str, AttackOutput] = field(default_factory=dict)
    progress: bool = True

    def target_scores(self) -> list[TokenScores]:
        """The target's token scores of the evaluation texts (one shared, cached pass)."""
        return self.target.score(self.texts, desc="target")

    def reference_scores(self) -> list[TokenScores]:
        """The reference model's token scores of the evaluation texts (one shared, cached pass)."""
        return self.reference.score(self.texts, desc="reference")

    def token_pairs(self, who: str) -> list[tuple[TokenScores, TokenScores]]:
        """(target, reference) token scores per evaluation text, for an attack comparing them token by token.

        Refuses (``who`` names the attack) a text the two models scored as different token ids: a different
        tokenizer, BOS or window is a user mistake here, never something to align by position.
        """
        pairs = list(zip(self.target_scores(), self.reference_scores()))
        bad = [i for i, (t, r) in enumerate(pairs) if not np.array_equal(t.token_ids, r.token_ids)]
        if bad:
            raise TuneguardError(f"{who} compares target and reference token by token, but {self.reference.name} "
                                 f"scored other token ids than {self.target.name} for {len(bad)} of {len(pairs)} "
                                 f"texts (e.g. text {bad[0]}): use a reference with the target's tokenizer")
        return pairs

    def target_ll(self) -> np.ndarray:
        """``LL(x)`` under the target for every evaluation text."""
        return np.array([s.ll for s in self.target_scores()])

    def scored_texts(self) -> list[str]:
        """The evaluation texts as the target scored them: a text the engine truncated is cut at the same token
        boundary (its first ``text_budget`` tokens, decoded), so a statistic of the text (zlib's byte count, its
        length) covers the tokens its log-likelihood covers."""
        out = list(self.texts)
        cut = [i for i, s in enumerate(self.target_scores()) if s.truncated]
        if cut:
            fitted = fit_to_length([out[i] for i in cut], self.target.loaded.tokenizer, self.target.text_budget)
            for i, text in zip(cut, fitted):
                out[i] = text
        return out


class Attack(Plugin):
    """Base class; see the module docstring.

    ``needs``: the run resources the runner must provide, checked before any model loads: ``reference`` (a
    reference model), ``nonmember_shots`` / ``member_shots`` (ReCall shots drawn from the labelled texts),
    ``corpus`` (the run's reference corpus), ``results`` (the outputs of the attacks before it),
    ``same_tokens`` (a reference that scores the target's token ids: checked on the tokenised texts before any pass),
    ``shadows`` (shadow fine-tunes of the target's base on a population the user brings:
    :mod:`tuneguard.attacks.shadows`).
    ``ensemble``: which feature set of the ensemble this attack's score joins: ``"soft"`` (SOFT's features, also in
    the extended set), ``"extended"`` (the extended set only) or None (not a feature).
    ``blind``: the attack never queries the model (a baseline that measures the member/non-member split itself):
    the verdict and every strongest-attack figure leave it out, and its AUC off chance flags a confounded split.
    :meth:`passes` declares the forward passes it reads: an attack forwarding anything beyond the shared passes
    (:data:`SHARED_PASSES`) overrides it, which keeps it out of the ``fast`` suite and prices it in the report.
    """

    kind: ClassVar[str] = "attack"
    needs: ClassVar[frozenset[str]] = frozenset()
    ensemble: ClassVar[str | None] = None
    blind: ClassVar[bool] = False

    def run(self, ctx: AttackContext) -> AttackOutput:
        """Score every text of ``ctx`` (higher = member)."""
        raise NotImplementedError

    def passes(self, n_texts: int) -> dict[Pass, int]:
        """The forward passes this attack reads to score ``n_texts`` evaluated texts, counted as texts forwarded (as
        ``ScoringEngine.forward_passes`` counts them): by default the target's pass of every text and, when it needs
        a reference, the reference's. The keys never depend on ``n_texts``."""
        passes = {TARGET_TEXTS: n_texts}
        if "reference" in self.needs:
            passes[REFERENCE_TEXTS] = n_texts
        return passes

    def reads_shared_passes_only(self) -> bool:
        """Whether every pass this attack reads is one the run shares (the target's and the reference's of each
        text): such an attack costs nothing beside them."""
        return set(self.passes(1)) <= SHARED_PASSES

    def check_needs(self, suite: list[str]) -> None:
        """Refuse, before any model loads, settings this attack cannot run with; ``suite`` = every attack of the run,
        in run order. (The resources in ``needs`` are checked by the runner.)"""

    def attacker_texts(self) -> list[tuple[str, list[str]]]:
        """Texts this attack's parameters bring in, as (what they are, texts): the runner refuses them when they hold
        an evaluated text. The run's corpus (``needs`` "corpus") is checked by the runner itself."""
        return []

    @classmethod
    def ensemble_columns(cls, ctx: AttackContext, out: AttackOutput) -> dict[str, np.ndarray]:
        """This attack's features for the ensemble (name -> one value per text): by default its score."""
        return {cls.name: out.scores}


def token_count(k: float, n: int, rounding: str = "ceil") -> int:
    """⌈k·n⌉ (``rounding="floor"``: ⌊k·n⌋), computed exactly from the decimal value of ``k``.

    Floating point would take 56 tokens for k = 0.55, n = 100 (0.55 * 100 = 55.000000000000007); the fraction
    11/20 times 100 is exactly 55.
    """
    exact = Fraction(repr(float(k))) * n
    return math.ceil(exact) if rounding == "ceil" else math.floor(exact)


def lowest_k_mean(values: np.ndarray, k: float, *, rounding: str = "ceil") -> float:
    """Mean of the lowest ⌈k·n⌉ values (``rounding="floor"``: ⌊k·n⌋, MIMIR's choice); NaN for no values."""
    n = len(values)
    if n == 0:
        return float("nan")
    count = token_count(k, n, rounding)
    if count < 1:
        return float("nan")
    return float(np.sort(values)[:count].mean())
