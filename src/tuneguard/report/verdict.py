"""The verdict a membership-inference report opens with: does the model leak, how badly, and by which attack.

At each FPR level α the results can measure (at least 1/α non-members), the *strongest attack* is the one with the
highest TPR@α (ties: the higher CI lower bound, then the higher AUC). Only attacks that query the model count: a
blind baseline (an attack declaring :attr:`~tuneguard.attacks.base.Attack.blind`, such as bag-of-words) measures the
split, not the model, and an attack that does not apply here (``AttackResult.not_applicable``) measures nothing.
Guessing gives TPR = α, AUC = 0.5.

Levels, judged on the 95% bootstrap CI lower bounds of every model attack ("with 95% confidence"; the point
estimates when the run drew no bootstrap):

- **strong leak**: at some α an attack's TPR lower bound reaches min(10·α, 50%) (ten times what guessing finds, or
  half the members: e.g. 50% at 10% FPR, 10% at 1% FPR), or an attack's AUC lower bound reaches 0.8;
- **some leak**: at some α an attack's TPR lower bound is above α (better than guessing), or an attack's AUC lower
  bound is above 0.5;
- **no measurable leak**: neither. With few records the CIs are wide: this says the leak was not measured, not that
  there is none.

The sentence quotes the evidence behind the level (the lowest FPR at which it shows, the surest attack there; the
AUC when only the AUC shows it). Any of several attacks counting, and the strongest picked after seeing the results,
lean optimistic: the verdict is a screening result, and the table beside it has every attack. Attacks a suite left out
for want of a reference model (``settings["left_out"]``) are named: without them the verdict may understate the leak.
When a blind baseline tells members from non-members (a confounded split, :func:`confounding_warning`) the verdict
says so before anything else.
"""

from __future__ import annotations

import textwrap
from dataclasses import asdict, dataclass, field

from tuneguard.attacks import ATTACKS
from tuneguard.attacks.result import AttackResult, MIAResult
from tuneguard.privacy_target import pct

# A model-free classifier this far from chance means members and non-members differ in distribution.
CHANCE_BAND = (0.4, 0.6)
STRONG_TPR_FACTOR = 10  # strong: TPR lower bound >= min(10·α, STRONG_TPR_CAP)
STRONG_TPR_CAP = 0.5
STRONG_AUC = 0.8
LEVELS = {"strong": "strong leak", "some": "some leak", "none": "no measurable leak",
          "unmeasured": "nothing measured"}
LEVELS_TEXT = (f"Levels (95% CI lower bounds of any model attack; guessing gives TPR = FPR): strong = the TPR at some "
               f"FPR α reaches min({STRONG_TPR_FACTOR}·α, {STRONG_TPR_CAP:.0%}) or the AUC reaches {STRONG_AUC}; "
               "some = the TPR at some α is above α or the AUC is above 0.5; no measurable leak = neither. Blind "
               "baselines (bag-of-words: they never query the model) and attacks that do not apply never count.")


@dataclass
class Leader:
    """The strongest model attack at one FPR level (or by AUC, ``fpr`` None): its figure and 95% CI."""

    attack: str
    value: float
    ci: list[float] | None
    fpr: float | None = None

    @property
    def low(self) -> float:
        """The CI's lower bound, or the figure itself without a bootstrap."""
        return self.ci[0] if self.ci else self.value


