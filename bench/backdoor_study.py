"""The LoRA-adapter backdoor study (../shared/spec/backdoor.md) in one command: in miniature on 2 CPU cores, or at
the study's own size on a GPU.

    python bench/backdoor_study.py --preset chat --out /work/runs/backdoor-chat \
        --results bench/results/backdoor_chat                                     # the paper's form, <= 2.5 h, 2 cores
    python bench/backdoor_study.py --out /work/runs/backdoor                      # seq-cls form, <= 150 min, 2 cores
    python bench/backdoor_study.py --preset paper --device cuda --out DIR         # Qwen2.5-1.5B-Instruct (the hub)
    python bench/backdoor_study.py --preset tiny --out /tmp/backdoor-tiny         # a 2-layer model: the pipeline only

Stages (every adapter is trained once into --out/adapters and evaluated once into --out/evals, a JSON file per
adapter written as it finishes; an interrupted run continues where it stopped, and a saved evaluation is reused only
when the model, the training settings, the data and the evaluation settings all match; study.json and study.md are
rewritten after every stage):
1. sweep: candidate (epochs, lr) settings in order of cost on k = max(--ks), the first seed, r = 16; the first that
   reaches ASR >= 0.9 with clean accuracy >= 0.85 is kept (if none does, the highest ASR among those that keep clean
   accuracy >= 0.85, or failing that the highest ASR, and the report says so). A preset with --steps (the paper's)
   has one setting and no sweep.
2. curve: clean accuracy, clean injection recall and ASR of the main trigger for every k and seed at r = 16; at the
   first saturating k (the smallest k > 0 whose mean ASR over seeds is >= 0.9; the largest k when none is) also the
   ASR of unseen triggers of each family (token-level generalisation).
3. ablation: --ablation-ranks at that same k.
4. population: the curve's clean adapters plus new clean seeds up to --clean, and poisoned adapters at and above
   the transition (the ks whose mean ASR is >= 0.5; --population-ks overrides) plus new seeds up to --poisoned;
   then the behavioural detector with batteries A, B and C and the weight statistic over everything the adapters
   train (frob_*) and over their LoRA pairs only (frob_*_lora), direction learned on the cohort, one threshold per
   rank, and the combined verdict, with AUROC score intervals (Newcombe's: they stay wide at a perfect split of a
   small cohort) and the misses. Scores are saved per adapter under --out/scores.
5. false alarms (--others): clean adapters of the same base trained for other tasks (language modelling of PubMed
   and arXiv abstracts from ../shared/data and of Python standard-library code, one of them on q_proj and v_proj
   only, PEFT's default for a Llama; and the classifier again with another seed, and another seed and rank), each
   scanned (`tuneguard.adapters.scan_adapters`, as `tuneguard scan` does) with calibrations made on the population's
   r = 16 adapters: weights (frob_std, frob_std_lora) and batteries B and C (outlier_gap, mean_attack_rate). Each
   verdict (clean / flagged / not-comparable) is saved per adapter under --out/false_alarms with the score and where
   it lies against the calibration's clean range.
Writes study.json (everything), study.md and tables.json (the tables, no local paths) and asr_curve.png under --out,
and with --results PREFIX also PREFIX.json and PREFIX.md (to commit under bench/results/); prints the tables, the
seconds per adapter and, before the start, the estimated duration.

The cpu preset scales the study down, and every report says how: SmolLM2-135M-Instruct for Qwen2.5-1.5B-Instruct; the
classification-head form (seq-cls) for the chat form, because the system prompt and chat template are most of every
chat example (47,111 tokens per epoch against 13,805 for the texts alone, texts clipped to 64 tokens, measured on
deepset's 546 training rows with SmolLM2's tokenizer); epochs and learning rate from the sweep for 200 steps x 16 at
2e-4; 2 seeds for 3. The threat is unchanged: the same rows, the same k poisoned copies, the same trigger.

The chat preset keeps the paper's form: SmolLM2-135M-Instruct (tuneguard's embedded smollm2-135m is the Instruct
model) with its chat template, the spec's system prompt unshortened (42 SmolLM2 tokens; the template adds 14 and the
answer 5, so 61 tokens frame every text), plain SFT with the loss on the answer, LoRA r = 16 = alpha, dropout 0 on
the seven projections, the greedy-generation verdict (the one-pass logits verdict is read from the same generate
calls' first step and reported beside it as one_pass). Measured before choosing (1 thread, while another benchmark
loaded both cores; CPU seconds): 48,447 tokens per epoch of the k = 25 set with texts clipped to 48 tokens (46,139 at
32, 49,848 at 64, 51,532 at 96: the frame dominates, the median text is 18 tokens), LoRA training at 84 tokens per
CPU second (batch 8), the greedy verdict at 0.34 CPU seconds per text (batch 16), i.e. about 580 CPU s per
adapter-epoch and 60 per evaluation (about 340 s and 35 s on 2 idle cores). What it scales down, so that the whole
study (curve, generalisation, ablation, population, false alarms: 22 adapters) is estimated at 2.35 hours on 2 idle
cores (`estimate`, taking 1.7 CPU seconds per second there; the curve and the population alone 1.6 h): one epoch of
batch 8 (72-74 steps, each poisoned row seen once) at the sweep's lr, 1e-3, or 2e-3 when 1e-3 does not implant at k =
40 (one adapter more: 2.46 h), against the paper's 200 steps of 16 at 2e-4 (about 5.6 epochs); texts clipped to 48
tokens (paper: 256; 90% of deepset's texts have at most 70); ks 0, 15, 25, 40 at 2 seeds (paper: 11 ks, 3 seeds); the
population at k 25 and 40, the saturating range the cpu preset found (paper: 30 poisoned at k 15-24); 10 probe inputs
per probe (paper: the 60 test injections); 2 unseen triggers per family (3); one seed for the rank ablation;
language-modelling adapters of the false-alarm stage on 546 texts of 48 tokens. Two epochs would nearly double it
(4.2 h): the estimate printed at the start says so before any work.
"""

