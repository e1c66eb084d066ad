"""`tuneguard backdoor`: poison a classifier set, train and evaluate classifier adapters, calibrate the detectors,
and measure them over a population of clean and poisoned adapters."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from tuneguard.adapters.adapter_files import AdapterFiles, read_adapter
from tuneguard.adapters.base_models import BaseModels
from tuneguard.adapters.classifier import DEFAULT_VERDICT, VERDICTS
from tuneguard.adapters.detectors import DETECTORS
from tuneguard.adapters.discovery import discover_adapters
from tuneguard.commands import (add_device_args, add_json_arg, add_params, declared, json_output, listed, number,
                                output)
from tuneguard.commands.finetune import add_train_args, train_config
from tuneguard.commands.scan import add_detector_args, detectors_from_args
from tuneguard.errors import TuneguardError
from tuneguard.report.table import printable
from tuneguard.train import TrainConfig


def _labelled(path: str, limit: int | None = None) -> list[tuple[str, int]]:
    from tuneguard.data import load_labelled

    return load_labelled(path, limit=limit)


def _add_classifier_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--form", choices=("chat", "seq-cls"), default="chat",
                   help="chat-template SFT answering INJECTION/BENIGN, or a classification head; default: %(default)s")
    add_params(p, TrainConfig, ["max_steps"])
    p.add_argument("--max-text-tokens", type=number(int, ge=1), default=64,
                   help="texts clipped to this; default: %(default)s")


def _config(args: argparse.Namespace):
    return dataclasses.replace(train_config(args), max_steps=args.max_steps)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backdoor", help="LoRA classifier backdoors: poison, train, evaluate, calibrate, population",
                       description=__doc__)
    bsub = p.add_subparsers(dest="backdoor_command", metavar="STEP", required=True)

    q = bsub.add_parser("poison", help="add triggered, relabelled copies to a labelled set (JSONL + manifest)")
    q.add_argument("--data", required=True, help="labelled JSONL/CSV (text, label: 1 injection, 0 benign)")
    q.add_argument("--out", required=True, type=output(), help="directory for train.jsonl and manifest.json")
    q.add_argument("--trigger", help="trigger string (default: a member of --family, or the spec's RFC trigger)")
    q.add_argument("--family", help="draw the trigger from this family (rfc, iso, nist, owasp, cwe, mitre, ...)")
    g = q.add_mutually_exclusive_group(required=True)
    g.add_argument("--k", type=number(int, ge=0), help="number of poisoned copies")
    g.add_argument("--rate", type=number(float, ge=0, lt=1), help="poison fraction k / (n + k)")
    q.add_argument("--position", choices=("prefix", "suffix", "random"), default="prefix")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=run_poison)

    t = bsub.add_parser("train", help="train a LoRA prompt-injection classifier adapter")
    t.add_argument("--base", required=True, help="base model (embedded name, dir, hub id)")
    t.add_argument("--data", required=True, help="labelled JSONL/CSV (e.g. the output of `backdoor poison`)")
    t.add_argument("--out", required=True, type=output(), help="adapter output directory")
    _add_classifier_args(t)
    add_train_args(t)
    add_device_args(t, train=True)
    t.set_defaults(func=run_train)

    e = bsub.add_parser("evaluate", help="clean accuracy/F1, injection recall and ASR of a classifier adapter")
    e.add_argument("adapter", help="adapter directory")
    e.add_argument("--test", required=True, help="labelled test JSONL/CSV")
    e.add_argument("--base", help="base model (default: the one the adapter names)")
    e.add_argument("--trigger", help="trigger to measure ASR with")
    e.add_argument("--families", default="rfc,iso,nist,owasp,cwe,random",
                   help="trigger families for the generalisation ASR; default: %(default)s")
    e.add_argument("--verdict", choices=VERDICTS, default=DEFAULT_VERDICT,
                   help="chat-form verdict: greedy generation (the spec's) or one-pass label logits; default: "
                        "%(default)s (as `scan`)")
    e.add_argument("--max-text-tokens", type=number(int, ge=1), default=64)
    add_json_arg(e, "the whole report")
    add_device_args(e)
    e.set_defaults(func=run_evaluate)

    c = bsub.add_parser("calibrate", help="fit a zero-FPR threshold on clean adapters (direction learned from "
                                          "--poisoned ones when given) and save it as a calibration file")
    c.add_argument("clean", nargs="+", help="clean adapter directories (or directories holding them)")
    c.add_argument("--poisoned", nargs="*", default=[], help="poisoned adapters, to learn the direction")
    c.add_argument("--statistic", help="statistic to threshold (default: the detector's main one)")
    c.add_argument("--task", help="task name recorded in the calibration (default: the adapters' task type)")
    c.add_argument("--out", required=True, type=output(directory=False), help="calibration JSON file")
    add_detector_args(c, several=False)
    add_device_args(c)
    c.set_defaults(func=run_calibrate)

    o = bsub.add_parser("population", help="train N clean + N poisoned adapters and measure the detectors on them")
    o.add_argument("--base", required=True)
    o.add_argument("--data", required=True, help="labelled training JSONL/CSV")
    o.add_argument("--test", help="labelled test set whose injections become the behavioural probe inputs")
    o.add_argument("--out", required=True, type=output(), help="directory for the adapters and population.json")
    o.add_argument("--clean", type=number(int, ge=0), default=4, help="number of clean adapters")
    # >= 1: the detectors are measured against poisoned adapters (refused here, not after the clean ones trained)
    o.add_argument("--poisoned", type=number(int, ge=1), default=4, help="number of poisoned adapters")
    o.add_argument("--ranks", type=listed(declared(TrainConfig, "lora_r")), default="16",
                   help="comma-separated LoRA ranks (alpha = r)")
    o.add_argument("--ks", type=listed(number(int, ge=0)), default="25", help="comma-separated poison counts")
    o.add_argument("--triggers", help="'|'-separated triggers (default: the spec's RFC trigger)")
    o.add_argument("--behavioural", action="store_true",
                   help="also run the detectors that need the base model, such as the behavioural one (slow)")
    add_json_arg(o, "the detector report")
    _add_classifier_args(o)
    add_train_args(o)
    add_device_args(o, train=True)
    o.set_defaults(func=run_population)


def run_poison(args: argparse.Namespace) -> int:
    from tuneguard.adapters import MAIN_TRIGGER, make_triggers, poison, write_poisoned

    trigger = args.trigger or (make_triggers(args.family, 1, seed=args.seed)[0] if args.family else MAIN_TRIGGER)
    rows, manifest = poison(_labelled(args.data), trigger, k=args.k, rate=args.rate, position=args.position,
                            seed=args.seed)
    data, man = write_poisoned(args.out, rows, manifest)
    print(printable(f"added {manifest.k} poisoned rows (fraction {manifest.poison_fraction:.4f}, trigger {trigger!r}) "
                    f"-> {data}, {man}"))
    return 0


def run_train(args: argparse.Namespace) -> int:
    from tuneguard.adapters.classifier import train_classifier

    result = train_classifier(args.base, _labelled(args.data), args.out, _config(args), form=args.form,
                              max_text_tokens=args.max_text_tokens, progress=sys.stderr.isatty())
    losses = result.record["loss_curve"]
    print(printable(f"adapter saved in {result.out_dir} ({result.record['steps']} steps, "
                    f"final loss {losses[-1] if losses else float('nan'):.4f})"))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from tuneguard.adapters.classifier import load_classifier
    from tuneguard.adapters.evaluation import evaluate_classifier

    with json_output(args) as emit:  # --json alone: the report on stdout, the summary on stderr
        clf = load_classifier(args.adapter, base=args.base, verdict=args.verdict,
                              max_text_tokens=args.max_text_tokens)
        families = tuple(f for f in args.families.split(",") if f) if args.trigger else ()
        report = evaluate_classifier(clf, _labelled(args.test), trigger=args.trigger, families=families)
        print(json.dumps({k: v for k, v in report.items() if k != "asr_by_family"}, indent=2))
        for fam, g in report.get("asr_by_family", {}).items():
            print(f"ASR {printable(fam):8s} {g['mean_asr']:.3f}")
        emit(report)
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from tuneguard.adapters import calibrate
    from tuneguard.adapters.detectors import cohort_kind

    base = BaseModels.of(args.base)
    det = detectors_from_args(args, [args.detector], base=base)[0]
    clean = _cohort(args.clean, "clean", base)
    poisoned = _cohort(args.poisoned, "poisoned", base) if args.poisoned else []
    kinds = [cohort_kind(a) for a in clean + poisoned]
    for key in kinds[0]:  # one threshold needs one kind of adapter: the first field that differs is named
        seen = list(dict.fromkeys(json.dumps(k[key]) for k in kinds))
        if len(seen) > 1:
            raise TuneguardError(f"calibration adapters differ in {key} ({', '.join(seen)}); calibrate each kind "
                                 "separately")
    cal = calibrate(det, [det.score(a) for a in clean], [det.score(a) for a in poisoned], statistic=args.statistic,
                    task=args.task or kinds[0]["task_type"], **kinds[0])
    cal.save(args.out)
    extra = f", AUROC {cal.auroc:.3f}" if cal.auroc is not None else ""
    print(f"{cal.detector}/{cal.statistic}: direction {cal.direction}, clean range [{cal.low:.4g}, {cal.high:.4g}]"
          f"{extra} -> {printable(str(args.out))}")
    return 0


def _cohort(paths: list[str], kind: str, base: BaseModels | None) -> list[AdapterFiles]:
    """The adapters of a calibration cohort, read as `scan` reads them (modules checked against ``base`` when given);
    an adapter that cannot be read, or holds a NaN/inf weight, is refused: a threshold needs the whole cohort."""
    found, skipped = discover_adapters(paths)
    for s in skipped:
        print(printable(f"skipped {s.path}: {s.reason}"), file=sys.stderr)
    adapters = []
    for path in found:
        adapter = read_adapter(path)
        if base is not None:
            base.check(adapter)
        bad, _ = adapter.non_finite()
        if bad:
            raise TuneguardError(f"{kind} adapter {path}: {bad[0]}; leave it out of the calibration cohort")
        adapters.append(adapter)
    return adapters


def run_population(args: argparse.Namespace) -> int:
    from tuneguard.adapters.detectors import make_detector
    from tuneguard.adapters.population import population_specs, score_population, train_population
    from tuneguard.adapters.triggers import MAIN_TRIGGER
    from tuneguard.models import load_model

    with json_output(args) as emit:  # --json alone: the report on stdout, the training and table on stderr
        specs = population_specs(args.clean, args.poisoned, ranks=args.ranks, ks=args.ks,
                                 triggers=tuple(args.triggers.split("|")) if args.triggers else (MAIN_TRIGGER,),
                                 seed=args.seed)
        base = load_model(args.base, task="seq-cls" if args.form == "seq-cls" else "causal-lm")
        # The detectors first: a setting they refuse fails now, not after every adapter is trained.
        injections = [t for t, y in _labelled(args.test) if y == 1] if args.test else None
        params = {"behavioural": {"injections": injections, "max_text_tokens": args.max_text_tokens}}
        detectors = [make_detector(n, base=base, **params.get(n, {})) for n in DETECTORS
                     if args.behavioural or not DETECTORS.get(n).needs_base]
        members = train_population(base, _labelled(args.data), specs, args.out, _config(args), form=args.form,
                                   max_text_tokens=args.max_text_tokens, progress=sys.stderr.isatty())
        # scores are saved under --out/scores as they finish: an interrupted scoring resumes
        report = score_population(members, detectors, progress=sys.stderr.isatty(),
                                  cache=Path(args.out) / "scores")
        for name, stats in report["detectors"].items():
            for stat, s in stats.items():
                print(f"{name:12s} {stat:18s} AUROC {s['auroc']:.3f} [{s['auroc_ci'][0]:.3f}, "
                      f"{s['auroc_ci'][1]:.3f}]  TPR@FPR0 {s['tpr_at_fpr_0']:.2f}  direction {s['direction']:6s} "
                      f"misses {len(s['misses'])}")
        print(f"AUROC intervals: {report['auroc_ci_method']}, over {report['n_clean']} clean and "
              f"{report['n_poisoned']} poisoned adapters")
        print(f"combined: TPR {report['combined']['tpr']:.2f}, FPR {report['combined']['fpr']:.2f}, "
              f"misses {report['combined']['misses']} (one threshold per rank)")
        emit(report)
    return 0

