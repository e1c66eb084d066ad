"""DC-PDD (Zhang et al. 2024): token probabilities calibrated by their frequency in a reference corpus."""

from collections import Counter
from dataclasses import dataclass

import numpy as np

from tuneguard.attacks.base import Attack, AttackContext, AttackOutput
from tuneguard.errors import TuneguardError
from tuneguard.params import Params, param


@dataclass
class DCPDDParams(Params):
    clip: float = param(0.01, "upper clip of each token's calibrated probability", gt=0)


class DCPDDAttack(Attack):
    """For each token at its first occurrence in x: ``a = min(p · log(1/f), clip)``, f the Laplace-smoothed corpus
    frequency ``(count + 1) / (total + |V|)``; score = mean a."""

    name = "dc-pdd"
    summary = "frequency-calibrated token probabilities (needs a reference corpus)"
    needs = frozenset({"corpus"})
    ensemble = "extended"
    Params = DCPDDParams

    def run(self, ctx: AttackContext) -> AttackOutput:
        if not ctx.corpus:
            raise TuneguardError("dc-pdd needs a reference corpus for token frequencies: pass --corpus FILE")
        counts: Counter[int] = Counter()
        for text in ctx.corpus:
            counts.update(ctx.target.tokenize(text))
        total, vocab = sum(counts.values()), len(ctx.target.loaded.tokenizer)
        scores = []
        for s in ctx.target_scores():
            _, first = np.unique(s.token_ids, return_index=True)
            first.sort()
            if len(first) == 0:
                scores.append(float("nan"))
                continue
            freq = np.array([(counts[int(t)] + 1) / (total + vocab) for t in s.token_ids[first]])
            a = np.minimum(np.exp(s.logprobs[first]) * -np.log(freq), self.params.clip)
            scores.append(float(a.mean()))
        scores = np.array(scores)
        return AttackOutput(scores=scores, raw=scores, raw_name="mean calibrated prob",
                            extra={"corpus_tokens": total})