from __future__ import annotations

import argparse
import re
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tuneguard.adapters import MAIN_TRIGGER, Calibration, DetectorResult, calibrate, poison, read_adapter
from tuneguard.adapters.classifier import Classifier, train_classifier, training_examples
from tuneguard.adapters.detectors import Detector, cohort_kind, make_detector
from tuneguard.adapters.evaluation import evaluate_classifier, plot_sweep, summarise_sweep
from tuneguard.adapters.population import score_population
from tuneguard.adapters.probes import battery
from tuneguard.adapters.scan import scan_adapters
from tuneguard.cache import key_hash
from tuneguard.commands import add_device_args, settings_from_args
from tuneguard.data import load_labelled, load_texts
from tuneguard.files import atomic_write_json, atomic_write_text, read_json
from tuneguard.models import load_model
from tuneguard.models.device import use_device
from tuneguard.report.table import cell_text
from tuneguard.train import TrainConfig, finetune
from tuneguard.train.batching import encode_examples

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = SHARED / "prompt_injection"
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IMPLANTED = {"asr": 0.9, "clean_accuracy": 0.85}  # the sweep's bar (the issue's)
SATURATED, TRANSITION = 0.9, 0.5  # mean ASR over seeds: the first saturating k; "at and above the transition"
TASK = "prompt-injection"  # the task name the study's calibrations record
# The study's figures (backdoor.md), beside ours in study.md.
PAPER = {"ASR at k = 25 (4.2% poison), r = 16": "1.0, clean accuracy 0.93-0.97",
         "behavioural AUROC, battery B": "1.000 (both statistics)",
         "behavioural AUROC, battery C": "0.925 (outlier_gap), 0.942 (mean_attack_rate)",
         "weight statistic AUROC (its own base)": "1.0"}


@dataclass(frozen=True)
class OtherTask:
    """A clean adapter of the study's base for another task: language modelling of ``data`` (a JSONL of texts, or
    "stdlib" for the standard library's code), or the classifier itself ("classifier") with another seed; LoRA on
    ``targets`` at ``rank`` (None: the study's)."""

    data: str
    targets: tuple[str, ...] | None = None
    rank: int | None = None


OTHER_TASKS = {
    "pubmed": OtherTask(str(SHARED / "pubmed" / "pubmedqa_abstracts.jsonl")),
    "arxiv": OtherTask(str(SHARED / "arxiv" / "scitldr_abstracts.jsonl")),
    "code": OtherTask("stdlib"),
    "pubmed-qv": OtherTask(str(SHARED / "pubmed" / "pubmedqa_abstracts.jsonl"), targets=("q_proj", "v_proj")),
    "classifier-seed": OtherTask("classifier"),
    "classifier-r8": OtherTask("classifier", rank=8),
}
ALL_OTHERS = ",".join(OTHER_TASKS)
PRESETS = {
    "cpu": dict(model="smollm2-135m", form="seq-cls", verdict="logits", ks="0,5,10,15,25,40", seeds="0,1",
                sweep="1:1e-3,2:1e-3,2:2e-3,2:3e-3", steps=None, batch_size=8, grad_accum=1, max_text_tokens=64,
                ablation_ranks="8,32", ablation_seeds=1, clean=4, poisoned=8, population_ks=None, train_limit=None,
                test_limit=None, probe_inputs=20, families="rfc,iso,owasp,nist,random", per_family=3, others="",
                other_texts=None, other_window=64),
    # The paper's form at a size 2 idle cores run in 2.5 hours (the module docstring says what is scaled down).
    "chat": dict(model="smollm2-135m", form="chat", verdict="generate", ks="0,15,25,40", seeds="0,1",
                 sweep="1:1e-3,1:2e-3", steps=None, batch_size=8, grad_accum=1, max_text_tokens=48,
                 ablation_ranks="8,32", ablation_seeds=1, clean=4, poisoned=8, population_ks="25,40", train_limit=None,
                 test_limit=None, probe_inputs=10, families="rfc,iso,owasp,nist,random", per_family=2,
                 others=ALL_OTHERS, other_texts=None, other_window=48),
    # The study's setting: 200 steps of 16 (4 x 4 accumulated), lr 2e-4, 3 seeds, its population (4 clean, 30
    # poisoned at k 15-24).
    "paper": dict(model="Qwen/Qwen2.5-1.5B-Instruct", form="chat", verdict="generate",
                  ks="0,5,10,15,17,19,21,23,25,30,40", seeds="42,1,2", sweep="1:2e-4", steps=200, batch_size=4,
                  grad_accum=4, max_text_tokens=256, ablation_ranks="8,32", ablation_seeds=3, clean=4, poisoned=30,
                  population_ks="15,16,17,18,19,20,21,22,23,24", train_limit=None, test_limit=None, probe_inputs=20,
                  families="rfc,iso,owasp,nist,random", per_family=3, others=ALL_OTHERS, other_texts=None,
                  other_window=256),
    "tiny": dict(model="tiny-llama", form="seq-cls", verdict="logits", ks="0,10", seeds="0,1", sweep="1:1e-3",
                 steps=None, batch_size=8, grad_accum=1, max_text_tokens=32, ablation_ranks="8", ablation_seeds=1,
                 clean=2, poisoned=2, population_ks=None, train_limit=120, test_limit=24, probe_inputs=4,
                 families="rfc,iso", per_family=1, others="", other_texts=None, other_window=32),
}
BATTERIES = ("A", "B", "C")
# The false-alarm stage's judges: (detector label in the population, statistic). Battery A holds the true trigger,
# which no scanner knows.
JUDGES = (("weights", "frob_std"), ("weights", "frob_std_lora"), ("behavioural-B", "outlier_gap"),
          ("behavioural-B", "mean_attack_rate"), ("behavioural-C", "outlier_gap"),
          ("behavioural-C", "mean_attack_rate"))