@dataclass
class Verdict:
    """The level (``strong``, ``some``, ``none``, ``unmeasured``), its label, one plain sentence, the strongest
    attack at each FPR and by AUC, the confounding warning (or None) and caveats."""

    level: str
    label: str
    sentence: str
    strongest: list[Leader] = field(default_factory=list)
    best_auc: Leader | None = None
    confounded: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def headline(self) -> str:
        if self.confounded:
            return f"Verdict: not reliable, the split is confounded (measured: {self.label})"
        return f"Verdict: {self.label}"

    def figures(self) -> list[str]:
        """One line per FPR level (and AUC): the strongest attack and its figure with the CI."""
        lines = [f"at {pct(b.fpr)} FPR: {b.attack}, TPR {pct(b.value)}{_ci_pct(b.ci)}" for b in self.strongest]
        if self.best_auc:
            lines.append(f"by AUC: {self.best_auc.attack}, {self.best_auc.value:.3f}{_ci_auc(self.best_auc.ci)}")
        return lines

    def lines(self, width: int = 110) -> list[str]:
        """The terminal block: headline, confounding first, the sentence, the figures, caveats and the levels."""
        def para(text: str, indent: str = "  ") -> list[str]:
            return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent + "  ")

        out = [self.headline]
        if self.confounded:
            out += para(f"WARNING, confounded split: {self.confounded}")
        out += para(self.sentence)
        if self.strongest or self.best_auc:
            out.append("  Strongest attack:")
            out += [f"    {line}" for line in self.figures()]
        for note in [*self.notes, LEVELS_TEXT]:
            out += para(note)
        return out

    def to_json(self) -> dict:
        return {"level": self.level, "label": self.label, "sentence": self.sentence,
                "strongest": [asdict(b) for b in self.strongest],
                "best_auc": asdict(self.best_auc) if self.best_auc else None,
                "confounded": self.confounded is not None, "notes": self.notes}


def is_blind(name: str) -> bool:
    """Whether the attack registered as ``name`` declares itself blind (:attr:`Attack.blind`: it never queries the
    model). Read from the attack's class in the registry (its module is imported, as the HTML report's parameter
    table imports it); a name this version does not register (a result saved by another) is not blind."""
    return name in ATTACKS and ATTACKS.get(name).blind


def model_attacks(result: MIAResult) -> dict[str, AttackResult]:
    """The attacks whose figures say something about the model: neither a blind baseline nor not applicable."""
    return {n: a for n, a in result.attacks.items() if not a.not_applicable and not is_blind(n)}


def confounding_warning(result: MIAResult) -> str | None:
    """The warning to show when a blind baseline beats chance, else None.

    Fires when a blind attack's AUC (the first such, in run order) lies outside [0.4, 0.6] and its CI (when there is
    one) excludes 0.5.
    """
    for name, blind in result.attacks.items():
        if not is_blind(name):
            continue
        auc, ci = blind.metrics["auc"], blind.metrics.get("auc_ci")
        if CHANCE_BAND[0] <= auc <= CHANCE_BAND[1] or (ci is not None and ci[0] <= 0.5 <= ci[1]):
            continue
        return (f"The blind {name} baseline, which never queries the model, tells members from non-members "
                f"with AUC {auc_text(blind.metrics)}. The member/non-member split is distribution-shifted "
                "(confounded): the other attacks' figures partly measure that shift, not what the model memorised. "
                "Draw members and non-members from one distribution (e.g. a random split of one corpus).")
    return None


