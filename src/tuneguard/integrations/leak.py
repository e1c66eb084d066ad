"""The membership leak of a model while it trains: :class:`LeakMonitor`.

One fixed, seeded sample of the training members and as many held-out non-members is attacked at every check by the
attacks that read nothing but one forward pass per text under the model being trained (the target) and one under
its base (the reference): loss, Min-K%++, ratio, EZ-MIA, WBC by default (:func:`live_attacks` lists every such
attack). The sample never changes, so the points of the curve are comparable. Each point also holds the sampled
non-members' perplexity under the model (held-out utility, from the scores the check already has).

The reference is scored once, when the monitor starts, and its scores kept: its weights do not change while the
model trains. It is the ``reference`` given, else, for a PEFT model, the same model with its adapter disabled
(peft's ``disable_adapter()``: no second copy of the weights), else the model itself before its first step (no
frozen copy is kept either; a run resumed past step 0 must name its base).

Cost: ``2 × n`` forward passes per check (the n sampled members and n non-members under the model being trained)
and ``2 × n`` once at the start under the reference; no backward pass, no second copy of the weights. The target is
scored by a fresh :class:`~tuneguard.scoring.ScoringEngine` at each check with the disk cache off: its weights
change between checks, so no score of an earlier check (or of another run) can be read for it.

Several processes (``accelerate launch``, torchrun; DDP, not FSDP / ZeRO-3, whose sharded weights the monitor
cannot forward alone): every process runs each check on the same sample, the engine shares the forward passes out
between them and gives every process every score, so every process reaches the same stop decision with no message
beyond the engine's own. Only the main process (``main``) writes files and logs.
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from tuneguard.attacks import make_attacks
from tuneguard.attacks.base import AttackContext
from tuneguard.cache import key_hash
from tuneguard.data import make_split
from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_write_json, check_output, read_json
from tuneguard.metrics import alpha_key, evaluate
from tuneguard.models import LoadedModel
from tuneguard.privacy_target import Target, parse_target
from tuneguard.scoring import ScoringEngine, main_process
from tuneguard.scoring.engine import check_batching
from tuneguard.scoring.perplexity import perplexity

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_ATTACKS = ("loss", "min-k++", "ratio", "ez-mia", "wbc")
WATCHED_FPR = 0.1  # TPR is always reported at 10% FPR, which 10 non-members can measure
CURVE, PLOT = "leak.json", "leak.png"
# What decides the points of a curve: a resumed run keeps the saved points only when all of it matches. Not the
# reference's name: a resumed full fine-tuning run names its base, which the first run scored as "the model before
# training".
_CURVE_KEYS = ("attacks", "sample", "seed", "max_length", "texts")


def live_attacks() -> tuple[str, ...]:
    """The attacks a check can run: those of the ``fast`` suite (by their declared passes: one pass per text under
    the target and one under the reference) that score each text alone, so not the blind baseline nor the ensemble
    (both fit on labelled scores: nothing a check should fit anew each time). Imports every attack."""
    from tuneguard.attacks import ATTACKS, fast_attacks

    return tuple(n for n in fast_attacks() if not ATTACKS.get(n).blind and "results" not in ATTACKS.get(n).needs)


class LeakMonitor:
    """The leak of a training model at each :meth:`check`; see the module docstring.

    ``members``: texts the model trains on; ``nonmembers``: held-out texts of the same distribution. ``sample``
    of each (fewer when fewer are given; as many non-members as members) are drawn once with ``seed``.
    ``budget``: ``"tpr@10%<=0.2"`` or ``"auc<=0.6"`` on the strongest attack (:func:`parse_target`);
    :attr:`exceeded` turns True at the first check beyond it, and the caller stops training. ``reference``: a
    loaded model, a model name (loaded at :meth:`start` on the model's device) or a module sharing the model's
    tokenizer. ``out``: where ``leak.json`` (the curve, rewritten atomically after each check) and ``leak.png`` go.
    ``max_length``: tokens scored per text (default: the model's context; give the training window).
    """

    def __init__(self, members: Sequence[str], nonmembers: Sequence[str], *, sample: int = 128,
                 budget: str | Target | None = None, reference: LoadedModel | str | torch.nn.Module | None = None,
                 attacks: str | Sequence[str] = DEFAULT_ATTACKS, out: str | Path | None = None, seed: int = 0,
                 max_length: int | None = None, batch_size: int = 8) -> None:
        self.attacks = make_attacks(attacks if isinstance(attacks, str) else list(attacks))
        live = live_attacks()
        extra = [name for name in self.attacks if name not in live]
        if extra:
            raise TuneguardError(f"attack(s) {', '.join(extra)} need more than one pass per text under the model and "
                                 f"its base, or labels: while training, choose from {', '.join(live)}")
        check_batching(batch_size, None)
        if max_length is not None and max_length < 2:
            raise TuneguardError(f"the leak's scoring window (max_length) must be at least 2 tokens, got {max_length}")
        self.budget = parse_target(budget) if isinstance(budget, str) else budget
        split = make_split(list(members), list(nonmembers))
        n = min(sample, len(split.members), len(split.nonmembers))
        if n < 2:
            raise TuneguardError(f"watching the leak needs at least 2 members and 2 non-members in the sample (given "
                                 f"{len(split.members)} and {len(split.nonmembers)}, sample {sample}): add texts")
        rng = random.Random(seed)
        self.texts = rng.sample(split.members, n) + rng.sample(split.nonmembers, n)
        self.labels = np.array([1] * n + [0] * n)
        self.reference = reference
        self.out = check_output(out) if out is not None else None
        self.seed, self.max_length, self.batch_size = seed, max_length, batch_size
        self.main = main_process()
        self.points: list[dict[str, Any]] = []
        self.checkpoints: dict[int, Path] = {}  # step -> checkpoint directory, as the training loop saves them
        self.settings: dict[str, Any] = {"attacks": list(self.attacks), "sample": n, "seed": seed,
                                         "max_length": max_length, "texts": key_hash(*self.texts), "reference": None,
                                         "budget": self.budget.text if self.budget else None}
        self.tokenizer: Any = None
        self._reference: ScoringEngine | None = None
        self._reference_passes = 0
        if self.budget is not None and n < self.budget.nonmembers_needed:
            log.warning("the leak budget %s needs at least %d sampled non-members to be measured and the sample has %d:"
                        " it will never stop training; raise sample= (with as many non-members) or budget on the AUC",
                        self.budget.text, self.budget.nonmembers_needed, n)

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has scored the reference (checks can run)."""
        return self._reference is not None

    @property
    def fprs(self) -> tuple[float, ...]:
        """The FPR levels TPR is reported at: 10%, and the budget's when it is another."""
        extra = (self.budget.fpr,) if self.budget is not None and self.budget.metric == "tpr" else ()
        return tuple(sorted({WATCHED_FPR, *extra}))

    def start(self, model: torch.nn.Module, tokenizer: Any, *, step: int = 0) -> None:
        """Score the sample under the reference (see the module docstring), before the first check. ``step``: the
        optimizer steps the run has already taken (a resumed run keeps the curve it drew up to there)."""
        if getattr(tokenizer, "pad_token_id", None) is None:
            raise TuneguardError("the leak monitor needs the model's tokenizer with a pad token: pass it, and set "
                                 "tokenizer.pad_token = tokenizer.eos_token if it has none")
        self.tokenizer = tokenizer
        reference, scope = self._reference_model(model, step)
        engine = self._engine(reference)
        with evaluating(reference.model), scope:
            engine.score(self.texts, desc="reference")
        self._reference, self._reference_passes = engine, engine.forward_passes
        self.settings["reference"] = reference.ref
        self._resume(step)
        if self.main:
            log.info("watching the leak of %d members and %d non-members with %s against %s: %d forward passes now, "
                     "%d per check", len(self.texts) // 2, len(self.texts) // 2, ", ".join(self.attacks),
                     reference.ref, len(self.texts), len(self.texts))

    def check(self, model: torch.nn.Module, *, step: int, epoch: float | None = None) -> dict[str, Any]:
        """Attack the sample under ``model`` as it is now; return the curve's new point (main process: also write
        the curve). The model is in eval mode without gradients meanwhile, its modules' modes restored after."""
        if not self.started:
            raise TuneguardError("the leak monitor checked before it started: call start(model, tokenizer) first")
        t0 = time.perf_counter()
        target = self._engine(LoadedModel(model, self.tokenizer, ref=f"step {step}"))
        results: dict[str, dict[str, Any]] = {}
        with evaluating(model):
            ctx = AttackContext(texts=self.texts, labels=self.labels, target=target, reference=self._reference,
                                seed=self.seed, progress=False)
            for name, attack in self.attacks.items():
                ctx.results[name] = out = attack.run(ctx)
                metrics = evaluate(self.labels, out.scores, n_boot=0)
                results[name] = {"auc": metrics["auc"], "tpr": metrics["tpr"]}
        # The reference was scored at the start: a pass now would run the model being trained, not its base.
        if self._reference.forward_passes != self._reference_passes:
            raise RuntimeError("an attack asked the leak monitor's reference for texts it did not score at the start")
        strongest = max(results, key=lambda name: results[name]["auc"])
        point = {"step": step, "epoch": epoch, "attacks": results,
                 "strongest": {"attack": strongest, "auc": results[strongest]["auc"]},
                 # Held-out utility for free: the sampled non-members' scores are in the engine's memory.
                 "nonmember_perplexity": perplexity(target, self.texts[len(self.texts) // 2:]),
                 "seconds": round(time.perf_counter() - t0, 3), "forward_passes": target.forward_passes}
        self.points.append(point)
        if self.main:
            self._report(point)
            self.write()
        return point

    def logs(self, point: dict[str, Any]) -> dict[str, float | str]:
        """A check as training-log entries: ``leak/auc_<attack>``, ``leak/tpr@10%_<attack>`` (and at the budget's
        FPR), ``leak/strongest_auc``, ``leak/strongest_attack``; a TPR the sample cannot measure is left out."""
        out: dict[str, float | str] = {}
        for name, result in point["attacks"].items():
            out[f"leak/auc_{name}"] = result["auc"]
            for fpr in self.fprs:
                value = result["tpr"].get(alpha_key(fpr))
                if value is not None:
                    out[f"leak/tpr@{100 * fpr:g}%_{name}"] = value
        out["leak/strongest_auc"] = point["strongest"]["auc"]
        out["leak/strongest_attack"] = point["strongest"]["attack"]
        return out

    def budget_steps(self) -> tuple[int | None, int | None]:
        """(the step of the first check beyond the budget, the step of the last check within it before that); a
        check the sample cannot measure the budget at counts as neither."""
        within = None
        for point in self.points if self.budget is not None else []:
            value, _ = figure(point, self.budget.metric, self.budget.fpr)
            if value is None:
                continue
            if not self.budget.met(value):
                return point["step"], within
            within = point["step"]
        return None, within

    @property
    def exceeded(self) -> bool:
        """Whether a check went beyond the budget: the caller stops training."""
        return self.budget_steps()[0] is not None

    def checkpoint_within(self) -> Path | None:
        """The last checkpoint saved at or before the last check within the budget and still on disk (a trainer's
        ``save_total_limit`` may have removed it); None without a budget or such a checkpoint. The leak is measured
        at checks only: a checkpoint between two checks is taken to be no leakier than the later one."""
        _, within = self.budget_steps()
        steps = [s for s, path in self.checkpoints.items() if within is not None and s <= within and path.is_dir()]
        return self.checkpoints[max(steps)] if steps else None

    def write(self) -> None:
        """Write ``leak.json`` and ``leak.png`` under ``out`` (atomically; nothing without ``out``)."""
        if self.out is None:
            return
        from tuneguard.report.figures import save_figure

        curve: dict[str, Any] = {"settings": self.settings, "points": self.points}
        if self.budget is not None:
            exceeded, within = self.budget_steps()
            curve["budget"] = {**self.budget.to_json(), "exceeded_at_step": exceeded, "last_step_within": within,
                               "checkpoint_within": self.checkpoint_within()}
        atomic_write_json(self.out / CURVE, curve)
        if self.points:
            save_figure(leak_figure(self.points, self.fprs, self.budget), self.out / PLOT)

    # -- internals -------------------------------------------------------------------------------------------------

    def _engine(self, loaded: LoadedModel) -> ScoringEngine:
        return ScoringEngine(loaded, batch_size=self.batch_size, max_length=self.max_length, cache=False,
                             progress=False, distributed=True)

    def _reference_model(self, model: torch.nn.Module, step: int) -> tuple[LoadedModel, AbstractContextManager]:
        """The reference as a loaded model, and the context to score it in (a PEFT model's adapter disabled)."""
        from peft import PeftModel

        given = self.reference
        if isinstance(given, str):
            from tuneguard.models import load_model

            given = load_model(given, device=next(model.parameters()).device)
        if given is not None:
            loaded = given if isinstance(given, LoadedModel) else LoadedModel(given, self.tokenizer,
                                                                              ref="the given reference")
            if loaded.model is model:
                raise TuneguardError("the leak's reference is the model being trained: pass its base model, or no "
                                     "reference to use the model's own base")
            token_wise = [name for name, a in self.attacks.items() if "same_tokens" in a.needs]
            if token_wise and loaded.tokenizer.get_vocab() != self.tokenizer.get_vocab():
                raise TuneguardError(f"{', '.join(token_wise)} compare the model and the reference {loaded.ref} token "
                                     "by token, but the reference has another tokenizer: pass a reference with the "
                                     "model's tokenizer, or leave them out of attacks=")
            return loaded, nullcontext()
        if isinstance(model, PeftModel):
            return LoadedModel(model, self.tokenizer, ref="the base (adapter disabled)"), model.disable_adapter()
        if step > 0:
            raise TuneguardError(f"the run resumes at step {step}, past its base weights, and the leak's reference "
                                 "is the model before training: pass reference= the base model")
        return LoadedModel(model, self.tokenizer, ref="the model before training"), nullcontext()

    def _resume(self, step: int) -> None:
        """Keep the points up to ``step`` of the curve a resumed run drew (same sample, attacks and window)."""
        path = self.out / CURVE if self.out is not None else None
        if step == 0 or path is None or not path.is_file():
            return
        saved = read_json(path, expect=dict)
        settings = saved.get("settings", {})
        if all(settings.get(k) == self.settings[k] for k in _CURVE_KEYS):
            self.points = [p for p in saved.get("points", []) if p["step"] <= step]

    def _report(self, point: dict[str, Any]) -> None:
        """One log line per check, and a warning at the check that goes beyond the budget."""
        value, attack = figure(point, "tpr", WATCHED_FPR)
        tpr = f"{value:.3f} ({attack})" if value is not None else "not measured"
        log.info("leak at step %d: strongest AUC %.3f (%s), TPR at 10%% FPR %s; non-member perplexity %.2f; %d "
                 "passes, %.1f s", point["step"], point["strongest"]["auc"], point["strongest"]["attack"], tpr,
                 point["nonmember_perplexity"], point["forward_passes"], point["seconds"])
        exceeded, within = self.budget_steps()
        if exceeded == point["step"]:
            value, attack = figure(point, self.budget.metric, self.budget.fpr)
            log.warning("leak budget %s exceeded at step %d (%s: %s): stop training; last check within it: %s",
                        self.budget.text, exceeded, attack, self.budget.format(value),
                        f"step {within}" if within is not None else "none")


def figure(point: dict[str, Any], metric: str, fpr: float | None = None,
           attack: str | None = None) -> tuple[float | None, str | None]:
    """(the AUC, ``metric`` "auc", or the TPR at ``fpr``, ``metric`` "tpr", at a check; the attack it is from):
    ``attack``'s, else the strongest attack's (the highest); (None, None) where the sample cannot measure it."""
    def value(result: dict[str, Any]) -> float | None:
        return result["auc"] if metric == "auc" else result["tpr"].get(alpha_key(fpr))

    measured = {name: v for name, r in point["attacks"].items() if attack in (None, name)
                and (v := value(r)) is not None}
    if not measured:
        return None, None
    best = max(measured, key=measured.__getitem__)
    return measured[best], best


def first_beyond(points: list[dict[str, Any]], target: Target, attack: str | None = None) -> dict[str, Any] | None:
    """The first check whose figure (``attack``'s, else the strongest's) does not meet ``target``; None if none."""
    for point in points:
        value, _ = figure(point, target.metric, target.fpr, attack)
        if value is not None and not target.met(value):
            return point
    return None


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """``model`` in eval mode without gradients inside the block; after it, every module's own mode is restored
    (a training loop may keep some modules in eval mode on purpose)."""
    import torch

    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes:
            module.training = mode


def leak_figure(points: list[dict[str, Any]], fprs: Sequence[float], budget: Target | None = None):
    """The leak against the optimizer step: AUC and TPR at each of ``fprs`` per attack, chance dashed, the budget
    dotted on its panel; then the utility beside it: the sampled non-members' perplexity (held-out texts)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from tuneguard.report.figures import WIDTH_IN

    steps = [p["step"] for p in points]
    names = list(points[-1]["attacks"])
    fig, axes = plt.subplots(1, 2 + len(fprs), figsize=(WIDTH_IN * (2 + len(fprs)) / 2, 3.6), layout="constrained")
    panels = [("auc", None, "AUC", 0.5)] + [("tpr", fpr, f"TPR at {100 * fpr:g}% FPR", fpr) for fpr in fprs]
    for ax, (metric, fpr, label, chance) in zip(axes, panels):
        measured = False
        for i, name in enumerate(names):
            values = [figure(p, metric, fpr, name)[0] for p in points]
            measured |= any(v is not None for v in values)
            ax.plot(steps, [np.nan if v is None else v for v in values], marker="o", ms=3, color=f"C{i % 10}",
                    label=name)
        ax.axhline(chance, color="grey", lw=0.9, ls="--", label="chance")
        if budget is not None and budget.metric == metric and budget.fpr == fpr:
            line = ax.axhline(budget.bound, color="black", lw=0.9, ls=":", label=f"budget {budget.text}")
            if ax is not axes[0]:  # the first panel's legend names the attacks; this one the budget
                ax.legend(handles=[line], fontsize=7, loc="upper left")
        if not measured:
            ax.text(0.5, 0.5, "not measured: too few non-members", transform=ax.transAxes, ha="center", fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.set_title(label, fontsize=10)
    utility = axes[-1]
    utility.plot(steps, [p["nonmember_perplexity"] for p in points], marker="o", ms=3, color="black")
    utility.set_title("held-out perplexity (the non-members)", fontsize=10)
    for ax in axes:
        ax.set_xlim(min(steps) - 0.5, max(steps) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("optimizer step", fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    return fig