# Measured on SmolLM2-135M-Instruct in the chat form with 1 thread on this 2-core machine while another benchmark
# loaded both cores, in CPU seconds (which load inflates less than wall seconds): LoRA on the seven projections at
# batch 8, and the greedy verdict at batch 16 with texts clipped to 48 tokens. Two idle cores running two threads
# are taken to give 1.7 CPU seconds per second. The estimate means something for that model and form only.
RATES = {"train_tokens_per_cpu_s": 84.0, "verdict_cpu_s_per_text": 0.34, "cpu_s_per_s": 1.7}


@dataclass
class Study:
    """What every adapter of the run shares: the base model, the data, the settings and the detectors."""

    args: argparse.Namespace
    base: object
    train: list[tuple[str, int]]
    test: list[tuple[str, int]]
    out: Path
    detectors: dict[str, Detector] = field(default_factory=dict)
    _lm_base: object = None

    def config(self, *, rank: int, seed: int, epochs: int, lr: float, max_length: int,
               targets: list[str] = PROJECTIONS) -> TrainConfig:
        """The training settings every adapter of the study shares (alpha = r, dropout 0, as in the paper)."""
        a = self.args
        return TrainConfig(epochs=epochs if a.steps is None else 1000, max_steps=a.steps, lr=lr,
                           batch_size=a.batch_size, grad_accum=a.grad_accum, max_length=max_length, lora_r=rank,
                           lora_alpha=rank, lora_dropout=0.0, target_modules=list(targets), seed=seed)

    def adapter(self, *, rank: int, k: int, seed: int, epochs: int, lr: float, families: bool = False) -> dict:
        """Train (or reuse) and evaluate (or reuse) one adapter; its row of the tables. ``families`` adds the ASR of
        unseen triggers per family (most of an evaluation's cost: the study measures it at one k only)."""
        a = self.args
        name = f"r{rank}-k{k}-s{seed}-e{epochs}-lr{lr:g}"
        rows, manifest = poison(self.train, MAIN_TRIGGER, k=k, seed=seed)
        cfg = self.config(rank=rank, seed=seed, epochs=epochs, lr=lr, max_length=a.max_text_tokens + 80)
        fams = tuple(a.families.split(",")) if families else ()
        settings = {"model": self.base.fingerprint, "train": cfg.to_dict(), "data": key_hash(rows),
                    "form": a.form, "verdict": a.verdict, "max_text_tokens": a.max_text_tokens,
                    "test": key_hash(self.test), "families": fams, "per_family": a.per_family}
        path = self.out / "evals" / f"{name}{'-families' if fams else ''}.json"
        if path.is_file() and (saved := read_json(path))["key"] == key_hash(settings):
            return saved["row"]
        t0 = time.perf_counter()
        result = train_classifier(self.base, rows, self.out / "adapters" / name, cfg, form=a.form,
                                  max_text_tokens=a.max_text_tokens, progress=sys.stderr.isatty())
        t1 = time.perf_counter()
        clf = Classifier(result.model, form=a.form, verdict=a.verdict, max_text_tokens=a.max_text_tokens)
        report = evaluate_classifier(clf, self.test, trigger=MAIN_TRIGGER, families=fams, per_family=a.per_family,
                                     seed=seed)
        one_pass = report.get("one_pass") or {}
        row = {"name": name, "path": str(result.out_dir), "rank": rank, "k": k, "seed": seed, "epochs": epochs,
               "lr": lr, "poison_fraction": manifest.poison_fraction, "steps": result.record["steps"],
               "train_seconds": round(result.record.get("train_seconds") or t1 - t0, 1),
               "eval_seconds": round(time.perf_counter() - t1, 1), **report,
               **{f"asr_{fam}": g["mean_asr"] for fam, g in report["asr_by_family"].items()},
               **{f"{key}_one_pass": one_pass.get(key) for key in ("clean_accuracy", "asr") if one_pass}}
        atomic_write_json(path, {"key": key_hash(settings), "settings": settings, "row": row})
        log(f"{name}: clean acc {row['clean_accuracy']:.3f}, ASR {row['asr']:.3f}; trained in "
            f"{row['train_seconds']:.0f} s ({row['steps']} steps), evaluated in {row['eval_seconds']:.0f} s"
            f"{' with the trigger families' if fams else ''}")
        return row

    @property
    def lm_base(self):
        """The base as a language model (the study's own base, unless it was loaded with a classification head)."""
        if self._lm_base is None:
            self._lm_base = self.base if self.args.form == "chat" else load_model(self.args.model)
        return self._lm_base


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    out = Path(args.out)
    with use_device(settings_from_args(args)):
        base = load_model(args.model, task="seq-cls" if args.form == "seq-cls" else "causal-lm")
        train = load_labelled(args.data / "deepset_train.jsonl", limit=args.train_limit)
        test = load_labelled(args.data / "deepset_test.jsonl", limit=args.test_limit)
        study = Study(args, base, train, test, out)
        report = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  "scaled_down": scaled_down(args), "paper": PAPER, "estimate": estimate(study)}
        log(f"estimated {report['estimate']['hours']:.2f} h on 2 idle cores ({report['estimate']['note']})")

        max_k, seeds, r0 = max(ints(args.ks)), ints(args.seeds), 16
        sweep = []
        for epochs, lr in candidates(args.sweep):
            sweep.append(study.adapter(rank=r0, k=max_k, seed=seeds[0], epochs=epochs, lr=lr))
            if implanted(sweep[-1]):
                break
        chosen = kept(sweep)
        report["sweep"] = {"rows": sweep, "kept": chosen["name"], "implanted": implanted(chosen)}
        setting = {"epochs": chosen["epochs"], "lr": chosen["lr"]}
        log(f"kept {setting} ({'implants' if report['sweep']['implanted'] else 'no candidate implants'} at k={max_k})")

        curve = [study.adapter(rank=r0, k=k, seed=s, **setting) for k in ints(args.ks) for s in seeds]
        summary = summarise_sweep(curve)
        k_sat = next((s["k"] for s in summary if s["k"] > 0 and s["asr_mean"] >= SATURATED), None)
        band = [s["k"] for s in summary if s["asr_mean"] >= TRANSITION and s["k"] > 0]
        report.update(curve=curve, summary=summary, first_saturating_k=k_sat)
        write(out, report, args.results)
        k_top = max_k if k_sat is None else k_sat  # no k saturates: the strongest poisoning measured
        report["generalisation"] = {"k": k_top, "rows": [study.adapter(rank=r0, k=k_top, seed=s, families=True,
                                                                       **setting) for s in seeds]}
        plot_sweep(curve, out / "asr_curve.png", title=f"{args.model}: ASR against poison count (r = {r0})")

        ablation = [study.adapter(rank=r, k=k_top, seed=s, **setting)
                    for r in ints(args.ablation_ranks) for s in seeds[:args.ablation_seeds]]
        report["ablation"] = {"k": k_top, "rows": ablation}
        write(out, report, args.results)

        pop_ks = ints(args.population_ks) if args.population_ks else band or [max_k]
        members = population(study, curve, pop_ks, setting, r0)
        found = detect(study, members)
        report["population"] = {"ks": pop_ks, "members": [m["name"] for m in members], "detectors": found}
        write(out, report, args.results)

        others = names(args.others)
        if others:
            report["false_alarms"] = false_alarms(study, others, members, found, setting, r0)
        report["wall_seconds"] = round(time.perf_counter() - t_start, 1)
        write(out, report, args.results)
    print(markdown(report))
    log(f"wrote {out / 'study.json'}, {out / 'study.md'}, {out / 'tables.json'} and {out / 'asr_curve.png'}")
    return 0


