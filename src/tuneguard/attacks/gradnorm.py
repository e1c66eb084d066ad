"""Gradient norm (white-box; MIMIR's ``mimir/attacks/gradnorm.py``): members sit at a minimum of the loss.

Per text, one forward and one backward pass (batch 1, eval mode, gradients on): ``L`` = the mean NLL of the tokens
the scoring engine scores (same tokens, same window), ``G`` = the mean over the parameter tensors with a gradient of
``||dL/dθ_k||_p`` (p = inf by default; 1 and 2 offered). The score is ``-G`` (higher = member) and ``G`` is the raw
statistic. MIMIR's own pipeline ranks a large G as member, which looks inverted (its issue #27: AUC 0.32 where loss
has 0.83). For a PEFT target only the adapter's tensors get gradients (``tensors="auto"``); the note says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tuneguard.attacks.base import Attack, AttackContext, AttackOutput, Pass
from tuneguard.params import Params, param

NORMS = (1, 2, "inf")
TENSORS = ("auto", "all")


def chosen_tensors(model, tensors: str) -> tuple[list[str], str]:
    """(names of the parameters whose gradient is measured, what they are): for ``auto`` and a PEFT model the
    adapter's tensors (those holding the active adapter's name as a path component), else every parameter."""
    names = [n for n, _ in model.named_parameters()]
    adapter = getattr(model, "active_adapter", None)
    if tensors == "auto" and isinstance(adapter, str) and hasattr(model, "peft_config"):
        own = [n for n in names if f".{adapter}." in f".{n}."]
        if own:
            return own, f"the {adapter!r} adapter's tensors"
    return names, "every parameter tensor"


@dataclass
class GradNormParams(Params):
    p: Any = param("inf", "the norm of each tensor's gradient: 1, 2 or inf", choices=NORMS)
    tensors: str = param("auto", "auto: the adapter's tensors for a PEFT target, else every parameter; all: every "
                                 "parameter, the frozen base's too", choices=TENSORS)


class GradNormAttack(Attack):
    """One forward + backward pass per text, outside the scoring engine (its cache holds no gradients): the cost
    is reported as the attack's own."""

    name = "gradnorm"
    summary = "-G: minus the mean p-norm of the loss gradient over the parameter tensors"
    ensemble = "extended"
    Params = GradNormParams

    def run(self, ctx: AttackContext) -> AttackOutput:
        import torch

        loaded, engine = ctx.target.loaded, ctx.target
        model = loaded.model
        order = float("inf") if self.params.p == "inf" else float(self.params.p)
        names, what = chosen_tensors(model, self.params.tensors)
        chosen = set(names)
        params = [t for n, t in model.named_parameters() if n in chosen]
        flags = {n: t.requires_grad for n, t in model.named_parameters()}
        training = model.training
        norms = np.full(len(ctx.texts), np.nan)
        with_grad: set[int] = set()
        model.eval()
        try:
            for n, t in model.named_parameters():
                t.requires_grad_(n in chosen)
            with torch.enable_grad():
                for i, text in enumerate(ctx.texts):
                    ids, first, _ = engine.encode(text)
                    if len(ids) <= first:
                        continue
                    x = torch.tensor([ids], device=loaded.device)
                    # Prompt-learning adapters prepend virtual tokens' logits: keep the inputs' positions.
                    logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -len(ids):]
                    logp = torch.log_softmax(logits[first - 1:-1].float(), dim=-1)
                    loss = -logp.gather(-1, x[0, first:, None]).mean()
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                    used = [j for j, g in enumerate(grads) if g is not None]
                    with_grad.update(used)
                    norms[i] = float(torch.stack([grads[j].norm(order) for j in used]).double().mean())
        finally:
            for n, t in model.named_parameters():
                t.requires_grad_(flags[n])
            model.train(training)
        n_texts = int(np.isfinite(norms).sum())
        tensors = [names[j] for j in sorted(with_grad)]
        note = (f"G over the {len(tensors)} tensors with a gradient ({what}), p = {self.params.p}; score = -G "
                "(MIMIR's pipeline ranks large G as member)")
        return AttackOutput(scores=-norms, raw=norms, raw_name=f"G = mean_k ||dL/dθ_k||_{self.params.p}", note=note,
                            extra={"tensors": tensors,
                                   "cost": {"forward_passes": n_texts, "backward_passes": n_texts}})

    def passes(self, n_texts: int) -> dict[Pass, int]:
        return {Pass("target", "texts, each with a backward pass (outside the scoring engine)"): n_texts}
