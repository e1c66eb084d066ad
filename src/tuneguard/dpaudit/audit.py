"""``audit_dp``: plant canaries, fine-tune once per epsilon (DP-SGD, LoRA) and once without DP, and turn each run's
canary scores into one-run epsilon lower bounds (Steinke et al. and f-DP, each at the run's delta and as a pure-DP
test at delta = 0), beside TPR@1%FPR on the canaries and held-out perplexity.

Every stage is saved as it finishes and reused only when its settings match: ``setup.json`` + ``canaries.jsonl``
(held-out split, canaries and their inclusion draw), ``train/<run>/`` (the fine-tuned adapter, resumed by
``finetune`` / ``dp_finetune`` themselves), ``scores/<run>.jsonl`` + ``scores/<run>.json`` (canary scores and the
run's audit). A canary's score is its log-likelihood ratio, log p_target - log p_base summed over the canary's
trained tokens (a secret canary's secret, read behind its prefix), through the shared scoring engine, one cached
pass per model; it never sees the inclusion bits.

Every DP run is planned for n = the real training texts + half the canaries, fixed before the canaries' inclusion
is drawn: the sampling rate q = B/n, the optimizer steps and the default delta do not depend on how many canaries
the draw put in, so neighbouring inclusion vectors run the same mechanism (the one-run bounds assume they do).
``plant_bug`` plants a bug into every DP run (:class:`tuneguard.defenses.dp_sgd.AuditPlan`): those runs are NOT the
user's mechanism; they show whether the audit catches a run that does not deliver its claimed epsilon.
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

from tuneguard.cache import key_hash
from tuneguard.defenses.dp_sgd import AuditPlan, DPConfig, check_method, dp_finetune, dp_setting, parse_bug
from tuneguard.dpaudit.bound import BoundParams, OneRunBound, bound_ceiling, one_run_audit
from tuneguard.dpaudit.canaries import Canary, CanaryParams, load_canaries, make_canaries, save_canaries
from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_write_json, atomic_write_jsonl, read_json
from tuneguard.metrics import evaluate
from tuneguard.models import LoadedModel, as_loaded
from tuneguard.models.record import RunRecord
from tuneguard.params import Params, param
from tuneguard.scoring import ScoringEngine
from tuneguard.scoring.perplexity import perplexity
from tuneguard.train import TrainConfig, finetune

NO_DP = "no-dp"
# A run's four bounds: (RunAudit field, method, tested at delta = 0?).
BOUND_TESTS = (("bound", "steinke", False), ("bound_pure", "steinke", True), ("fdp", "fdp", False),
               ("fdp_pure", "fdp", True))
BOUNDS = tuple(name for name, _, _ in BOUND_TESTS)
# The default delta: 1/(10·n) as DP asks (delta << 1/n), and at most the 1e-5 of the DP fine-tuning literature: a
# larger delta lowers what the canaries can certify at all (600 canaries, k+ = k- = 30: Steinke's ceiling falls from
# 2.96 at 1e-5 to 2.42 at 1/3530, the f-DP one from 4.74 to 3.82).
DEFAULT_DELTA = 1e-5
TPR_FPR = 0.01


@dataclass
class DPAuditParams(Params):
    """The runs of a DP audit and how they are measured."""

    epsilons: tuple[float, ...] = param((1.0, 4.0, 8.0), "target epsilon of each DP-SGD run", gt=0)
    no_dp: bool = param(True, "also fine-tune once without DP-SGD (the baseline the bounds are read against)")
    delta: float | None = param(None, "delta of DP-SGD and of the audit; default min(1/(10·n), 1e-5), n = real "
                                "training texts + half the canaries", gt=0, lt=1)
    max_grad_norm: float = dp_setting("max_grad_norm")  # DP-SGD's own declaration: one clipping bound for both
    holdout: float = param(0.1, "share of the real texts held out to measure perplexity", gt=0, lt=1)
    seed: int = param(0, "seed of the held-out split and of the training order")
    batch_size: int = param(8, "scoring batch size", ge=1)
    plant_bug: str | None = param(None, "plant a bug into every DP run to check the audit catches it: noise=F or "
                                  "normalise=sampled (those runs are not your mechanism)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.epsilons and not self.no_dp:
            raise TuneguardError("nothing to audit: give at least one epsilon or keep the no-DP run")
        if self.plant_bug is not None:
            parse_bug(self.plant_bug)
            if not self.epsilons:
                raise TuneguardError("a bug is planted into the DP runs: give at least one epsilon")


@dataclass
class RunAudit:
    """One fine-tuning run's audit: its privacy claim, the bounds that test it, and what it cost in utility."""

    name: str
    target_epsilon: float | None  # None: no DP
    epsilon: float  # the accountant's epsilon spent (inf without DP)
    delta: float
    noise_multiplier: float | None
    bound: OneRunBound  # Steinke et al., tested at the run's delta
    bound_pure: OneRunBound  # Steinke et al., a pure-DP test (delta = 0)
    fdp: OneRunBound  # f-DP, at the run's delta
    fdp_pure: OneRunBound  # f-DP, a pure-DP test (delta = 0)
    tpr: float | None  # TPR at 1% FPR on the canaries (None below 100 excluded canaries)
    tpr_ci: list[float] | None
    auc: float
    perplexity: float  # held-out real texts
    train_seconds: float | None
    eval_seconds: float
    planted_bug: str | None = None  # set: this run is not the user's mechanism

    def to_json(self) -> dict:
        """Plain-JSON form (audit.json; the resume file of the run's audit)."""
        d = asdict(self)
        for name in BOUNDS:
            d[name] = getattr(self, name).to_json()
        d["epsilon"] = None if math.isinf(self.epsilon) else self.epsilon
        d["epsilon_lower_bound"] = self.bound.epsilon_lower_bound
        d["confidence"] = self.bound.confidence
        return d

    @classmethod
    def from_json(cls, d: dict) -> RunAudit:
        """Inverse of :meth:`to_json`."""
        d = {k: v for k, v in d.items() if k not in ("epsilon_lower_bound", "confidence")}
        d["epsilon"] = math.inf if d["epsilon"] is None else d["epsilon"]
        for name in BOUNDS:
            d[name] = OneRunBound.from_json(d[name])
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
    check_method(train)
    say = report or (lambda line: None)
    out_dir = Path(out_dir)
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    base = as_loaded(model)
    real_train, holdout, planted = _setup(out_dir, base, texts, audit, canary_params)
    _check_window(base, planted, train.max_length)
    included = np.array([c.included for c in planted])
    examples = real_train + [c.example for c in planted if c.included]
    random.Random(audit.seed).shuffle(examples)  # canaries spread through the data, not at its end
    # Fixed by what precedes the inclusion draw (see the module docstring), never by len(examples).
    population = len(real_train) + round(len(planted) / 2)
    delta = audit.delta if audit.delta is not None else min(1.0 / (10 * population), DEFAULT_DELTA)
    ceilings = {name: bound_ceiling(len(planted), bound.replace(delta=0.0 if pure else delta), method=method)
                for name, method, pure in BOUND_TESTS}
    base_engine = ScoringEngine(base, batch_size=audit.batch_size, max_length=train.max_length, progress=progress)
    base_ppl = perplexity(base_engine, holdout)
    seconds["setup"] = time.perf_counter() - t0
    say(f"setup: {len(real_train)} real texts + {int(included.sum())} of {len(planted)} canaries trained on, "
        f"{len(holdout)} held out; base perplexity {base_ppl:.2f}; at delta {delta:.2g} the most {len(planted)} "
        f"canaries can certify is epsilon {ceilings['bound']:.2f} (Steinke) / {ceilings['fdp']:.2f} (f-DP, "
        f"{bound.tradeoff}) ({seconds['setup']:.0f} s)")

    common = key_hash(train.key_dict(), base.ref, base.fingerprint, examples, holdout,
                      [c.to_json() for c in planted], bound.to_dict(), audit.batch_size)
    bug = audit.plant_bug
    runs_planned = ([(NO_DP, None)] if audit.no_dp else []) + [
        (f"eps-{e:g}" + (f"-planted-{bug.replace('=', '-')}" if bug else ""), e) for e in audit.epsilons]
    runs = []
    for name, epsilon in runs_planned:
        t0 = time.perf_counter()
        dp = None if epsilon is None else DPConfig(target_epsilon=epsilon, delta=delta,
                                                   max_grad_norm=audit.max_grad_norm)
        plan = None if dp is None else AuditPlan(population=population, bug=bug)
        digest = key_hash(common, None if dp is None else [dp.to_dict(), plan.to_dict()])
        saved = out_dir / "scores" / f"{name}.json"
        if saved.is_file() and read_json(saved).get("digest") == digest:
            runs.append(RunAudit.from_json(read_json(saved)["run"]))
            say(f"{name}: reused {saved}")
            continue
        run_dir = out_dir / "train" / name
        if dp is None:
            trained = finetune(base, examples, run_dir, train, progress=progress)
        else:
            trained = dp_finetune(base, examples, run_dir, train, dp, progress=progress, plan=plan)
        t_train = time.perf_counter() - t0
        t1 = time.perf_counter()
        result, scores = _audit_run(name, epsilon, trained.record, delta, trained.model, base_engine, planted,
                                    holdout, train, audit, bound)
        result.planted_bug = None if dp is None else bug
        result.eval_seconds = round(time.perf_counter() - t1, 3)
        # The same form `tuneguard audit-dp --scores` reads.
        atomic_write_jsonl(out_dir / "scores" / f"{name}.jsonl",
                           [{"score": float(s), "included": c.included, "kind": c.kind}
                            for s, c in zip(scores, planted)])
        atomic_write_json(saved, {"digest": digest, "run": result.to_json()})
        runs.append(result)
        seconds[name] = time.perf_counter() - t0
        say(f"{name}: trained in {t_train:.0f} s, audited in {result.eval_seconds:.0f} s; epsilon lower bound "
            f"{result.bound.epsilon_lower_bound:.3f} (Steinke) / {result.fdp.epsilon_lower_bound:.3f} (f-DP), "
            f"claimed {_eps_text(result.epsilon)}" + (f" [planted bug {bug}: not your mechanism]"
                                                      if result.planted_bug else ""))
        del trained

    settings = {"model": base.ref, "n_real_train": len(real_train), "n_holdout": len(holdout),
                "n_canaries": len(planted), "n_included": int(included.sum()), "n_train": len(examples),
                "population": population, "delta": delta, "ceilings": ceilings, "train": train.to_dict(),
                "audit": audit.to_dict(), "canaries": canary_params.to_dict(), "bound": bound.to_dict(),
                "planted_bug": bug,
                "score": "log-likelihood ratio log p_target - log p_base of each canary's trained tokens (a secret "
                         "canary's secret, behind its prefix)"}
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