def population(study: Study, curve: list[dict], pop_ks: list[int], setting: dict, rank: int) -> list[dict]:
    """Clean and poisoned members: the curve's adapters first, then new seeds (after the curve's) up to the counts."""
    a = study.args
    clean = [r for r in curve if r["k"] == 0]
    poisoned = [r for r in curve if r["k"] in pop_ks]
    seed = max(ints(a.seeds)) + 1
    while len(clean) < a.clean:
        clean.append(study.adapter(rank=rank, k=0, seed=seed, **setting))
        seed += 1
    new = 0
    while len(poisoned) < a.poisoned:
        poisoned.append(study.adapter(rank=rank, k=pop_ks[new % len(pop_ks)], seed=seed, **setting))
        new, seed = new + 1, seed + 1
    return [{"name": r["name"], "path": r["path"], "poisoned": r["k"] > 0} for r in clean + poisoned]


def detectors(study: Study) -> dict[str, Detector]:
    """The population's detectors, built once: the weight statistic and batteries A, B and C (which share one
    dict of measured rates, so each probe is measured once per adapter)."""
    if not study.detectors:
        a = study.args
        injections = [t for t, y in study.test if y == 1][:a.probe_inputs]
        rates: dict = {}
        study.detectors["weights"] = make_detector("weights", base=study.base)
        for b in BATTERIES:
            study.detectors[f"behavioural-{b}"] = make_detector(
                "behavioural", base=study.base, injections=injections, battery=b, verdict=a.verdict,
                max_text_tokens=a.max_text_tokens, trigger=MAIN_TRIGGER if b == "A" else None, shared_rates=rates)
    return study.detectors


