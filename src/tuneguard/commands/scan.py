"""`tuneguard scan`: a backdoor verdict for each LoRA adapter directory, with a CI-friendly exit code.

The scan itself is ``tuneguard.adapters.scan.scan_adapters``; this module parses the options and prints.
"""

from __future__ import annotations

import argparse
import sys
import textwrap

from tuneguard.adapters.base_models import BaseModels
from tuneguard.adapters.detectors import DETECTORS, Detector, make_detector
from tuneguard.adapters.probes import read_lines
from tuneguard.adapters.scan import EXIT_CODES, UNJUDGED
from tuneguard.commands import add_device_args, add_json_arg, add_params, json_output
from tuneguard.errors import TuneguardError
from tuneguard.report.table import printable

# The behavioural detector's parameters that have an option of their own (a file read, or a name kept from before).
BEHAVIOURAL_OPTIONS = {"injections": "--injections", "battery": "--battery", "extra_probes": "--probes",
                       "trigger": "--trigger", "verdict": "--verdict", "max_text_tokens": "--max-text-tokens"}


def add_detector_args(p: argparse.ArgumentParser, *, several: bool) -> None:
    """``--detector`` (choices from the registry), ``--base`` and the behavioural detector's options; shared with
    `tuneguard backdoor calibrate`. ``several``: repeatable, default every detector that can run."""
    names = DETECTORS.names()
    if several:
        p.add_argument("--detector", action="append", choices=names, metavar="NAME",
                       help=f"detector to run, repeatable: {', '.join(names)}; default: every detector that can run "
                            "(one that needs the base model runs when --base is given)")
    else:
        p.add_argument("--detector", choices=names, default=names[0],
                       help="detector to calibrate; default: %(default)s")
    p.add_argument("--base", help="the base model the adapters were trained from (embedded name, dir, hub id); "
                                  "needed by the behavioural detector")
    # Unset options stay None, so the detector's declared defaults apply (one default per setting, shown here).
    declaration = DETECTORS.get("behavioural").Params
    g = p.add_argument_group("behavioural detector")
    g.add_argument("--injections", help="probe inputs: a labelled JSONL/CSV (label-1 rows used) or a .txt with one "
                                        "injection per line (default: built-in injections)")
    add_params(g, declaration, ["battery"], unset=True)
    g.add_argument("--probes", help="extra probe prefixes: .txt (one per line) or a JSON list")
    add_params(g, declaration, ["trigger", "verdict", "max_text_tokens"], unset=True)
    p.add_argument("--detector-param", action="append", default=[], metavar="NAME.KEY=VALUE",
                   help="a detector parameter, repeatable, checked against the detector's declaration before any "
                        "adapter is read (e.g. behavioural.batch_size=32; the detectors' parameters are listed in "
                        "`tuneguard scan --help`); values are read as JSON where they parse")


def detector_params(items: list[str] | None, running: list[str]) -> dict[str, dict]:
    """``NAME.KEY=VALUE`` options into ``{detector: {key: value}}``, each detector's values checked by its declared
    Params (one line naming the bad name, key or value); a detector that is not among ``running`` is refused."""
    params: dict[str, dict] = {}
    for item in items or []:
        head, sep, value = item.partition("=")
        name, dot, key = head.rpartition(".")
        if not sep or not dot or not name or not key:
            raise TuneguardError(f"--detector-param {item!r}: expected NAME.KEY=VALUE, e.g. behavioural.batch_size=32")
        DETECTORS.check(name)
        params.setdefault(name, {})[key] = value
    for name, values in params.items():
        cls = DETECTORS.get(name)
        cls.Params.create(cls.label(), values)
        if name not in running:
            hint = " (it needs --base)" if cls.needs_base else ""
            raise TuneguardError(f"--detector-param {name}.{next(iter(values))}: detector {name!r} is not being run"
                                 f"{hint}; running: {', '.join(running)}")
    return params


def _behavioural_params(args: argparse.Namespace) -> dict:
    injections = None
    if args.injections:
        if args.injections.endswith(".txt"):
            injections = read_lines(args.injections, "injections")
        else:
            from tuneguard.data import load_labelled

            injections = [t for t, y in load_labelled(args.injections) if y == 1]
            if not injections:
                raise TuneguardError(f"{args.injections} has no rows with label 1 (injections) to probe with")
    given = {"injections": injections, "battery": args.battery, "trigger": args.trigger,
             "extra_probes": read_lines(args.probes) if args.probes else None, "verdict": args.verdict,
             "max_text_tokens": args.max_text_tokens}
    return {k: v for k, v in given.items() if v is not None}