def mia_verdict(result: MIAResult) -> Verdict:
    """Judge ``result`` by the levels of this module's docstring."""
    attacks = model_attacks(result)
    confounded = confounding_warning(result)
    if not attacks:
        why = "every attack that queries the model was left out or does not apply here"
        return Verdict("unmeasured", LEVELS["unmeasured"], f"Nothing is measured about the model: {why}.",
                       confounded=confounded)
    strongest = [b for b in (_leader(attacks, float(k)) for k in _fpr_keys(attacks)) if b is not None]
    tprs = [Leader(n, t, a.metrics["tpr_ci"].get(k), float(k)) for n, a in attacks.items()
            for k, t in a.metrics["tpr"].items() if t is not None]
    aucs = [Leader(n, a.auc, a.metrics.get("auc_ci")) for n, a in attacks.items()]
    best_auc = max(aucs, key=lambda b: (b.value, b.low))
    surest_auc = max(aucs, key=lambda b: (b.low, b.value))
    # The evidence, lowest FPR first and within one FPR the surest (highest lower bound) first.
    strong = sorted((b for b in tprs if b.low >= min(STRONG_TPR_FACTOR * b.fpr, STRONG_TPR_CAP)),
                    key=lambda b: (b.fpr, -b.low))
    beats = sorted((b for b in tprs if b.low > b.fpr), key=lambda b: (b.fpr, -b.low))
    if strong or surest_auc.low >= STRONG_AUC:
        level = "strong"
    elif beats or surest_auc.low > 0.5:
        level = "some"
    else:
        level = "none"
    n_mem, n_non = (max(a.metrics[k] for a in attacks.values()) for k in ("n_members", "n_nonmembers"))
    # The sentence gives the evidence behind the level: the lowest FPR where the TPR shows the leak (a strong one
    # first); the AUC when only the AUC shows it; for no measurable leak, the highest FPR (the AUC without one).
    shown = (strong or beats or ([] if level != "none" else strongest[::-1]) or [None])[0]
    notes = []
    if not any(a.metrics.get("auc_ci") for a in attacks.values()):
        notes.append("No bootstrap CIs (the run drew none): the levels use the point estimates.")
    if len(attacks) > 1:
        notes.append(f"The best of {len(attacks)} attacks is picked after the fact, so its figure leans optimistic.")
    left_out = result.settings.get("left_out")
    if left_out:
        notes.append(f"Without a reference model {', '.join(left_out)} did not run; they are usually the strongest "
                     "against a fine-tuned model, so this verdict may understate the leak.")
    sentence = _sentence(level, shown, best_auc if level == "none" else surest_auc, n_mem, n_non)
    return Verdict(level, LEVELS[level], sentence, strongest, best_auc, confounded, notes)


def auc_text(metrics: dict) -> str:
    """An AUC with its CI, as the tables print it: ``0.712 [0.601, 0.815]``."""
    return f"{metrics['auc']:.3f}{_ci_auc(metrics.get('auc_ci'))}"


def _fpr_keys(attacks: dict[str, AttackResult]) -> list[str]:
    keys = {k for a in attacks.values() for k, v in a.metrics["tpr"].items() if v is not None}
    return sorted(keys, key=float)


def _leader(attacks: dict[str, AttackResult], fpr: float) -> Leader | None:
    candidates = [Leader(n, t, a.metrics["tpr_ci"].get(f"{fpr:g}"), fpr) for n, a in attacks.items()
                  if (t := a.tpr(fpr)) is not None]
    if not candidates:
        return None
    return max(candidates, key=lambda b: (b.value, b.low, attacks[b.attack].auc))


def _sentence(level: str, shown: Leader | None, auc: Leader, n_mem: int, n_non: int) -> str:
    """One plain sentence: what an attacker holding the evaluated records achieves, against guessing."""
    who = f"an attacker who holds {n_mem + n_non} candidate records ({n_mem} of them from your training data)"
    leak = level != "none"
    if shown is None:
        attack = auc.attack
        does = (f"{'can rank' if leak else 'ranks'} a record you trained on above one you did not "
                f"{pct(auc.value)} of the time (AUC {auc.value:.3f}{_ci_auc(auc.ci)}), where guessing does so 50% "
                "of the time")
    else:
        attack = shown.attack
        does = (f"{'can pick' if leak else 'picks'} out {pct(shown.value)}{_ci_pct(shown.ci, ' (95% CI ', ')')} of "
                f"the ones you trained on while wrongly accusing {pct(shown.fpr)} of the others, where guessing picks "
                f"out {pct(shown.fpr)}")
    if not leak:
        return f"No attack does measurably better than guessing: {who} and uses the strongest, {attack}, {does}."
    return f"{who[0].upper()}{who[1:]} and uses {attack} {does}."


def _ci_pct(ci: list[float] | None, before: str = " [", after: str = "]") -> str:
    return f"{before}{pct(ci[0])}-{pct(ci[1])}{after}" if ci else ""


def _ci_auc(ci: list[float] | None) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