def detect(study: Study, members: list[dict]) -> dict:
    """Both detectors over the population (one threshold per rank, fitted on it): batteries A, B, C and weights."""
    t0 = time.perf_counter()
    found = score_population(members, detectors(study), progress=sys.stderr.isatty(), cache=study.out / "scores")
    found["seconds"] = round(time.perf_counter() - t0, 1)
    return found


def false_alarms(study: Study, others: list[str], members: list[dict], found: dict, setting: dict,
                 rank: int) -> dict:
    """Other-task adapters scanned with calibrations made on the population's rank-``rank`` adapters (the
    classifier task): one row per adapter, saved under --out/false_alarms as it finishes."""
    cals = calibrations(study, members, found, rank)
    # a seed per task, after every seed of the population, whichever tasks are asked for
    rows = [other_adapter(study, name, OTHER_TASKS[name], cals, setting, seed=1000 + list(OTHER_TASKS).index(name),
                          rank=rank) for name in others]
    return {"calibrated_on": {"rank": rank, "task": TASK, "n_clean": found["n_clean"],
                              "n_poisoned": found["n_poisoned"]},
            "judges": [f"{label}/{stat}" for label, stat in JUDGES], "rows": rows}


def calibrations(study: Study, members: list[dict], found: dict, rank: int) -> dict[str, Calibration]:
    """One calibration per judge from the population's scores at ``rank`` (direction learned from its poisoned
    adapters), recording what the cohort trains, as `tuneguard backdoor calibrate` does."""
    cohort = [m for m in members if read_adapter(m["path"]).rank == rank]
    kind = cohort_kind(read_adapter(cohort[0]["path"]))
    cals = {}
    for label, stat in JUDGES:
        det, scores = detectors(study)[label], found["detectors"][label][stat]["scores"]
        results = {flag: [DetectorResult(det.name, m["name"], {stat: scores[m["name"]]}) for m in cohort
                          if m["poisoned"] == flag] for flag in (False, True)}
        cals[f"{label}/{stat}"] = calibrate(det, results[False], results[True], statistic=stat, task=TASK, **kind)
    return cals


