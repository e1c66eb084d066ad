"""``audit_dp``: plant canaries, fine-tune once per epsilon (DP-SGD, LoRA) and once without DP, and turn each run's
canary scores into a one-run epsilon lower bound, beside TPR@1%FPR on the canaries and held-out perplexity.

Every stage is saved as it finishes and reused only when its settings match: ``setup.json`` + ``canaries.jsonl``
(held-out split, canaries and their inclusion draw), ``train/<run>/`` (the fine-tuned adapter, resumed by
``finetune`` / ``dp_finetune`` themselves), ``scores/<run>.jsonl`` + ``scores/<run>.json`` (canary scores and the
run's audit). The canary score is the ``ratio`` attack (LL_target - LL_base) through the shared scoring engine, one
cached pass per model; it never sees the inclusion bits.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tuneguard.attacks.base import AttackContext
from tuneguard.attacks.ratio import RatioAttack
from tuneguard.cache import key_hash
from tuneguard.defenses.dp_sgd import DPConfig, dp_finetune
from tuneguard.dpaudit.bound import BoundParams, OneRunBound, bound_ceiling, one_run_audit
from tuneguard.dpaudit.canaries import Canary, CanaryParams, load_canaries, make_canaries, save_canaries
from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_write_json, atomic_write_jsonl, read_json
from tuneguard.metrics import evaluate
from tuneguard.models import LoadedModel, as_loaded
from tuneguard.params import Params, param
from tuneguard.scoring import ScoringEngine
from tuneguard.scoring.perplexity import perplexity
from tuneguard.train import RunRecord, TrainConfig, finetune

NO_DP = "no-dp"
# The default delta: 1/(10·n) as DP asks (delta << 1/n), and at most the 1e-5 of the DP fine-tuning literature: the
# audit's (epsilon, delta) tail gains 2·m·delta·alpha, so delta = 1/(10·n) with m canaries near n alone takes most of
# the bound away (600 canaries: the most they can certify falls from 4.59 at 1e-5 to 1.91 at 1/3530).
DEFAULT_DELTA = 1e-5
TPR_FPR = 0.01


@dataclass
class DPAuditParams(Params):
    """The runs of a DP audit and how they are measured."""

    epsilons: tuple[float, ...] = param((1.0, 4.0, 8.0), "target epsilon of each DP-SGD run", gt=0)
    no_dp: bool = param(True, "also fine-tune once without DP-SGD (the baseline the bounds are read against)")
    delta: float | None = param(None, "delta of DP-SGD and of the audit; default min(1/(10·n), 1e-5), n = "
                                "training texts", gt=0, lt=1)
    max_grad_norm: float = param(1.0, "DP-SGD per-example clipping norm", gt=0)
    holdout: float = param(0.1, "share of the real texts held out to measure perplexity", gt=0, lt=1)
    seed: int = param(0, "seed of the held-out split and of the training order")
    batch_size: int = param(8, "scoring batch size", ge=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.epsilons and not self.no_dp:
            raise TuneguardError("nothing to audit: give at least one epsilon or keep the no-DP run")


@dataclass
class RunAudit:
    """One fine-tuning run's audit: its privacy claim, the bound that tests it, and what it cost in utility."""

    name: str
    target_epsilon: float | None  # None: no DP
    epsilon: float  # the accountant's epsilon spent (inf without DP)
    delta: float
    noise_multiplier: float | None
    bound: OneRunBound  # tested at the run's delta
    bound_pure: OneRunBound  # tested at delta = 0
    tpr: float | None  # TPR at 1% FPR on the canaries (None below 100 excluded canaries)
    tpr_ci: list[float] | None
    auc: float
    perplexity: float  # held-out real texts
    train_seconds: float | None
    eval_seconds: float

    def to_json(self) -> dict:
        """Plain-JSON form (audit.json; the resume file of the run's audit)."""
        d = asdict(self)
        d["bound"], d["bound_pure"] = self.bound.to_json(), self.bound_pure.to_json()
        d["epsilon"] = None if math.isinf(self.epsilon) else self.epsilon
        d["epsilon_lower_bound"] = self.bound.epsilon_lower_bound
        d["confidence"] = self.bound.confidence
        return d

    @classmethod
    def from_json(cls, d: dict) -> RunAudit:
        """Inverse of :meth:`to_json`."""
        d = {k: v for k, v in d.items() if k not in ("epsilon_lower_bound", "confidence")}
        d["epsilon"] = math.inf if d["epsilon"] is None else d["epsilon"]
        d["bound"], d["bound_pure"] = _bound_from_json(d["bound"]), _bound_from_json(d["bound_pure"])
        return cls(**d)