def canary_scores(target: ScoringEngine, base: ScoringEngine, canaries: list[Canary]) -> np.ndarray:
    """Each canary's log-likelihood ratio, log p_target - log p_base of its trained tokens (behind its prefix, which is
    read but not scored); higher = more likely trained on. Takes no inclusion bits."""
    return trained_log_likelihood(target, canaries) - trained_log_likelihood(base, canaries)


def trained_log_likelihood(engine: ScoringEngine, canaries: list[Canary]) -> np.ndarray:
    """log p of each canary's trained tokens under ``engine``'s model, summed.

    A canary whose prefix + text tokenizes as the prefix's tokens followed by the text's (a secret opens a word:
    ``canaries._word_first``) is scored as one text and its last tokens read, so canaries batch together; scored
    behind their prefixes, each distinct prefix would take a key/value pass of its own (a batch of one). Any other
    canary is scored behind its prefix. Both read the same tokens in the same context as training did.
    """
    texts, prefixes, counts = [], [], []
    for c in canaries:
        own = engine.tokenize(c.text)
        joined = bool(c.prefix) and engine.tokenize(c.prefix + c.text) == engine.tokenize(c.prefix) + own
        texts.append(c.prefix + c.text if joined else c.text)
        prefixes.append("" if joined else c.prefix)
        counts.append(len(own))
    scored = engine.score(texts, prefixes, desc="canaries")
    # Without a prefix a whole canary's first token is not scored (no context): then all of it is read.
    return np.array([s.logprobs[-n:].sum() if n else 0.0 for s, n in zip(scored, counts)])