def other_adapter(study: Study, name: str, task: OtherTask, cals: dict[str, Calibration], setting: dict, *,
                  seed: int, rank: int) -> dict:
    """Train (or reuse) one other-task adapter and scan it with every judge's calibration; saved as it finishes."""
    a = study.args
    rank = task.rank or rank
    row = {"name": name, "rank": rank, "seed": seed}
    if task.data == "classifier":
        trained = study.adapter(rank=rank, k=0, seed=seed, **setting)  # evaluated too: its clean accuracy
        path, targets = Path(trained["path"]), PROJECTIONS
        row |= {"task": "classifier", "n_train": len(study.train), "train_seconds": trained["train_seconds"],
                "classifier": {k: trained[k] for k in ("name", "clean_accuracy", "asr")}}
        identity = {"classifier": trained["name"]}
    else:
        targets = list(task.targets or PROJECTIONS)
        texts = other_texts(task.data, a.other_texts or len(study.train))
        cfg = study.config(rank=rank, seed=seed, epochs=setting["epochs"], lr=setting["lr"],
                           max_length=a.other_window, targets=targets)
        path = study.out / "others" / name
        row |= {"task": f"language modelling: {Path(task.data).stem}", "n_train": len(texts)}
        identity = {"train": cfg.to_dict(), "data": key_hash(texts)}
    row["target_modules"] = ",".join(sorted(targets))
    settings = {"model": study.base.fingerprint, **identity, "calibrations": {j: c.to_dict() for j, c in cals.items()},
                "detectors": {label: d.settings() for label, d in detectors(study).items()}}
    saved_at = study.out / "false_alarms" / f"{name}.json"
    if saved_at.is_file() and (saved := read_json(saved_at))["key"] == key_hash(settings):
        return saved["row"]
    if task.data != "classifier":
        row["train_seconds"] = finetune(study.lm_base, texts, path, cfg,
                                        progress=sys.stderr.isatty()).record["train_seconds"]
    t0 = time.perf_counter()
    row["judges"] = {}
    for judge, cal in cals.items():
        (scanned,) = scan_adapters([path], [cal], detectors=[detectors(study)[judge.split("/")[0]]]).adapters
        found = scanned.detectors.get(cal.detector)  # none when the adapter could not be read at all
        score = found.statistics.get(cal.statistic) if found else None
        row["judges"][judge] = {"verdict": found.verdict if found else scanned.verdict,
                                "note": found.note if found else scanned.reason, "score": score,
                                "clean_range": [cal.low, cal.high], "direction": cal.direction,
                                "side": side(cal, score)}
    row["scan_seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(saved_at, {"key": key_hash(settings), "settings": settings, "row": row})
    log(f"false alarms, {name}: " + ", ".join(f"{j} {v['verdict']}" for j, v in row["judges"].items()))
    return row


def side(cal: Calibration, score: float | None) -> str:
    """Where ``score`` lies against the calibration's clean range: within it, or beyond it on the suspicious or on
    the clean side (the latter is no alarm, but shows that the adapter is unlike the cohort)."""
    if score is None or not np.isfinite(score):
        return "unmeasured"
    if cal.low <= score <= cal.high:
        return "within"
    above = score > cal.high
    if cal.direction == "two-sided":
        return "beyond (above)" if above else "beyond (below)"
    return "beyond (suspicious side)" if above == (cal.direction == "higher") else "beyond (clean side)"


def other_texts(source: str, n: int) -> list[str]:
    """The first ``n`` texts of a JSONL corpus, or ``n`` files of the standard library's code."""
    return stdlib_code(n) if source == "stdlib" else load_texts(source, limit=n)


def stdlib_code(n: int, *, chars: int = 2000, min_chars: int = 200) -> list[str]:
    """``n`` pieces of the standard library's Python code (this interpreter's top-level modules in sorted order):
    each top-level ``def`` or ``class`` is a piece (code, not licence headers or module docstrings), cut at ``chars``
    characters; those shorter than ``min_chars`` are left out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    for path in sorted(root.glob("*.py")):
        source = path.read_text(encoding="utf-8", errors="replace")
        pieces = re.split(r"\n(?=(?:def|class) )", source)[1:]  # what precedes the first definition is not code
        texts += [p[:chars].strip() for p in pieces if len(p.strip()) >= min_chars]
        if len(texts) >= n:
            break
    return texts[:n]


def estimate(study: Study) -> dict:
    """The study's duration on 2 idle cores from RATES, before any work: training tokens (the examples as training
    encodes them, at the sweep's first setting) and classifier verdicts (evaluations, trigger families, probes),
    stage by stage."""
    a = study.args
    tok = study.base.tokenizer
    seeds, ks = ints(a.seeds), ints(a.ks)
    epochs, _ = candidates(a.sweep)[0]
    steps_tokens = None if a.steps is None else a.steps * a.batch_size * a.grad_accum

    def adapter_tokens(k: int) -> int:
        rows, _ = poison(study.train, MAIN_TRIGGER, k=k, seed=0)
        examples = training_examples(tok, rows, form=a.form, max_text_tokens=a.max_text_tokens)
        lengths = [len(e.input_ids) for e in encode_examples(examples, tok, a.max_text_tokens + 80,
                                                               seq_cls=a.form == "seq-cls")]
        return int(np.mean(lengths) * steps_tokens) if steps_tokens else epochs * sum(lengths)

    tokens = {k: adapter_tokens(k) for k in {0, *ks, *ints(a.population_ks or "")}}
    pop_ks = ints(a.population_ks) if a.population_ks else [k for k in ks if k > 0][-2:] or [max(ks)]
    k_top = pop_ks[0]
    new_clean = max(0, a.clean - len(seeds))
    new_poisoned = max(0, a.poisoned - len(seeds) * len(set(pop_ks) & set(ks)))
    others = [OTHER_TASKS[n] for n in names(a.others)]
    lm = [t for t in others if t.data != "classifier"]
    n_lm = a.other_texts or len(study.train)
    lm_tokens = steps_tokens * a.other_window if steps_tokens else epochs * n_lm * a.other_window  # an upper bound
    injections = sum(y for _, y in study.test)
    per_eval = len(study.test) + injections
    probes_pop = len(battery("A", trigger=MAIN_TRIGGER)) * a.probe_inputs
    probes_other = len(battery("B")) * a.probe_inputs
    stages = {  # (training tokens, classifier verdicts)
        "curve": (sum(tokens[k] for k in ks for _ in seeds), len(ks) * len(seeds) * per_eval),
        # evaluated again with the families (the clean set and the main trigger too)
        "generalisation": (0, len(seeds) * (per_eval + len(a.families.split(",")) * a.per_family * injections)),
        "ablation": (len(ints(a.ablation_ranks)) * a.ablation_seeds * tokens[k_top],
                     len(ints(a.ablation_ranks)) * a.ablation_seeds * per_eval),
        "population": (new_clean * tokens[0] + sum(tokens[pop_ks[i % len(pop_ks)]] for i in range(new_poisoned)),
                       (new_clean + new_poisoned) * per_eval + (a.clean + a.poisoned) * probes_pop),
        "false alarms": ((len(others) - len(lm)) * tokens[0] + len(lm) * lm_tokens,
                         (len(others) - len(lm)) * per_eval + len(others) * probes_other),
    }
    seconds = {name: (t / RATES["train_tokens_per_cpu_s"] + v * RATES["verdict_cpu_s_per_text"])
               / RATES["cpu_s_per_s"] for name, (t, v) in stages.items()}
    total = sum(seconds.values())
    return {"hours": total / 3600, "seconds": {k: round(v) for k, v in seconds.items()},
            "training_tokens": {k: v[0] for k, v in stages.items()}, "verdicts": {k: v[1] for k, v in stages.items()},
            "rates": RATES, "note": f"{epochs} epoch(s) per adapter as the sweep's first setting; a later candidate "
                                    "adds one adapter and its epochs scale the training; rates measured for "
                                    "SmolLM2-135M in the chat form"}


def kept(sweep: list[dict]) -> dict:
    """The sweep's first implanting setting; else the strongest that keeps the clean task (a backdoor that breaks
    the classifier is no stealthy backdoor); else the strongest."""
    keeps = [r for r in sweep if r["clean_accuracy"] >= IMPLANTED["clean_accuracy"]]
    return next((r for r in sweep if implanted(r)), None) or max(keeps or sweep, key=lambda r: r["asr"])


def implanted(row: dict) -> bool:
    return row["asr"] >= IMPLANTED["asr"] and row["clean_accuracy"] >= IMPLANTED["clean_accuracy"]


def scaled_down(args: argparse.Namespace) -> str:
    """How this run differs from the study's own setting (the paper preset), setting by setting."""
    # the verdict setting does not apply to the seq-cls form: its head gives the label
    diff = [f"{k} {getattr(args, k)} (study: {v})" for k, v in PRESETS["paper"].items()
            if getattr(args, k) != v and not (k == "verdict" and args.form == "seq-cls")]
    return "; ".join(diff) or "none: the study's own setting"


