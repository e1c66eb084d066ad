"""``tuneguard defend compare``: which defence to fine-tune with, answered by measuring the candidates on the user's
own data.

One data file is split (seeded, as ``audit`` splits it) into shadow members and non-members; every candidate regime
(:mod:`tuneguard.regimes`) is trained on the shadow members and attacked with the strongest suite, through the
experiment's cells (:mod:`tuneguard.experiment`: each cell is saved, keyed by everything that decides it, and reused
on a re-run). A regime is judged by its strongest attack, never the average, and its utility is held-out perplexity.
The most useful regime whose strongest attack meets the user's privacy target
(:class:`tuneguard.privacy_target.Target`) is recommended (:func:`select`), with the command that trains the final
model on all the data.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from tuneguard.errors import TuneguardError
from tuneguard.params import check_names
from tuneguard.privacy_target import SMALL_SPLIT_TARGET, Target
from tuneguard.train import TrainConfig
from tuneguard.train.config import layers_text

if TYPE_CHECKING:
    from tuneguard.data import Split
    from tuneguard.experiment import Column, Dataset, Experiment
    from tuneguard.models import LoadedModel

# -- the candidates -------------------------------------------------------------------------------------------------

# The suite each candidate is attacked with: the attacks that compare the target with its base model token by token
# (the strongest on fine-tuned models, tuneguard's frontier measured) and a classifier over their scores. All of them
# read the same two passes (target and base), and none takes ReCall shots, so every non-member is evaluated.
STRONGEST_SUITE = ("ratio", "ez-mia", "wbc", "ensemble")
SUITE_PARAMS = {"ensemble": {"features": "extended"}}  # the default "soft" features would see ratio alone
DP_EPSILONS = (8.0, 4.0, 1.0)
CANDIDATES = ("plain", "fewer-epochs", "lower-rank", "dropout", "layer-exclusion",
              *(f"dp-eps{e:g}" for e in DP_EPSILONS), "soft", "goldfish")
REFERENCE = "pretrained"  # the base model itself: the utility the fine-tuning starts from, never a candidate
SHADOW = "shadow"  # the experiment dataset the shadow split makes (its cells live in OUT/shadow/<candidate>)
DROPOUT = 0.1
SOFT_BEST = {"ratio": 1.0, "paraphraser": "local", "paraphraser_options": {"ban_ngram": 4}}


@dataclass(frozen=True)
class Candidate:
    """One regime to compare: its ``--candidates`` name, its kind in the regimes registry, how it reads in the table,
    its regime options and the TrainConfig changes it makes to the user's settings."""

    name: str
    kind: str
    what: str
    options: dict
    train: dict


