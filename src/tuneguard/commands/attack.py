"""`tuneguard attack`: run membership inference attacks on a model with known members and non-members."""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import TYPE_CHECKING

from tuneguard.attacks import ATTACKS, DEFAULT_SHADOWS, DEFAULT_SUITE, SUITES, shadow_attacks
from tuneguard.attacks.options import AttackOptions
from tuneguard.attacks.result import MIAResult
from tuneguard.commands import add_device_args, add_params, number, output
from tuneguard.commands.finetune import read_texts
from tuneguard.data import clean_texts, load_texts
from tuneguard.errors import TuneguardError

if TYPE_CHECKING:  # the shadows import torch: only when a run asks for them, not to build the parser
    from tuneguard.attacks.shadows import ShadowSpec

# Where the help text lists every attack with its declared parameters (filled in only when help is shown).
ATTACKS_HELP = "\x00attacks\x00"


def attacks_listing() -> str:
    """The suites' members and every attack's declaration (``Attack.help()``), as `attack --help` lists them: made
    from the declarations each time (the attack modules import no torch, scikit-learn or SciPy until they run)."""
    suites = [f"{name}: {', '.join(suite.members())}" + "".join(
        f" ({attack}.{key}={value})" for attack, values in suite.params.items() for key, value in values.items())
              for name, suite in SUITES.items()]
    attacks = [ATTACKS.get(name).help() for name in ATTACKS]
    return "\n".join(["suites (--attacks SUITE):", *suites, "",
                      "attacks and their parameters (--param ATTACK.NAME=VALUE):", *attacks])


class AttackHelpFormatter(argparse.HelpFormatter):
    """Help with the suites' members and the attacks' declarations (:func:`attacks_listing`) in place of
    ``ATTACKS_HELP``, verbatim."""

    def add_text(self, text: str | None) -> None:
        if text is None or ATTACKS_HELP not in text:
            return super().add_text(text)
        before, _, after = text.partition(ATTACKS_HELP)
        super().add_text(before.strip() or None)
        listing = attacks_listing()
        self._add_item(lambda: listing + "\n", [])
        super().add_text(after.strip() or None)


def parse_params(items: list[str] | None) -> dict[str, dict]:
    """``ATTACK.KEY=VALUE`` options into ``{attack: {key: value}}`` (each attack's declaration reads the value)."""
    params: dict[str, dict] = defaultdict(dict)
    for item in items or []:
        head, sep, value = item.partition("=")
        attack, dot, key = head.rpartition(".")
        if not sep or not dot or not attack or not key:
            raise TuneguardError(f"--param {item!r}: expected ATTACK.KEY=VALUE, e.g. min-k.k=0.1")
        params[attack][key] = value
    return dict(params)


def add_attack_args(p: argparse.ArgumentParser, *, plain_names: bool = False) -> None:
    """Options shared by `attack` and `audit`; ``plain_names`` also names the scoring options --batch-size and
    --max-length, and adds --shadow-recipe (for a command without fine-tuning options, which use those names and
    give the shadows their recipe)."""
    p.formatter_class = AttackHelpFormatter
    p.epilog = f"{p.epilog or ''}\n\n{ATTACKS_HELP}"
    g = p.add_argument_group("attacks")
    g.add_argument("--attacks", default=DEFAULT_SUITE,
                   help="comma-separated attacks and suites (both listed below); suites: " + "; ".join(
                       f"{name}: {suite.summary}" for name, suite in SUITES.items()) + "; default: %(default)s")
    g.add_argument("--param", action="append", metavar="ATTACK.KEY=VALUE",
                   help="an attack parameter, repeatable (e.g. min-k.k=0.1, ratio.form=ratio, con-recall.gamma=0.5; "
                        "every attack's parameters are listed below)")
    g.add_argument("--corpus", help="reference corpus file for dc-pdd's token frequencies")
    plain = (lambda name: (name,)) if plain_names else (lambda name: ())
    add_params(g, AttackOptions, flags={
        "n_shots": "--shots", "batch_size": ("--score-batch-size", *plain("--batch-size")),
        "batch_tokens": "--score-batch-tokens", "max_length": ("--score-max-length", *plain("--max-length")),
        "n_boot": "--bootstrap"}, metavars={"batch_size": "N", "batch_tokens": "N", "max_length": "N"},
        helps={"max_length": "score the first N tokens of each text (default: the window the target was trained "
                             "on, from its run record, else the model context; for audit, the training "
                             "--max-length)"})
    sh = p.add_argument_group("shadow models (the owner's self-audit: RMIA and LiRA, offline)")
    sh.add_argument("--shadows", type=number(int, ge=2), metavar="K",
                    help=f"fine-tune K shadows of the target's base with its recipe on seeded halves of --population "
                         f"(cached and reused across audits of the same recipe); adds rmia and lira to the attacks "
                         f"(default with --population: {DEFAULT_SHADOWS})")
    sh.add_argument("--population", metavar="FILE",
                    help="texts from the target's distribution, disjoint from the evaluated ones (an overlap is "
                         "refused) and from its training texts; about twice the target's training set trains each "
                         "shadow on as many texts")
    if plain_names:  # a command that fine-tunes takes the shadows' recipe from its own training options
        sh.add_argument("--shadow-recipe", metavar="FILE",
                        help="the shadows' fine-tuning recipe: a run.json or a JSON object of fine-tuning settings "
                             "(default: the target's run record; needed for an adapter trained elsewhere)")