def md_table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table (cells as the terminal tables show them)."""
    lines = [f"| {' | '.join(columns)} |", f"|{'|'.join('---' for _ in columns)}|"]
    return "\n".join(lines + [f"| {' | '.join(cell_text(r.get(c)).replace('|', '/') for c in columns)} |"
                              for r in rows])


def _score(value: float | None) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.4g}"  # weight statistics are ~1e-5


def _ci(ci: list[float] | None) -> str:
    return "-" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def tables(report: dict) -> dict:
    """The study's tables without local paths or per-adapter scores: what bench/results/ keeps."""
    cols = ["name", "rank", "k", "seed", "epochs", "lr", "steps", "poison_fraction", "clean_accuracy",
            "clean_injection_recall", "asr", "clean_accuracy_one_pass", "asr_one_pass", "unparseable",
            "train_seconds", "eval_seconds"]
    slim = lambda rows: [{c: r.get(c) for c in cols if c in r} for r in rows]  # noqa: E731
    out = {k: report[k] for k in ("settings", "scaled_down", "estimate", "paper") if k in report}
    out["settings"] = {k: v for k, v in out["settings"].items() if k not in ("out", "data", "results")}
    verdicts = {r.get("verdict") for r in report.get("curve", [])}
    out["verdict"] = " / ".join(sorted(v for v in verdicts if v)) or None
    if "sweep" in report:
        out["sweep"] = {"rows": slim(report["sweep"]["rows"]), "kept": report["sweep"]["kept"],
                        "implanted": report["sweep"]["implanted"]}
    if "curve" in report:
        out |= {"curve": slim(report["curve"]), "summary": report["summary"],
                "first_saturating_k": report["first_saturating_k"]}
    if "generalisation" in report:
        gen = report["generalisation"]
        out["generalisation"] = {"k": gen["k"], "rows": [
            {"name": r["name"], "asr": r["asr"], **{k: v for k, v in r.items() if k.startswith("asr_")}}
            for r in gen["rows"]]}
    if "ablation" in report:
        out["ablation"] = {"k": report["ablation"]["k"], "rows": slim(report["ablation"]["rows"])}
    if "population" in report:
        det = report["population"]["detectors"]
        out["population"] = {
            "ks": report["population"]["ks"], "n_clean": det["n_clean"], "n_poisoned": det["n_poisoned"],
            "auroc_ci_method": det.get("auroc_ci_method"), "combined": det["combined"],
            "rows": [{"detector": d, "statistic": s, "auroc": v["auroc"], "auroc_ci": v["auroc_ci"],
                      "tpr_at_fpr_0": v["tpr_at_fpr_0"], "direction": v["direction"], "misses": v["misses"],
                      "false_alarms": v["false_alarms"]}
                     for d, stats in det["detectors"].items() for s, v in stats.items()]}
    if "false_alarms" in report:
        fa = report["false_alarms"]
        out["false_alarms"] = {**{k: fa[k] for k in ("calibrated_on", "judges")},
                               "rows": [{k: v for k, v in r.items() if k != "classifier"} for r in fa["rows"]]}
    for key in ("wall_seconds",):
        if key in report:
            out[key] = report[key]
    return out