@dataclass
class DPAuditResult:
    """Every run's audit, the base model's held-out perplexity, the settings and where the outputs are."""

    runs: list[RunAudit]
    base_perplexity: float
    settings: dict
    out_dir: Path
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        """audit.json."""
        return {"title": f"One-run DP audit of {self.settings['model']}", "runs": [r.to_json() for r in self.runs],
                "base_perplexity": self.base_perplexity, "settings": self.settings, "seconds": self.seconds}


def audit_dp(model: LoadedModel | str, texts: list[str], out_dir: str | Path, *, train: TrainConfig | None = None,
             audit: DPAuditParams | None = None, canaries: CanaryParams | None = None,
             bound: BoundParams | None = None, progress: bool = True,
             report: Callable[[str], None] | None = None) -> DPAuditResult:
    """Audit DP-SGD fine-tuning of ``model`` on ``texts`` (LoRA) with canaries; see the module docstring.

    ``report`` is called with one line per finished stage (its name and seconds).
    """
    train = train or TrainConfig()
    audit = audit or DPAuditParams()
    canary_params = canaries or CanaryParams()
    bound = bound or BoundParams()
    if train.method != "lora":
        raise TuneguardError(f"the DP audit fine-tunes LoRA (DP-SGD is offered for LoRA only), not {train.method}")
    say = report or (lambda line: None)
    out_dir = Path(out_dir)
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    base = as_loaded(model)
    real_train, holdout, planted = _setup(out_dir, base, texts, audit, canary_params)
    included = np.array([c.included for c in planted])
    train_texts = real_train + [c.text for c in planted if c.included]
    random.Random(audit.seed).shuffle(train_texts)  # canaries spread through the data, not at its end
    delta = audit.delta if audit.delta is not None else min(1.0 / (10 * len(train_texts)), DEFAULT_DELTA)
    ceiling = bound_ceiling(len(planted), bound.replace(delta=delta))
    base_engine = ScoringEngine(base, batch_size=audit.batch_size, max_length=train.max_length, progress=progress)
    base_ppl = perplexity(base_engine, holdout)
    seconds["setup"] = time.perf_counter() - t0
    say(f"setup: {len(real_train)} real texts + {int(included.sum())} of {len(planted)} canaries trained on, "
        f"{len(holdout)} held out; base perplexity {base_ppl:.2f}; at delta {delta:.2g} the most {len(planted)} canaries "
        f"can certify is epsilon {ceiling:.2f} ({seconds['setup']:.0f} s)")

    common = key_hash(train.to_dict(), base.ref, base.fingerprint, train_texts, holdout,
                      [c.to_json() for c in planted], bound.to_dict(), audit.batch_size)
    plan = ([(NO_DP, None)] if audit.no_dp else []) + [(f"eps-{e:g}", e) for e in audit.epsilons]
    runs = []
    for name, epsilon in plan:
        t0 = time.perf_counter()
        dp = None if epsilon is None else DPConfig(target_epsilon=epsilon, delta=delta,
                                                   max_grad_norm=audit.max_grad_norm)
        digest = key_hash(common, None if dp is None else dp.to_dict())
        saved = out_dir / "scores" / f"{name}.json"
        if saved.is_file() and read_json(saved).get("digest") == digest:
            runs.append(RunAudit.from_json(read_json(saved)["run"]))
            say(f"{name}: reused {saved}")
            continue
        run_dir = out_dir / "train" / name
        if dp is None:
            trained = finetune(base, train_texts, run_dir, train, progress=progress)
        else:
            trained = dp_finetune(base, train_texts, run_dir, train, dp, progress=progress)
        t_train = time.perf_counter() - t0
        t1 = time.perf_counter()
        result, scores = _audit_run(name, epsilon, trained.record, delta, trained.model, base_engine, planted,
                                    holdout, train, audit, bound)
        result.eval_seconds = round(time.perf_counter() - t1, 3)
        # The same form `tuneguard audit-dp --scores` reads.
        atomic_write_jsonl(out_dir / "scores" / f"{name}.jsonl",
                           [{"score": float(s), "included": c.included, "kind": c.kind}
                            for s, c in zip(scores, planted)])
        atomic_write_json(saved, {"digest": digest, "run": result.to_json()})
        runs.append(result)
        seconds[name] = time.perf_counter() - t0
        say(f"{name}: trained in {t_train:.0f} s, audited in {result.eval_seconds:.0f} s; epsilon lower bound "
            f"{result.bound.epsilon_lower_bound:.3f} (claimed {_eps_text(result.epsilon)})")
        del trained

    settings = {"model": base.ref, "n_real_train": len(real_train), "n_holdout": len(holdout),
                "n_canaries": len(planted), "n_included": int(included.sum()), "n_train": len(train_texts),
                "delta": delta, "bound_ceiling": ceiling, "train": train.to_dict(), "audit": audit.to_dict(), "canaries": canary_params.to_dict(),
                "bound": bound.to_dict(), "score": "ratio attack: LL_target - LL_base (mean token log-likelihood)"}
    return DPAuditResult(runs, base_ppl, settings, out_dir, {k: round(v, 3) for k, v in seconds.items()})