def attack_options(args: argparse.Namespace) -> dict:
    """Keyword arguments for run_attacks from `add_attack_args` options (and `attack`'s --shadow-recipe)."""
    shadows, attacks = shadow_spec(args), args.attacks
    if shadows is not None:  # named, so a command checking the attacks before it trains knows they will run
        attacks = ",".join([attacks, *shadow_attacks()])
    return {"attacks": attacks, "params": parse_params(args.param), "n_shots": args.shots,
            "corpus": args.corpus, "batch_size": args.score_batch_size, "batch_tokens": args.score_batch_tokens,
            "max_length": args.score_max_length, "n_boot": args.bootstrap, "shadows": shadows}


def shadow_spec(args: argparse.Namespace) -> ShadowSpec | None:
    """The shadow models asked for by --shadows / --population (/ --shadow-recipe), or None."""
    if args.population is None:
        if args.shadows is not None:
            raise TuneguardError("--shadows needs --population FILE: texts from the target's distribution, disjoint "
                                 "from the evaluated ones, for the shadows to train on")
        return None
    from tuneguard.attacks.shadows import ShadowSpec, read_recipe

    recipe = getattr(args, "shadow_recipe", None)
    return ShadowSpec(args.population, k=args.shadows or DEFAULT_SHADOWS, seed=args.seed, column=args.column,
                      recipe=read_recipe(recipe) if recipe else None)


def print_report(result: MIAResult, paths: dict, *, given: str = "given") -> None:
    """The verdict first, then the scoring window (and the scores reused from the score cache), the table, warnings,
    the cost (passes spent, and what the attacks not run would add), the records at risk, what to do next and where
    the report went; ``given`` names how a scoring window the caller
    set was given (e.g. the option)."""
    from tuneguard.files import read_jsonl
    from tuneguard.report.mia import (cost_text, mia_table, next_steps_text, read_not_recorded_text, records_text,
                                      score_cache_text, verdict_text)

    settings = result.settings
    source = given if settings["max_length_source"] == "given" else settings["max_length_source"]
    print(verdict_text(result))
    where = f"; scored on {settings['device']} in {settings['dtype']}" if "device" in settings else ""
    print(f"\nscoring window: {settings['max_length']} tokens per text ({source}){where}")
    read = read_not_recorded_text(result)
    if read:
        print(read)
    cached = score_cache_text(result)
    if cached:
        print(cached)
    print(mia_table(result))
    for warning in result.warnings:
        print(f"warning: {warning}")
    cost = cost_text(result)
    if cost:
        print(f"\n{cost}")
    rows = read_jsonl(paths["exposure"])
    if rows:
        print(f"\n{records_text(rows)}")
    print(f"\n{next_steps_text(result)}")
    print(f"\nreport: {paths['html']}\nresults: {paths['json']}\nrecords at risk: {paths['exposure']}")


def read_records(path: str, column: str | None = None, limit: int | None = None) -> tuple[list[str], list[int]]:
    """The cleaned texts of a file named on the command line and each one's 0-based record number in the file
    (cleaning drops empty texts and repeats, so the two can differ), for the report to name the user's records."""
    raw = load_texts(path, column=column, limit=limit)
    texts = clean_texts(raw, name=path).texts
    first: dict[str, int] = {}
    for i, text in enumerate(raw):
        first.setdefault(text.strip(), i)
    return texts, [first[t] for t in texts]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attack", help="membership inference on a model with known members / non-members",
        description="Score every text under the target (and a reference model), run the attacks, and write "
                    "results.json, ROC plots and report.html to --out. Scores are cached, so re-runs and added "
                    "attacks cost no repeated forward pass.",
        epilog="example: tuneguard attack --target runs/lora --members train.jsonl --nonmembers heldout.jsonl "
               "--out runs/lora/audit")
    p.add_argument("--target", required=True, help="fine-tuned model: adapter dir, model dir, embedded name, hub id")
    p.add_argument("--members", required=True, help="texts the target was trained on")
    p.add_argument("--nonmembers", required=True, help="texts it was not trained on, from the same distribution")
    p.add_argument("--reference", help="reference model of ratio, EZ-MIA, WBC and HT-MIA (default: the target's base "
                                       "model; with neither, the fast suite leaves them out)")
    p.add_argument("--column", help="text column of the member/non-member files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=output(), help="output directory")
    add_attack_args(p, plain_names=True)
    add_device_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tuneguard.attacks import run_attacks
    from tuneguard.report import Members, write_mia_report
    from tuneguard.scoring import main_process

    members, rows = read_records(args.members, args.column)
    nonmembers = read_texts(args.nonmembers, args.column).texts
    result = run_attacks(args.target, members, nonmembers, reference=args.reference, seed=args.seed,
                         **attack_options(args))
    if not main_process():  # under `accelerate launch` every process scored its share; one writes
        return 0
    result.settings["files"] = {"members": args.members, "nonmembers": args.nonmembers}
    paths = write_mia_report(args.out, result, members=Members(members, rows, file=args.members))
    print_report(result, paths, given="--score-max-length")
    return 0
