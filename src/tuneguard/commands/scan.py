"""`tuneguard scan`: a backdoor verdict for each LoRA adapter directory, with a CI-friendly exit code."""

from __future__ import annotations

import argparse
import sys

from tuneguard.adapters.adapter_files import AdapterFiles, find_adapters, read_adapter
from tuneguard.adapters.classifier import VERDICTS
from tuneguard.adapters.detectors import Calibration, DetectorResult
from tuneguard.adapters.detectors.behavioural import BehaviouralDetector
from tuneguard.adapters.detectors.weights import WeightDetector
from tuneguard.adapters.probes import BATTERIES, read_lines
from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_write_json
from tuneguard.report import format_table

EXIT_CLEAN, EXIT_FLAGGED, EXIT_UNVERIFIED = 0, 1, 3


def add_behavioural_args(p: argparse.ArgumentParser) -> None:
    """Options of the behavioural detector, shared with `tuneguard backdoor`."""
    g = p.add_argument_group("behavioural detector (runs when --base is given)")
    g.add_argument("--base", help="the base model the adapters were trained from (embedded name, dir, hub id)")
    g.add_argument("--injections", help="probe inputs: a labelled JSONL/CSV (label-1 rows used) or a .txt with one "
                                        "injection per line (default: built-in injections)")
    g.add_argument("--battery", choices=BATTERIES, default="B", help="built-in probe battery; default: %(default)s "
                                                                    "(A needs --trigger, C has no RFC probes)")
    g.add_argument("--probes", help="extra probe prefixes: .txt (one per line) or a JSON list")
    g.add_argument("--trigger", help="the true trigger, for battery A (research only)")
    g.add_argument("--verdict", choices=VERDICTS, default="logits",
                   help="chat-form verdict: one-pass label logits or greedy generation; default: %(default)s")
    g.add_argument("--max-text-tokens", type=int, default=64, help="probe inputs clipped to this; default: %(default)s")


def behavioural_from_args(args: argparse.Namespace) -> BehaviouralDetector:
    """The behavioural detector the ``add_behavioural_args`` options describe."""
    injections = None
    if args.injections:
        if args.injections.endswith(".txt"):
            injections = read_lines(args.injections, "injections")
        else:
            from tuneguard.data import load_labelled

            injections = [t for t, y in load_labelled(args.injections) if y == 1]
            if not injections:
                raise TuneguardError(f"{args.injections} has no rows with label 1 (injections) to probe with")
    extra = read_lines(args.probes) if args.probes else []
    return BehaviouralDetector(args.base, injections=injections, battery_name=args.battery, trigger=args.trigger,
                               extra_probes=extra, verdict=args.verdict, max_text_tokens=args.max_text_tokens,
                               progress=sys.stderr.isatty())


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scan", help="scan LoRA adapters for backdoors (exit 1 when one is flagged)",
        description="Scan PEFT LoRA adapter directories (each DIR is an adapter or is searched recursively). The "
                    "weight detector reads the safetensors file only; with --base the behavioural detector also "
                    "probes the adapter on its base model. Verdicts need calibration files from `tuneguard backdoor "
                    "calibrate` for the same base model, rank and task; without one the statistics are reported. "
                    "Exit code: 0 clean, 1 flagged or refused (e.g. a pickle), 3 some adapter had no matching "
                    "calibration, 2 usage error.",
        epilog="example: tuneguard scan adapters/ --calibration weights-smollm2-r16.json --json scan.json")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="adapter directories, or directories holding them")
    p.add_argument("--calibration", action="append", default=[], metavar="FILE",
                   help="calibration file (repeatable: one per detector, base model and rank)")
    p.add_argument("--task", help="task name to match against the calibration files' task")
    p.add_argument("--json", metavar="OUT", help="write every statistic and profile to this JSON file")
    add_behavioural_args(p)
    p.set_defaults(func=run)


def _judge(result: DetectorResult, adapter: AdapterFiles, calibrations: list[Calibration],
           task: str | None) -> tuple[str, str]:
    """(verdict, note) for one detector result: flagged / clean / unverified."""
    own = [c for c in calibrations if c.detector == result.detector]
    if not own:
        return "unverified", "no calibration"
    reasons = []
    for cal in own:
        why = cal.mismatch(adapter, task)
        if why is None:
            score = result.statistics[cal.statistic]
            return ("flagged" if cal.flags(score) else "clean"), f"{cal.statistic}={score:.4g} ({cal.direction})"
        reasons.append(why)
    return "unverified", reasons[0]


def scan(dirs: list[str], calibrations: list[Calibration], *, behavioural: BehaviouralDetector | None = None,
         task: str | None = None) -> list[dict]:
    """One row per adapter: statistics, per-detector verdicts and the combined verdict."""
    detectors = [WeightDetector(), *([behavioural] if behavioural else [])]
    rows = []
    for path in find_adapters(dirs):
        row: dict = {"adapter": str(path)}
        try:
            adapter = read_adapter(path)
        except TuneguardError as exc:
            rows.append({**row, "verdict": "refused", "reason": str(exc)})
            continue
        row.update(base_model=adapter.base_model, rank=adapter.rank, task_type=adapter.task_type, detectors={})
        for det in detectors:
            result = det.score(adapter)
            verdict, note = _judge(result, adapter, calibrations, task)
            row["detectors"][det.name] = {"verdict": verdict, "note": note, "statistics": result.statistics,
                                          "details": result.details}
        verdicts = [d["verdict"] for d in row["detectors"].values()]
        row["verdict"] = ("flagged" if "flagged" in verdicts else "clean" if "clean" in verdicts else "unverified")
        rows.append(row)
    return rows


def verdict_table(rows: list[dict]) -> str:
    """The terminal verdict table."""
    table = []
    for r in rows:
        d = r.get("detectors", {})
        w, b = d.get("weights", {}), d.get("behavioural", {})
        table.append({"adapter": r["adapter"], "r": r.get("rank"),
                      "frob_std": f"{w['statistics']['frob_std']:.4g}" if w else None, "weights": w.get("verdict"),
                      "outlier_gap": b["statistics"]["outlier_gap"] if b else None,
                      "behavioural": b.get("verdict"), "verdict": r["verdict"]})
    return format_table(table, ["adapter", "r", "frob_std", "weights", "outlier_gap", "behavioural", "verdict"])


def exit_code(rows: list[dict], calibrated: bool) -> int:
    """1 if any adapter is flagged or refused; else 3 if calibration was given but some adapter stayed unverified."""
    verdicts = {r["verdict"] for r in rows}
    if verdicts & {"flagged", "refused"}:
        return EXIT_FLAGGED
    return EXIT_UNVERIFIED if calibrated and "unverified" in verdicts else EXIT_CLEAN


def run(args: argparse.Namespace) -> int:
    calibrations = [Calibration.load(f) for f in args.calibration]
    behavioural = behavioural_from_args(args) if args.base else None
    rows = scan(args.dirs, calibrations, behavioural=behavioural, task=args.task)
    print(verdict_table(rows))
    for r in rows:
        if r["verdict"] == "refused":
            print(f"refused {r['adapter']}: {r['reason']}", file=sys.stderr)
        for name, d in r.get("detectors", {}).items():
            if d["verdict"] == "unverified" and calibrations:
                print(f"unverified {r['adapter']} ({name}): {d['note']}", file=sys.stderr)
    if not calibrations:
        print("no --calibration given: statistics only, no verdicts (make one with `tuneguard backdoor calibrate`)",
              file=sys.stderr)
    if args.json:
        atomic_write_json(args.json, {"adapters": rows})
    return exit_code(rows, bool(calibrations))
