"""The command line made from the declarations: options from Params fields (help, default, range), `defend`'s
sub-commands from the regimes registry, --detector-param checked by the detector's declaration, one declaration of
the attack options (the CLI's, the experiment's and run_attacks'), `attack --help` and every attack module without
torch, --json to stdout, -v after the command."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass
from functools import partial

import pytest

from helpers import synthetic_adapter
from tuneguard.attacks import ATTACKS, Attack
from tuneguard.attacks.options import DEFAULTS, AttackOptions
from tuneguard.cli import build_parser, main
from tuneguard.commands import add_params, class_attributes, json_output, params_from_args
from tuneguard.commands.attack import attacks_listing
from tuneguard.commands.defend import defence_summaries
from tuneguard.commands.finetune import TRAIN_OPTIONS, train_config
from tuneguard.errors import TuneguardError
from tuneguard.files import json_text
from tuneguard.params import Params, param
from tuneguard.regimes import REGIMES
from tuneguard.regimes.base import Regime
from tuneguard.train import TrainConfig

TINY = {"self_attn.q_proj": (64, 64), "self_attn.v_proj": (64, 32), "mlp.down_proj": (128, 64)}
adapter = partial(synthetic_adapter, modules=TINY, layers=2)


def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return parser


def _fresh(code: str, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})


# -- 1. options from a Params declaration ------------------------------------------------------------------------

def test_the_training_options_are_trainconfigs_declarations():
    finetune = _subparser(build_parser(["finetune"]), "finetune")
    actions = {a.dest: a for a in finetune._actions}
    for info in TrainConfig.describe():
        if info.name in TRAIN_OPTIONS and info.name not in ("method", "target_modules"):
            action = actions[info.name]
            assert action.help.startswith(info.help.replace("%", "%%")), info.name  # every one has its help now
            assert action.default == info.default, info.name
    assert "AdamW weight decay" in actions["weight_decay"].help and actions["warmup_ratio"].help
    args = finetune.parse_args(["--model", "m", "--data", "d", "--out", "out"])
    assert train_config(args) == TrainConfig()  # the defaults users have today: the declared ones
    with pytest.raises(SystemExit):  # the declared range, while the line is parsed
        finetune.parse_args(["--model", "m", "--data", "d", "--out", "out", "--warmup-ratio", "2"])


def test_add_params_reads_types_choices_flags_and_unset_defaults():
    @dataclass
    class Options(Params):
        rate: float = param(0.5, "a share (50%)", gt=0, le=1)
        mode: str = param("a", "how", choices=("a", "b"))
        strict: bool = param(False, "refuse more")
        cache: bool = param(True, "keep results")
        name: str | None = param(None, "a name")
        items: list = param([], "some items")

    p = argparse.ArgumentParser()
    added = add_params(p, Options, flags={"rate": ("--rate", "-r")})
    assert params_from_args(p.parse_args([]), added) == dataclasses.asdict(Options())
    args = p.parse_args(["-r", "0.25", "--mode", "b", "--strict", "--no-cache", "--items", "[1, 2]"])
    assert Options.create("test", params_from_args(args, added, drop_none=True)) == Options(
        rate=0.25, mode="b", strict=True, cache=False, items=[1, 2])
    for bad in (["--rate", "0"], ["--mode", "c"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)
    assert "a share (50%); default: 0.5" in p.format_help()
    q = argparse.ArgumentParser()
    unset = add_params(q, Options, ["rate"], unset=True)
    assert params_from_args(q.parse_args([]), unset, drop_none=True) == {}
    assert "default: 0.5" in q.format_help()


# -- 2. `defend` from the regimes registry ------------------------------------------------------------------------

def test_class_attributes_read_without_import_match_the_classes():
    for name in REGIMES:
        cls = REGIMES.get(name)
        assert class_attributes(REGIMES.entry(name), ("summary", "knob")) == {"summary": cls.summary,
                                                                             "knob": cls.knob}
    with pytest.raises(TuneguardError, match="unknown regime 'goldfsh': choose from .*did you mean 'goldfish'"):
        REGIMES.entry("goldfsh")


def test_defend_offers_every_regime_with_a_knob_and_its_summary():
    defend = _subparser(build_parser(["defend"], ["defend", "--help"]), "defend")
    sub = next(a for a in defend._actions if isinstance(a, argparse._SubParsersAction))
    knobbed = [n for n in REGIMES if REGIMES.get(n).knob is not None]
    assert list(sub.choices) == [*knobbed, "compare"]
    listed = {a.dest: a.help for a in sub._choices_actions}
    for name in knobbed:
        assert listed[name] == REGIMES.get(name).summary.split(" (")[0] == defence_summaries()[name]


@pytest.mark.parametrize("argv", [["defend", "--help"], ["defend", "dp", "--help"], ["defend", "goldfish", "--help"]])
def test_defend_help_imports_no_torch(argv):
    run = _fresh("import sys; from tuneguard.cli import main\n"
                 f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
                 "assert 'torch' not in sys.modules, 'torch imported'")
    assert run.returncode == 0, run.stderr


@dataclass
class FakeParams(Params):
    strength: float = param(0.5, "how much is protected", gt=0, le=1)
    seed: int = param(0, "a seed of its own (its option is renamed: --seed is the fine-tuning one)")


class FakeDefence(Regime):
    name = "fake-defence"
    summary = "a defence with no options of its own in defend (for the test)"
    Params = FakeParams
    knob = ("strength", "s")

    def build(self, base, members, cell_dir, train, *, progress=True):
        return base, {"train_size": len(members), "strength": self.params.strength, "seed": self.params.seed,
                      "method": train.method}


def test_a_new_defence_regime_becomes_a_subcommand_with_its_declared_options(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(REGIMES._entries, "fake-defence", f"{__name__}:FakeDefence")
    monkeypatch.setattr(REGIMES, "_loaded", dict(REGIMES._loaded))
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"text number {i} about something"}) + "\n" for i in range(6)))
    with pytest.raises(SystemExit):
        main(["defend", "--help"])
    assert "fake-defence a defence with no options of its own in defend" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["defend", "fake-defence", "--model", "tiny-gpt2", "--data", str(data), "--out", str(tmp_path / "o"),
              "--strength", "2"])
    assert "must be in (0, 1], got 2" in capsys.readouterr().err
    assert main(["defend", "fake-defence", "--model", "tiny-gpt2", "--data", str(data), "--out",
                 str(tmp_path / "o"), "--strength", "0.2", "--fake-defence-seed", "3"]) == 0
    facts = json.loads(capsys.readouterr().out.splitlines()[-2])
    assert facts == {"train_size": 6, "strength": 0.2, "seed": 3, "method": "lora"}


# -- 3. --detector-param ------------------------------------------------------------------------------------------

def test_detector_params_are_checked_by_the_declaration(tmp_path, capsys):
    from tuneguard.commands.scan import detectors_from_args

    parser = build_parser(["scan"])
    args = parser.parse_args(["scan", "x", "--base", "tiny-llama", "--detector-param", "behavioural.batch_size=4",
                              "--detector-param", "behavioural.extra_probes=[\"Note:\"]"])
    (det,) = detectors_from_args(args, ["behavioural"])
    assert det.params.batch_size == 4 and det.params.extra_probes == ["Note:"]
    path = adapter(tmp_path / "a")
    for given, error in (("nope.k=1", "unknown detector 'nope'"),
                         ("behavioural.batchsize=4", "has no parameter 'batchsize'"),
                         ("behavioural.batch_size=0", "parameter 'batch_size' must be > 0, got 0"),
                         ("behavioural.battery=Z", "parameter 'battery' must be one of A, B, C"),
                         ("weights.k=1", "detector 'weights' has no parameter 'k' (parameters: none)"),
                         ("batch_size=4", "expected NAME.KEY=VALUE"),
                         ("behavioural.batch_size=4", "detector 'behavioural' is not being run (it needs --base)")):
        assert main(["scan", str(path), "--detector-param", given]) == 2
        err = capsys.readouterr().err.strip()
        assert error in err and len(err.splitlines()) == 1, err
    args = parser.parse_args(["scan", "x", "--base", "tiny-llama", "--battery", "C",
                              "--detector-param", "behavioural.battery=B"])
    with pytest.raises(TuneguardError, match="--battery and --detector-param behavioural.battery both set"):
        detectors_from_args(args, ["behavioural"])


# -- 4. one declaration of the attack options ---------------------------------------------------------------------

def test_attack_audit_demo_and_compare_read_one_declaration():
    d = AttackOptions()
    parser = build_parser()
    attack = parser.parse_args(["attack", "--target", "t", "--members", "m", "--nonmembers", "n", "--out", "o"])
    audit = parser.parse_args(["audit", "--model", "m", "--data", "d", "--out", "o"])
    compare = parser.parse_args(["defend", "compare", "--model", "m", "--data", "d", "--out", "o"])
    for args in (attack, audit):
        assert (args.shots, args.score_batch_size, args.score_batch_tokens, args.score_max_length, args.bootstrap) \
               == (d.n_shots, d.batch_size, d.batch_tokens, d.max_length, d.n_boot)
    assert (compare.bootstrap, compare.score_batch_size) == (d.n_boot, d.batch_size)
    for argv in (["attack", "--target", "t", "--members", "m", "--nonmembers", "n"],
                 ["audit", "--model", "m", "--data", "d"]):
        with pytest.raises(SystemExit):  # one range for every command: at least one shot
            parser.parse_args([*argv, "--out", "o", "--shots", "0"])


def test_run_attacks_and_the_experiment_file_read_the_same_declaration():
    import inspect

    from tuneguard.attacks.runner import run_attacks
    from tuneguard.experiment.schema import AttackSuite

    defaults = {k: v.default for k, v in inspect.signature(run_attacks).parameters.items()}
    assert {k: defaults[k] for k in DEFAULTS.to_dict()} == DEFAULTS.to_dict()
    suite = {i.name: i for i in AttackSuite.describe()}
    options = {i.name: i for i in AttackOptions.describe()}
    for name in ("batch_size", "n_boot"):  # the same declaration, help and range included
        assert suite[name] == options[name], name
    assert suite["n_shots"].default == options["n_shots"].default and suite["n_shots"].help == options["n_shots"].help
    assert suite["max_length"].default == options["max_length"].default
    assert suite["max_length"].allowed == options["max_length"].allowed
    # Where they differ, on purpose: an experiment file may say 0 shots, the command line asks for one at least;
    # the experiment scores within each regime's training window by default.
    assert AttackSuite(n_shots=0).n_shots == 0
    with pytest.raises(TuneguardError, match="parameter 'n_shots' must be >= 1, got 0"):
        AttackOptions(n_shots=0)
    assert "each regime's training window" in suite["max_length"].help
    # The fields a cell's key is made of (their order included) are unchanged: saved cells stay valid.
    assert list(AttackSuite().to_dict()) == ["attacks", "params", "n_shots", "max_length", "batch_size", "n_boot",
                                             "corpus", "cache"]


# -- 5. `attack --help` and the attack modules without torch -----------------------------------------------------

HEAVY = ("torch", "sklearn", "scipy", "transformers")
HELP = ("import sys; from tuneguard.cli import main\n"
        "try:\n    main(['attack', '--help'])\nexcept SystemExit:\n    pass\n"
        f"print(*[m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)")


def test_attack_help_answers_from_the_declarations_without_importing_torch_on_the_first_call(tmp_path):
    # A fresh process with an empty cache, nothing run before it: the listing is made from the declarations there.
    cache = tmp_path / "cold"
    run = _fresh(HELP, TUNEGUARD_CACHE=str(cache))
    assert run.returncode == 0 and run.stderr.split() == [], run.stderr  # none of HEAVY imported
    assert attacks_listing() in run.stdout and "attacks and their parameters" in run.stdout
    assert all(f"\n{name}: " in run.stdout for name in ATTACKS)
    assert not cache.exists() or not any(cache.rglob("*")), "attack --help wrote to the cache"  # nothing kept


@pytest.mark.parametrize("command", [["audit", "--help"], ["demo", "--help"], ["defend", "compare", "--help"]])
def test_the_other_commands_with_attack_options_show_help_without_torch(command):
    run = _fresh(HELP.replace("['attack', '--help']", repr(command)))
    assert run.returncode == 0 and run.stderr.split() == [], run.stderr


def test_every_attack_module_imports_and_checks_its_parameters_without_torch_sklearn_or_scipy():
    # Importing each registered attack, building it with its defaults (fast's members are found so) and reading its
    # declaration load none of them: they are imported by the code that runs an attack.
    code = ("import sys\nfrom tuneguard.attacks import ATTACKS, SUITES\n"
            "for name in ATTACKS:\n    ATTACKS.get(name).help()\n"
            "for suite in SUITES.values():\n    suite.members()\n"
            f"print(*[m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)")
    run = _fresh(code)
    assert run.returncode == 0 and run.stderr.split() == [], run.stderr


@dataclass
class NewAttackParams(Params):
    depth: int = param(3, "how deep it looks", ge=1)


class NewAttack(Attack):
    name = "x-new"
    summary = "a new attack (for the test)"
    Params = NewAttackParams

    def run(self, ctx):
        raise AssertionError("not run by the test")


def test_a_new_attack_is_in_the_listing_at_once(monkeypatch):
    monkeypatch.setitem(ATTACKS._entries, "x-new", f"{__name__}:NewAttack")
    monkeypatch.setattr(ATTACKS, "_loaded", dict(ATTACKS._loaded))
    listing = attacks_listing()
    assert "\nx-new: a new attack (for the test)\n  depth (int, default 3; >= 1): how deep it looks" in listing


# -- 6. --json with no file: JSON on stdout -----------------------------------------------------------------------

def test_scan_json_alone_writes_valid_json_to_stdout(tmp_path, capsys):
    path = adapter(tmp_path / "a")
    assert main(["scan", str(path), "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)  # stdout is the JSON alone
    assert result["adapters"][0]["adapter"] == str(path)
    assert "no --calibration given" in err and "frob_std" in err  # the table and notes went to stderr
    assert main(["scan", str(path), "--json", str(tmp_path / "scan.json")]) == 0
    out, _ = capsys.readouterr()
    assert json.loads((tmp_path / "scan.json").read_text()) == result and "frob_std" in out  # FILE: as before


def test_json_output_writes_a_file_stdout_or_nothing(tmp_path, capsys):
    with json_output(argparse.Namespace(json="-")) as emit:
        print("human")
        emit({"a": float("nan"), "b": tmp_path})
    out, err = capsys.readouterr()
    assert json.loads(out) == {"a": None, "b": str(tmp_path)} and err == "human\n"
    with json_output(argparse.Namespace(json=tmp_path / "x.json")) as emit:
        emit({"a": 1})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
    assert (tmp_path / "x.json").read_text() == json_text({"a": 1})  # the file and stdout: one JSON
    with json_output(argparse.Namespace()) as emit:
        emit({"a": 1})
    assert not capsys.readouterr().out


# -- 7. -v after the command ----------------------------------------------------------------------------------------

def test_verbose_is_taken_after_the_command_too(tmp_path, capsys):
    parser = build_parser()
    base = ["--target", "t", "--members", "m", "--nonmembers", "n", "--out", "o"]
    assert parser.parse_args(["attack", "-v", *base]).verbose
    assert parser.parse_args(["-v", "attack", *base]).verbose
    assert not parser.parse_args(["attack", *base]).verbose
    assert parser.parse_args(["defend", "dp", "--model", "m", "--data", "d", "--out", "o", "--verbose"]).verbose
    assert parser.parse_args(["backdoor", "poison", "--data", "d", "--out", "o", "--k", "1", "-v"]).verbose
    bad = ["scan", str(adapter(tmp_path / "a")), "--detector-param", "nope.k=1"]
    assert main(bad) == 2  # one line
    with pytest.raises(TuneguardError):  # -v after the command: the traceback, as before it
        main([*bad, "-v"])