def detectors_from_args(args: argparse.Namespace, names: list[str], *,
                        base: BaseModels | None = None) -> list[Detector]:
    """The detectors ``names`` built from the `add_detector_args` options; those needing the base share ``base``
    (default: ``--base``, loaded when first needed)."""
    params = detector_params(getattr(args, "detector_param", None), names)
    for key, value in _behavioural_params(args).items():
        given = params.setdefault("behavioural", {})
        if key in given:
            raise TuneguardError(f"{BEHAVIOURAL_OPTIONS[key]} and --detector-param behavioural.{key} both set "
                                 f"{key}: keep one")
        given[key] = value
    base = base if base is not None else BaseModels.of(args.base)
    return [make_detector(n, base=base, progress=sys.stderr.isatty(), **params.get(n, {})) for n in names]


def register(sub: argparse._SubParsersAction) -> None:
    description = textwrap.fill(
        "Scan PEFT LoRA adapter directories (each DIR is an adapter or is searched recursively). The weight detector "
        "reads the safetensors files only (the adapter's, and for the deltas of full tensors such as "
        "modules_to_save copies the base model's, from --base or a local copy of the base the adapter names); with "
        "--base the detectors that need the base model also run, and LoRA modules the base lacks are left out of "
        "every statistic. Verdicts need calibration files from `tuneguard backdoor calibrate` made with the same "
        "detector settings (another setting is refused), one per detector, base model, rank and task (two that "
        "would judge the same adapters are refused); an adapter of another kind than a calibration's cohort (base "
        "model, rank (the tensors' rank), LoRA scale, task, task type, target modules, modules_to_save) is "
        "'not-comparable' to it, neither clean nor flagged; without a calibration the statistics are reported "
        "('unverified'). A NaN or inf "
        "weight (or a float64 one beyond float32's range) flags the adapter on its own. An adapter that cannot be "
        "read, or a path the search skips (a symlinked or hidden directory), gets its own row with the reason, and "
        "the scan goes on.", 100)
    description += "\n\nexit status:\n" + textwrap.fill(EXIT_CODES, 100, initial_indent="  ",
                                                         subsequent_indent="  ")
    detectors = "\n\n".join(DETECTORS.get(n).help() for n in DETECTORS)
    p = sub.add_parser(
        "scan", help="scan LoRA adapters for backdoors (exit 1 when one is flagged)", description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"detectors and their parameters:\n{detectors}\n\n"
               "example: tuneguard scan adapters/ --calibration weights-smollm2-r16.json --json scan.json")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="adapter directories, or directories holding them")
    p.add_argument("--calibration", action="append", default=[], metavar="FILE",
                   help="calibration file (repeatable: one per detector, base model, rank and task)")
    p.add_argument("--task", help="task name to match against the calibration files' task")
    add_json_arg(p, "every statistic and profile")
    add_detector_args(p, several=True)
    add_device_args(p)
    p.set_defaults(func=run, loads_models=lambda args: args.base is not None)  # only the behavioural detector does


def run(args: argparse.Namespace) -> int:
    from tuneguard.adapters.scan import scan_adapters

    names = args.detector or [n for n in DETECTORS if args.base or not DETECTORS.get(n).needs_base]
    base = BaseModels.of(args.base)
    with json_output(args) as emit:  # --json alone: the JSON on stdout, the table and notes on stderr
        result = scan_adapters(args.dirs, args.calibration, detectors=detectors_from_args(args, names, base=base),
                               task=args.task, base=base)
        print(result.table())
        # Each line names a path or a tensor from the adapters, either of which may hold a newline: escaped, so
        # that every line is one message.
        lines = [f"note: {note}" for note in result.notes]
        for a in result.adapters:
            lines += [f"{a.verdict} {a.adapter}: {problem}" for problem in ([a.reason] if a.reason else a.findings)]
            lines += [f"warning {a.adapter}: {warning}" for warning in a.warnings]
            lines += [f"{d.verdict} {a.adapter} ({name}): {d.note}" for name, d in a.detectors.items()
                      if d.verdict == "error" or (d.verdict in UNJUDGED and result.calibrated)]
        if not result.calibrated:
            lines.append("no --calibration given: statistics only, no verdicts (make one with `tuneguard backdoor "
                         "calibrate`)")
        for line in lines:
            print(printable(line), file=sys.stderr)
        emit(result.to_json())
    return result.exit_code