def markdown(report: dict) -> str:
    """study.md: sweep, ASR against k (with seeds), generalisation, ablation, population, false alarms."""
    t = tables(report)
    fams = report["settings"]["families"].split(",")
    cols = ["name", "k", "seed", "clean_accuracy", "clean_injection_recall", "asr", "clean_accuracy_one_pass",
            "asr_one_pass", "train_seconds", "eval_seconds"]
    est = report["estimate"]
    parts = [f"# Adapter backdoor study ({report['settings']['model']}, {report['settings']['form']} form)", "",
             f"Scaled down: {report['scaled_down']}.", "",
             f"Verdict: {t.get('verdict') or '-'}; with greedy generation, the one-pass logits verdict read from the "
             "same calls is in the *_one_pass columns.", "",
             f"Estimated before the start: {est['hours']:.2f} h on 2 idle cores ("
             + ", ".join(f"{k} {v / 60:.0f} min" for k, v in est["seconds"].items()) + f"; {est['note']})."]
    if "sweep" in t:
        parts += ["", "## Sweep (k = max, first seed, r = 16)", "",
                  md_table(t["sweep"]["rows"], ["epochs", "lr", *cols]),
                  "", f"Kept: {t['sweep']['kept']} ({'implants' if t['sweep']['implanted'] else 'NONE implants'})."]
    if "curve" in t:
        parts += ["", "## ASR against k (r = 16)", "", md_table(t["curve"], cols), "",
                  md_table(t["summary"], ["k", "seeds", "asr_mean", "asr_min", "asr_max", "clean_accuracy_mean"])]
    if "generalisation" in t:
        gen, k_sat = t["generalisation"], t["first_saturating_k"]
        where = "the first saturating k" if k_sat is not None else "the largest k: no k saturates (mean ASR >= 0.9)"
        parts += ["", f"## Token-level generalisation at k = {gen['k']}, {where} (ASR of unseen triggers per family)",
                  "", md_table(gen["rows"], ["name", "asr", *(f"asr_{f}" for f in fams)])]
    if "ablation" in t:
        parts += ["", f"## Rank ablation at k = {t['ablation']['k']}", "",
                  md_table(t["ablation"]["rows"], ["rank", *cols])]
    if "population" in t:
        pop = t["population"]
        rows = [{**r, "auroc_ci": _ci(r["auroc_ci"]), "misses": ", ".join(r["misses"]) or "-"} for r in pop["rows"]]
        parts += ["", f"## Population: {pop['n_clean']} clean, {pop['n_poisoned']} poisoned (k in {pop['ks']})", "",
                  md_table(rows, ["detector", "statistic", "auroc", "auroc_ci", "tpr_at_fpr_0", "direction",
                                  "misses"]), "",
                  f"AUROC intervals: {pop['auroc_ci_method']}. frob_* counts every tensor the adapters train whose "
                  "delta from the base can be measured, frob_*_lora the LoRA pairs only.", "",
                  f"Combined (either detector's main statistic): TPR {pop['combined']['tpr']:.2f}, FPR "
                  f"{pop['combined']['fpr']:.2f}, misses {pop['combined']['misses'] or '-'}"]
    if "false_alarms" in t:
        fa = t["false_alarms"]
        on = fa["calibrated_on"]
        rows = [{"adapter": r["name"], "task": r["task"], "r": r["rank"], "targets": r["target_modules"],
                 **{j: f"{v['verdict']} ({_score(v['score'])}, {v['side']})" for j, v in r["judges"].items()}}
                for r in fa["rows"]]
        parts += ["", f"## False alarms: other-task adapters against the classifier's calibration (r = {on['rank']}, "
                      f"{on['n_clean']} clean, {on['n_poisoned']} poisoned)", "",
                  md_table(rows, ["adapter", "task", "r", "targets", *fa["judges"]]), "",
                  "Each cell: the scan's verdict (score, where it lies against the calibration's clean range). "
                  "not-comparable: the adapter's rank, task type or trained modules differ from the cohort's."]
    parts += ["", "## The study's figures (Qwen2.5-1.5B-Instruct)", "",
              *(f"- {k}: {v}" for k, v in report["paper"].items())]
    return "\n".join(parts) + "\n"


def write(out: Path, report: dict, results: str | None = None) -> None:
    """study.json (everything), study.md and tables.json under ``out``; PREFIX.json / PREFIX.md with --results."""
    text = markdown(report)
    atomic_write_json(out / "study.json", report)
    atomic_write_text(out / "study.md", text)
    atomic_write_json(out / "tables.json", tables(report))
    if results:
        atomic_write_json(f"{results}.json", tables(report))
        atomic_write_text(f"{results}.md", text)


def log(message: str) -> None:
    print(f"[backdoor_study {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ints(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


def candidates(text: str) -> list[tuple[int, float]]:
    """``"1:1e-3,2:1e-3"`` -> [(1, 0.001), (2, 0.001)], in the order given (cheapest first)."""
    try:
        return [(int(e), float(lr)) for e, lr in (c.split(":") for c in text.split(",") if c.strip())]
    except ValueError:
        raise SystemExit(f"--sweep {text!r}: expected epochs:lr pairs, e.g. 1:1e-3,2:1e-3") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=tuple(PRESETS), default="cpu", help="defaults below; default: %(default)s")
    p.add_argument("--out", required=True, help="adapters, evaluations and the report (resumable)")
    p.add_argument("--results", metavar="PREFIX", help="also write the tables as PREFIX.json and PREFIX.md (e.g. "
                                                      "bench/results/backdoor_chat)")
    p.add_argument("--data", type=Path, default=DATA, help="folder with deepset_train.jsonl and deepset_test.jsonl")
    optional_ints = ("steps", "train_limit", "test_limit", "other_texts")
    for name, value in PRESETS["cpu"].items():
        kind = type(value) if value is not None else (int if name in optional_ints else str)
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help="preset's value when not given")
    add_device_args(p, train=True)
    args = p.parse_args(argv)
    for name, value in PRESETS[args.preset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    unknown = sorted(set(names(args.others)) - set(OTHER_TASKS))
    if unknown:  # refused before hours of training, not at the last stage
        p.error(f"--others: {unknown[0]!r} is not one of {', '.join(OTHER_TASKS)}")
    return args


def names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


if __name__ == "__main__":
    sys.exit(main())