def read_scores(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Canary scores and inclusion bits from a JSON Lines file with ``score`` (a number, higher = more likely
    included) and ``included`` (true/false) on each line."""
    path = Path(path)
    if path.is_dir():
        raise TuneguardError(f"scores file {path} is a directory, not a file; pass the JSON Lines file of canary "
                             "scores")
    if not path.exists():
        raise TuneguardError(f"scores file {path} does not exist; check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TuneguardError(f"scores file {path} is not UTF-8 text (invalid byte at offset {exc.start}); save it "
                             "as UTF-8 JSON Lines") from None
    except OSError as exc:
        raise TuneguardError(f"cannot read scores file {path}: {exc.strerror or exc}") from None
    scores, included = [], []
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): it also cuts at U+2028, valid in a string
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise TuneguardError(f"{path}: line {n} is not JSON") from None
        score = row.get("score") if isinstance(row, dict) else None
        flag = row.get("included") if isinstance(row, dict) else None
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not isinstance(flag, bool):
            raise TuneguardError(f"{path}: line {n} needs a numeric 'score' and 'included' true/false, got "
                                 f"{line.strip()[:80]}")
        scores.append(float(score))
        included.append(flag)
    if len(scores) < 2:
        raise TuneguardError(f"{path} holds {len(scores)} canaries; the audit needs at least 2")
    return np.array(scores), np.array(included)


def canary_scores(target: ScoringEngine, base: ScoringEngine, texts: list[str], *, progress: bool = True
                  ) -> np.ndarray:
    """The ``ratio`` attack's score of each canary (higher = more likely trained on)."""
    # The attack reads no labels; the placeholder keeps the inclusion bits away from anything that forms guesses.
    ctx = AttackContext(texts=texts, labels=np.zeros(len(texts), dtype=int), target=target, reference=base,
                        progress=progress)
    return np.asarray(RatioAttack().run(ctx).scores, dtype=float)


def _audit_run(name: str, epsilon: float | None, record: RunRecord, delta: float, model: LoadedModel,
               base_engine: ScoringEngine, planted: list[Canary], holdout: list[str], train: TrainConfig,
               audit: DPAuditParams, bound: BoundParams) -> tuple[RunAudit, np.ndarray]:
    """Score the canaries under the trained model, bound epsilon and measure utility; also return the scores."""
    engine = ScoringEngine(model, batch_size=audit.batch_size, max_length=train.max_length,
                           progress=base_engine.progress)
    scores = canary_scores(engine, base_engine, [c.text for c in planted], progress=base_engine.progress)
    included = np.array([c.included for c in planted])
    metrics = evaluate(included.astype(int), scores, alphas=(TPR_FPR,), seed=bound.seed)
    key = f"{TPR_FPR:g}"
    spent, sigma = _dp_claim(record)
    return RunAudit(
        name=name, target_epsilon=epsilon, epsilon=spent, delta=delta, noise_multiplier=sigma,
        bound=one_run_audit(scores, included, bound.replace(delta=delta)),
        bound_pure=one_run_audit(scores, included, bound.replace(delta=0.0)),
        tpr=metrics["tpr"][key], tpr_ci=metrics["tpr_ci"][key], auc=metrics["auc"],
        perplexity=perplexity(engine, holdout), train_seconds=record.train_seconds, eval_seconds=0.0), scores


def _dp_claim(record: RunRecord) -> tuple[float, float | None]:
    """(epsilon spent, noise multiplier) from a run record; (inf, None) for a run without DP."""
    dp = record.dp
    if not dp:
        return math.inf, None
    spent = dp.get("epsilon_spent")
    return (math.inf if spent is None else float(spent)), dp.get("noise_multiplier")


def _setup(out_dir: Path, base: LoadedModel, texts: list[str], audit: DPAuditParams,
           canary_params: CanaryParams) -> tuple[list[str], list[str], list[Canary]]:
    """The held-out split and the canaries, made on the first run and reused while their settings match."""
    settings = json.loads(json.dumps({"model": base.ref, "texts": key_hash(texts), "holdout": audit.holdout,
                                      "seed": audit.seed, "canaries": canary_params.to_dict()}))  # as read back
    setup_path, canary_path = out_dir / "setup.json", out_dir / "canaries.jsonl"
    if setup_path.is_file() and canary_path.is_file():
        saved = read_json(setup_path)
        if saved.get("settings") != settings:
            raise TuneguardError(f"{out_dir} holds a DP audit of other data, model or canary settings; choose another "
                                 "--out or delete it")
        return saved["train"], saved["holdout"], load_canaries(canary_path)
    unique = list(dict.fromkeys(t.strip() for t in texts))
    if len(unique) < len(texts):
        raise TuneguardError(f"{len(texts) - len(unique)} duplicate texts: clean the data first "
                             "(tuneguard.data.clean_texts)")
    order = list(range(len(texts)))
    random.Random(audit.seed).shuffle(order)
    cut = max(1, round(audit.holdout * len(texts)))
    if cut >= len(texts):
        raise TuneguardError(f"{len(texts)} texts are too few to hold out {audit.holdout:.0%} and train on the rest")
    holdout, real_train = [texts[i] for i in order[:cut]], [texts[i] for i in order[cut:]]
    planted = make_canaries(base.tokenizer, canary_params, avoid_texts=texts)
    save_canaries(canary_path, planted)
    atomic_write_json(setup_path, {"settings": settings, "train": real_train, "holdout": holdout})
    return real_train, holdout, planted


def _bound_from_json(d: dict) -> OneRunBound:
    keep = ("epsilon_lower_bound", "delta", "beta", "m", "k_plus", "k_minus", "guesses", "correct", "grid_size",
            "grid")
    return OneRunBound(**{k: d[k] for k in keep})


def _eps_text(epsilon: float) -> str:
    return "inf" if math.isinf(epsilon) else f"{epsilon:.3f}"