def candidates(train: TrainConfig, names: Sequence[str] = CANDIDATES,
               n_layers: int | None = None) -> tuple[list[Candidate], list[str]]:
    """The candidates of ``names`` for a user who fine-tunes with ``train`` a model of ``n_layers`` decoder layers,
    and a note for each one left out (one that would train exactly as the plain run does, or that does not apply to
    its method or, without ``n_layers``, to an unknown depth).

    ``plain`` (the user's settings) is always among them: the others' share of the perplexity gap is measured
    against it. Defaults: LoRA with half the epochs, a quarter of the rank (alpha scaled alike, so the update's scale
    alpha/r is kept), dropout 0.1, only the lower half of the layers adapted (LoRA-Leak, 2025, found dropout and
    excluding layers the only defences that kept utility; which layers it excluded was not available here, so this
    excludes the half nearest the output, as a choice the comparison measures); DP-SGD LoRA at ε 8, 4, 1 (the DP
    regime scales lr and batch for DP); SOFT at its best measured setting (ρ 1, the local anti-copy paraphraser;
    bench/frontier_mini.toml) protecting the user's method; Goldfish (the regime fine-tunes every weight; at the
    user's lr, capped at full fine-tuning's default).
    """
    method = train.method
    if method not in ("lora", "full"):
        raise TuneguardError(f"defend compare compares LoRA and full fine-tuning regimes, not {method}: use --method "
                             "lora or --method full")
    lora = method == "lora"
    run = "LoRA" if lora else "full fine-tuning"
    epochs, rank = max(1, train.epochs // 2), max(1, train.lora_r // 4)
    full_lr = min(train.lr, TrainConfig().lr)  # full fine-tuning at LoRA's step size would wreck the model
    # name -> the candidate, or why it is left out (it would train as the plain run does, or does not apply).
    menu: dict[str, Candidate | str] = {"plain": Candidate("plain", method, f"{run} with your settings", {}, {})}
    menu["fewer-epochs"] = "it already trains 1 epoch" if epochs == train.epochs else Candidate(
        "fewer-epochs", method, f"{run}, {epochs} epoch{'s' * (epochs > 1)} instead of {train.epochs}", {},
        {"epochs": epochs})
    if not lora:
        menu["lower-rank"] = menu["dropout"] = menu["layer-exclusion"] = "not LoRA"
    else:
        alpha = max(1, round(train.lora_alpha * rank / train.lora_r))
        menu["lower-rank"] = f"the rank is already {train.lora_r}" if rank == train.lora_r else Candidate(
            "lower-rank", "lora", f"LoRA rank {rank} instead of {train.lora_r}", {}, {"lora_r": rank,
                                                                                     "lora_alpha": alpha})
        menu["dropout"] = f"its dropout is already {train.lora_dropout:g}" if train.lora_dropout >= DROPOUT \
            else Candidate("dropout", "lora", f"LoRA dropout {DROPOUT:g} instead of {train.lora_dropout:g}", {},
                           {"lora_dropout": DROPOUT})
        menu["layer-exclusion"] = _layer_exclusion(train, n_layers)
    for e in DP_EPSILONS:  # DP-SGD trains LoRA whatever the plain run's method
        menu[f"dp-eps{e:g}"] = Candidate(f"dp-eps{e:g}", "dp", f"DP-SGD LoRA at ε {e:g}", {"epsilon": e},
                                         {} if lora else {"method": "lora"})
    menu["soft"] = Candidate("soft", "soft", f"SOFT (ρ {SOFT_BEST['ratio']:g}, local anti-copy paraphraser)",
                             {**SOFT_BEST, "method": method}, {})
    menu["goldfish"] = Candidate("goldfish", "goldfish", "Goldfish loss (full fine-tuning, k 4, h 13)",
                                 {"k": 4, "h": 13}, {} if full_lr == train.lr else {"lr": full_lr})
    check_candidates(names)
    picked = ["plain", *(n for n in dict.fromkeys(names) if n != "plain")]
    chosen = [menu[n] for n in picked if isinstance(menu[n], Candidate)]
    notes = [f"{n} left out: {menu[n]}" for n in picked if isinstance(menu[n], str)]
    return chosen, notes


def check_candidates(names: Sequence[str]) -> None:
    """Refuse a name that is not a candidate, with the closest one."""
    check_names(names, CANDIDATES, "defend compare", "candidate")


def _layer_exclusion(train: TrainConfig, n_layers: int | None) -> Candidate | str:
    """LoRA on the lower half of ``n_layers`` layers (the half nearest the output excluded), or why not."""
    if train.lora_layers:
        return "it already adapts chosen layers (--lora-layers)"
    if not n_layers or n_layers < 2:
        return "the model's layer count is unknown" if not n_layers else "the model has one layer"
    keep = n_layers // 2
    return Candidate("layer-exclusion", "lora", f"LoRA on layers 0-{keep - 1} of {n_layers} (the top "
                                                f"{n_layers - keep} excluded)", {}, {"lora_layers": list(range(keep))})


def columns_of(chosen: list[Candidate], train: TrainConfig) -> list[Column]:
    """The experiment columns: the pretrained reference, then each candidate's regime with the TrainConfig it
    trains with (the regime's own rule applied to the user's settings and the candidate's changes)."""
    from tuneguard.experiment import Column
    from tuneguard.regimes import REGIMES

    out = []
    for c in [Candidate(REFERENCE, REFERENCE, "the pretrained model (not fine-tuned)", {}, {}), *chosen]:
        regime = REGIMES.make(c.kind, **c.options)
        out.append(Column(c.name, c.kind, regime, regime.train_config(train.replace(**c.train))))
    return out


def check_measurable(target: Target, n_texts: int, member_fraction: float) -> int:
    """The shadow non-members a split of ``n_texts`` at ``member_fraction`` gives (as :func:`split_members` cuts);
    a target they cannot measure is refused, before any model loads, with how many texts it needs."""
    n_non = n_texts - round(member_fraction * n_texts)
    need = target.nonmembers_needed
    if n_non < need:
        texts = math.ceil(need / (1 - member_fraction))
        raise TuneguardError(f"target {target.text} needs at least {need} shadow non-members to measure the "
                             f"{target.label}, and {n_texts} texts at member fraction {member_fraction:g} give "
                             f"{n_non}: use at least {texts} texts, or a target this split can measure (e.g. "
                             f"--target '{SMALL_SPLIT_TARGET}')")
    return n_non


# -- the time it takes ----------------------------------------------------------------------------------------------

# The cost model of the estimate, in forward-pass tokens: assumptions (the forward speed itself is measured unless
# given). One check (SmolLM2-135M, 32 PubMed texts of 96 tokens, 2 busy CPU cores): forward 42-65 tokens/s, LoRA
# training 22, DP-SGD 15, i.e. 2-3 forward tokens per training token and DP 1.5x LoRA. bench/results/
# defend_compare_pubmed (256 members, 3 epochs, 2 quiet cores): LoRA trained in 5.9 min, DP-SGD in 6.1-6.4 min at
# its 4x batch (1.05x LoRA); the whole run was estimated at 1.3 h with DP at 2x and took 57.7 min.
TRAIN_COST = 3.0  # a training token costs about three forward tokens: the backward pass costs about two
DP_COST = 1.25  # Opacus' per-sample gradients and clipping: 1.05-1.5x LoRA measured, rounded up
PARAPHRASE_SECONDS = 12.0  # one local paraphrase: 10-14 s measured on 2 CPU cores (bench/frontier_mini.toml)
SPEED_TEXTS = 16  # member texts timed through the base model to measure its forward speed


@dataclass
class Estimate:
    """The time each column is expected to take (0 for a finished cell, which is reused), and where the forward
    speed behind it comes from."""

    seconds: dict[str, float]
    done: list[str]
    tokens_per_second: float | None  # None when nothing is left to run
    source: str

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def to_json(self) -> dict:
        return {"seconds": {k: round(v, 1) for k, v in self.seconds.items()}, "total_seconds": round(self.total, 1),
                "done": self.done, "source": self.source,
                "tokens_per_second": None if self.tokens_per_second is None else round(self.tokens_per_second, 1),
                "assumed": {"train_cost": TRAIN_COST, "dp_cost": DP_COST, "paraphrase_seconds": PARAPHRASE_SECONDS}}


def column_seconds(column: Column, tokens: dict[str, int], n_members: int, speed: float) -> float:
    """The expected seconds of one cell: training (by the cost model above) and its scoring passes (the target's
    over members, non-members and the general texts; the base model's pass is the pretrained column's and is reused
    by every other from the score cache)."""
    forward = (tokens["members"] + tokens["nonmembers"] + tokens["general"]) / speed
    if not column.regime.trains:
        return forward
    train = column.train.epochs * tokens["members"] * TRAIN_COST / speed
    if column.regime.per_sample_gradients:
        train *= DP_COST
    elif column.regime.paraphrases:
        options = column.regime.params
        train *= 1 + options.warmup_epochs / column.train.epochs  # the warm-up run
        train += tokens["members"] / speed + options.ratio * n_members * PARAPHRASE_SECONDS  # losses, paraphrases
    return train + forward


# -- planning and running -------------------------------------------------------------------------------------------

@dataclass
class Plan:
    """A comparison ready to run: the experiment its cells belong to, the split, the general texts, the columns to
    run (after the budget) and what was left out, the estimate, and what the final command needs to know."""

    exp: Experiment
    dataset: Dataset
    base: LoadedModel
    split: Split
    general_texts: list[str]  # the cells' general texts: the --eval file, else docstrings (what training forgets)
    utility_name: str  # "eval": perplexity on the user's --eval file; "shadow": on the shadow non-members
    candidates: dict[str, Candidate]
    columns: list[Column]
    target: Target
    estimate: Estimate
    source: dict[str, Any]  # the data file, its column, and the user's TrainConfig: for the final command
    notes: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def plan_compare(model: str | LoadedModel, texts: list[str], out_dir: str | Path, *, target: Target,
                 train: TrainConfig | None = None, names: Sequence[str] = CANDIDATES, member_fraction: float = 0.5,
                 seed: int = 0, eval_texts: list[str] | None = None, budget_minutes: float | None = None,
                 tokens_per_second: float | None = None, n_boot: int | None = None, batch_size: int | None = None,
                 data: str = "DATA", column: str | None = None) -> Plan:
    """Check everything, split, load the base model and estimate the time; nothing is trained.

    The target is checked against the split before any model loads. The forward speed behind the estimate is
    measured on this data through the base model (``tokens_per_second`` skips that). ``budget_minutes`` drops the
    most expensive candidates first until the estimate fits (never the plain run or the pretrained reference).
    ``data`` / ``column`` name the user's file for the final command.
    """
    from tuneguard.audit import load_or_make_split
    from tuneguard.data.stdlib import stdlib_docstrings
    from tuneguard.experiment import AttackSuite, Dataset, Experiment
    from tuneguard.models import as_loaded
    from tuneguard.models.device import current_settings

    train = train or TrainConfig(seed=seed)
    check_candidates(names)
    check_measurable(target, len(texts), member_fraction)
    suite = AttackSuite.create("defend compare", {"attacks": list(STRONGEST_SUITE), "params": SUITE_PARAMS,
                                                  **({} if n_boot is None else {"n_boot": n_boot}),
                                                  **({} if batch_size is None else {"batch_size": batch_size})})
    out_dir = Path(out_dir)
    if eval_texts and (overlap := len({t.strip() for t in eval_texts} & {t.strip() for t in texts})):
        raise TuneguardError(f"{overlap} of the {len(eval_texts)} --eval texts are in the data compared on: the "
                             "utility must be measured on texts no regime trains on; remove them from one file")
    split = load_or_make_split(out_dir / "split.json", texts, member_fraction=member_fraction, seed=seed)
    utility_name = "eval" if eval_texts else "shadow"
    general = eval_texts or stdlib_docstrings(16, seed=seed + 1)
    base = as_loaded(model)
    chosen, notes = candidates(train, names, getattr(base.model.config, "num_hidden_layers", None))
    columns = columns_of(chosen, train)
    dataset = Dataset(name=SHADOW, path=data, members=len(split.members), nonmembers=len(split.nonmembers))
    exp = Experiment(name="defend compare", model=base.ref, out=out_dir, datasets=[dataset], regimes=columns,
                     train=train, suite=suite, general_texts=len(general), seed=seed, device=current_settings())
    estimate = _estimate(exp, dataset, base, split, general, columns, tokens_per_second)
    plan = Plan(exp, dataset, base, split, general, utility_name, {c.name: c for c in chosen}, columns, target,
                estimate, {"data": data, "column": column, "train": train}, notes)
    if budget_minutes is not None:
        _fit_budget(plan, budget_minutes)
    return plan


def _estimate(exp: Experiment, dataset: Dataset, base: LoadedModel, split: Split, general: list[str],
              columns: list[Column], given: float | None) -> Estimate:
    from tuneguard.scoring import ScoringEngine

    engine = ScoringEngine(base, batch_size=exp.suite.batch_size, max_length=exp.train.max_length, cache=False,
                           progress=False)

    def count(texts: list[str]) -> int:  # tokens scored (and trained on) per pass, within the training window
        return sum(min(len(engine.tokenize(t)), engine.text_budget) + 1 for t in texts)

    tokens = {"members": count(split.members), "nonmembers": count(split.nonmembers), "general": count(general)}
    done = [c.name for c in columns if _done(exp, dataset, c, base, split, general)]
    if given is not None:
        speed, source = given, "given (--tokens-per-second)"
    elif len(done) == len(columns):
        speed, source = None, "not measured: every cell is saved"
    else:
        sample = split.members[:SPEED_TEXTS]
        engine.score(sample[:1])  # the first call pays one-off set-up
        start = time.perf_counter()
        engine.score(sample)
        speed = count(sample) / max(time.perf_counter() - start, 1e-6)
        source = f"measured: {len(sample)} texts of this data through {base.ref} on {base.device.type}"
    seconds = {c.name: 0.0 if c.name in done else column_seconds(c, tokens, len(split.members), speed)
               for c in columns}
    return Estimate(seconds, done, speed, source)


def _done(exp: Experiment, dataset: Dataset, column: Column, base: LoadedModel, split: Split,
          general: list[str]) -> bool:
    """Whether the column's cell is saved with the key it would have now (it is then reused, at no cost)."""
    from tuneguard.cache import key_hash
    from tuneguard.experiment import cell_key_parts, cell_path
    from tuneguard.files import read_json

    path = cell_path(exp, dataset.name, column.name) / "cell.json"
    if not path.is_file():
        return False
    parts = cell_key_parts(exp, column, base, split.members, split.nonmembers, general, None, column.train.max_length)
    return read_json(path, expect=dict).get("key") == key_hash(parts)


def _fit_budget(plan: Plan, minutes: float) -> None:
    """Drop the most expensive candidates (never the plain run or the reference) until the estimate fits."""
    seconds = plan.estimate.seconds
    keep = {REFERENCE, "plain"}
    floor = sum(seconds[n] for n in keep)
    if floor > 60 * minutes:
        raise TuneguardError(f"--budget-minutes {minutes:g} is below the estimated {floor / 60:.1f} minutes of the "
                             "plain run and the pretrained reference alone: raise it, or use fewer texts (--limit)")
    for name in sorted((n for n in seconds if n not in keep), key=lambda n: -seconds[n]):
        if sum(seconds.values()) <= 60 * minutes:
            break
        plan.dropped.append(f"{name} (estimated {seconds[name] / 60:.1f} min)")
        del seconds[name]
    plan.columns = [c for c in plan.columns if c.name in seconds]


def run_compare(plan: Plan, *, progress: bool = True) -> dict:
    """Run (or reuse) every cell of the plan, select the regime, write compare.json and the report; return the
    comparison (compare.json's content, with the report's ``paths``)."""
    from tuneguard.experiment import run_cell
    from tuneguard.files import atomic_write_json
    from tuneguard.report.compare import write_compare_report

    start = time.perf_counter()
    cells = {c.name: run_cell(plan.exp, plan.dataset, c, plan.base, plan.split.members, plan.split.nonmembers,
                              plan.general_texts, None, progress) for c in plan.columns}
    rows = frontier_rows(plan, cells)
    reference = cells[REFERENCE]
    selection = select(rows, plan.target)
    chosen = plan.candidates.get(selection.chosen or "")
    comparison = {
        "schema": 1, "model": plan.base.ref, "data": plan.source["data"], "members": len(plan.split.members),
        "nonmembers": len(plan.split.nonmembers), "seed": plan.exp.seed, "target": plan.target.to_json(),
        "utility": plan.utility_name, "suite": list(STRONGEST_SUITE),
        "reference": {"ppl": reference[utility_key(plan)], "ppl_domain": reference["ppl_domain"],
                      "ppl_general": reference["ppl_general"]},
        "rows": rows, "chosen": selection.chosen, "closest": selection.closest, "sentence": selection.sentence,
        "command": final_command(chosen, _column(plan, chosen.name), plan) if chosen else None,
        "notes": plan.notes, "dropped": plan.dropped, "estimate": plan.estimate.to_json(),
        "seconds": round(time.perf_counter() - start, 1), "train": plan.source["train"].to_dict()}
    atomic_write_json(plan.exp.out / "compare.json", comparison)
    comparison["paths"] = write_compare_report(plan.exp.out, comparison)
    return comparison


def _column(plan: Plan, name: str) -> Column:
    return next(c for c in plan.columns if c.name == name)


def utility_key(plan: Plan) -> str:
    """The cell figure the utility is: perplexity on the --eval file (scored as the cells' general texts) when
    given, else on the shadow non-members."""
    return "ppl_general" if plan.utility_name == "eval" else "ppl_domain"


# -- the frontier and the choice ------------------------------------------------------------------------------------

def strongest(cell: dict, target: Target) -> dict | None:
    """The cell's strongest attack on the target's metric: ``attack``, ``value``, ``ci`` (None when unmeasured).

    Read from the cell's figures (:func:`tuneguard.report.privacy.attack_figures`): the max-attack AUC, or the
    max-attack TPR at the target's FPR with its CI where the cell records it (``max_tpr`` by FPR; at 10% FPR
    ``max_tpr_at_10pct``); else the highest of the attacks' TPRs at 1% FPR, without a CI. Only attacks that query
    the model count (the blind baseline and attacks that do not apply never do), as the report's verdict counts.
    """
    from tuneguard.metrics import alpha_key
    from tuneguard.report.privacy import MAX_ATTACK_FPR
    from tuneguard.report.verdict import is_blind

    if target.metric == "auc":
        return cell.get("max_auc")
    key = alpha_key(target.fpr)
    recorded = (cell.get("max_tpr") or {}).get(key)
    if recorded or math.isclose(target.fpr, MAX_ATTACK_FPR):
        return recorded or cell.get("max_tpr_at_10pct")
    if not math.isclose(target.fpr, 0.01):
        return None
    counted = {n: v for n, v in (cell.get("tpr_at_1pct") or {}).items()
               if v is not None and n not in (cell.get("not_applicable") or {}) and not is_blind(n)}
    if not counted:
        return None
    name = max(counted, key=lambda n: (counted[n], cell["auc"].get(n, 0)))
    return {"attack": name, "value": counted[name], "ci": (cell.get("tpr_at_1pct_ci") or {}).get(name)}


def frontier_rows(plan: Plan, cells: dict[str, dict]) -> list[dict]:
    """One row per candidate: its measured leak (strongest attack on the target's metric, and the max-attack AUC and
    TPR at 1% / 10% FPR), its utility (held-out perplexity on the shadow non-members, or on the --eval file when
    given, and the share of the gap from the pretrained model to the plain run it closes), its train time."""
    from tuneguard.experiment import cell_path

    utility = utility_key(plan)
    pretrained, plain = cells[REFERENCE][utility], cells["plain"][utility]
    rows = []
    for c in plan.columns:
        if c.name == REFERENCE:
            continue
        cell, candidate = cells[c.name], plan.candidates[c.name]
        ppl = cell[utility]
        gap = (pretrained - ppl) / (pretrained - plain) if pretrained > plain else None
        leak = strongest(cell, plan.target)
        rows.append({"name": c.name, "kind": c.kind, "what": candidate.what, "options": candidate.options,
                     "train": c.train.to_dict(), "leak": leak, "meets": plan.target.met(leak and leak["value"]),
                     "max_auc": cell.get("max_auc"), "tpr_at_1pct": strongest(cell, Target("tpr", 1.0, 0.01)),
                     "tpr_at_10pct": cell.get("max_tpr_at_10pct"), "ppl": ppl, "ppl_domain": cell["ppl_domain"],
                     "ppl_general": cell["ppl_general"], "gap_closed": gap,
                     "train_seconds": train_seconds(cell_path(plan.exp, SHADOW, c.name)),
                     **({"epsilon_spent": cell["epsilon_spent"]} if "epsilon_spent" in cell else {})})
    return rows


def train_seconds(cell_dir: Path) -> float | None:
    """A cell's training time: every run record's training seconds under it (SOFT's warm-up and final runs
    included) and SOFT's paraphrasing; None when nothing there trained."""
    from tuneguard.files import read_json

    found = [read_json(p, expect=dict).get("train_seconds") or 0.0 for p in cell_dir.rglob("run.json")]
    found += [read_json(p, expect=dict).get("seconds") or 0.0 for p in cell_dir.rglob("paraphrase_time.json")]
    return round(sum(found), 1) if found else None


@dataclass
class Selection:
    """The regime chosen (None when none meets the target), the closest one when none does, and why, in words."""

    chosen: str | None
    closest: str | None
    sentence: str


def select(rows: list[dict], target: Target) -> Selection:
    """The most useful regime (lowest ``ppl``) whose strongest attack meets ``target``.

    The rule reads each regime's point estimate (``leak["value"]``), not its CI bound: with a few hundred
    non-members a CI at 1% FPR spans several points, and its upper bound would rule out nearly every regime that
    learns anything. The sentence quotes the CI beside the figure, and says when the upper bound passes the target.
    When none meets it: the closest (the lowest strongest-attack figure; ties by perplexity) is named instead.
    """
    from tuneguard.report.compare import measured_text

    def value(row: dict) -> float:
        leak = row.get("leak")
        return leak["value"] if leak and leak.get("value") is not None else math.inf

    meeting = [r for r in rows if target.met(value(r) if math.isfinite(value(r)) else None)]
    if meeting:
        best = min(meeting, key=lambda r: (r["ppl"], value(r)))
        ci = best["leak"].get("ci")
        caveat = (f" Its CI reaches {target.format(ci[1])}, above the target: with more non-members it might not "
                  "meet it." if ci and ci[1] > target.bound else "")
        return Selection(best["name"], None, f"Of the {len(rows)} regimes compared, {best['what']} is the most "
                                             f"useful whose strongest attack meets {target.text}: "
                                             f"{measured_text(best, target)}.{caveat}")
    measured = [r for r in rows if math.isfinite(value(r))]
    if not measured:
        return Selection(None, None, f"None of the {len(rows)} regimes could be measured against {target.text}.")
    closest = min(measured, key=lambda r: (value(r), r["ppl"]))
    return Selection(None, closest["name"], f"None of the {len(rows)} regimes meets {target.text}. The closest is "
                                            f"{closest['what']}: {measured_text(closest, target)}.")


# -- the final command ----------------------------------------------------------------------------------------------

def final_command(candidate: Candidate, column: Column, plan: Plan, out: str = "FINAL_DIR") -> str:
    """The command that trains the final model on all the data (no --limit: every text of the file) with the
    candidate's regime and exactly the TrainConfig its cell trained with (a DP column's scaled lr and batch
    included)."""
    from tuneguard.report.advice import command_line

    train, defaults = column.train, TrainConfig()
    head, options, repeated = _regime_options(column)
    flags = {"method": train.method, "epochs": train.epochs, "lr": f"{train.lr:g}", "batch_size": train.batch_size,
             "grad_accum": train.grad_accum, "max_length": train.max_length, "seed": train.seed}
    if train.method == "lora":
        flags |= {"lora_r": train.lora_r, "lora_alpha": train.lora_alpha, "lora_dropout": f"{train.lora_dropout:g}"}
    flags |= {name: getattr(train, name) for name in ("scheduler", "warmup_ratio", "weight_decay", "num_virtual_tokens")
              if getattr(train, name) != getattr(defaults, name)}
    if train.target_modules:
        flags["target_modules"] = ",".join(train.target_modules)
    if train.lora_layers:
        flags["lora_layers"] = layers_text(train.lora_layers)
    line = command_line(head, model=plan.base.ref, data=plan.source["data"], column=plan.source["column"], **options,
                        **flags, out=out)
    return " ".join([line, *repeated])


def _regime_options(column: Column) -> tuple[str, dict, list[str]]:
    """The command that trains with the column's regime (its declared ``command``), its options (SOFT's only where
    they differ from the command's defaults), and its repeated ``--flag value`` pairs."""
    regime = column.regime
    if regime.command is None:
        raise TuneguardError(f"defend compare has no final command for regime {column.kind!r}")
    options, repeated = regime.command_options()
    return regime.command, options, repeated