def _audit_run(name: str, epsilon: float | None, record: RunRecord, delta: float, model: LoadedModel,
               base_engine: ScoringEngine, planted: list[Canary], holdout: list[str], train: TrainConfig,
               audit: DPAuditParams, bound: BoundParams) -> tuple[RunAudit, np.ndarray]:
    """Score the canaries under the trained model, bound epsilon and measure utility; also return the scores."""
    engine = ScoringEngine(model, batch_size=audit.batch_size, max_length=train.max_length,
                           progress=base_engine.progress)
    scores = canary_scores(engine, base_engine, planted)
    included = np.array([c.included for c in planted])
    metrics = evaluate(included.astype(int), scores, alphas=(TPR_FPR,), seed=bound.seed)
    key = f"{TPR_FPR:g}"
    spent, sigma = _dp_claim(record)
    bounds = {name: one_run_audit(scores, included, bound.replace(delta=0.0 if pure else delta), method=method)
              for name, method, pure in BOUND_TESTS}
    return RunAudit(
        name=name, target_epsilon=epsilon, epsilon=spent, delta=delta, noise_multiplier=sigma, **bounds,
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
    planted = make_canaries(base.tokenizer, canary_params, avoid_texts=texts, prefix_texts=real_train)
    save_canaries(canary_path, planted)
    atomic_write_json(setup_path, {"settings": settings, "train": real_train, "holdout": holdout})
    return real_train, holdout, planted


def _check_window(base: LoadedModel, planted: list[Canary], max_length: int) -> None:
    """Refuse secret canaries whose prefix + secret exceed the training window: training would cut the prefix
    from its start while scoring reads all of it, and the two would no longer see the same context."""
    tok = base.tokenizer
    prefixed = [c for c in planted if c.prefix]
    if not prefixed:
        return
    longest = max(len(tok(c.prefix)["input_ids"]) + len(tok(c.text, add_special_tokens=False)["input_ids"])
                  for c in prefixed)
    if longest > max_length:
        raise TuneguardError(f"secret canaries take up to {longest} tokens (prefix + secret), more than --max-length "
                             f"{max_length}: lower --canary-prefix or --canary-length, or raise --max-length")


def _eps_text(epsilon: float) -> str:
    return "inf" if math.isinf(epsilon) else f"{epsilon:.3f}"
