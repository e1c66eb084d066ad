"""The command line: start-up imports nothing heavy; every command is listed and reachable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tuneguard.cli import COMMANDS, build_parser, command_name, main

HEAVY = ("torch", "transformers", "peft", "sklearn", "matplotlib")


@pytest.mark.parametrize("argv", [["--version"], ["--help"]])
def test_version_and_help_import_no_heavy_library(argv):
    code = ("import sys; from tuneguard.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out


def test_the_listing_names_every_command_with_its_summary(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out
    for module in COMMANDS:
        assert command_name(module) in listing
    assert "list the embedded models" in listing


def test_the_full_parser_registers_every_command():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {command_name(m) for m in COMMANDS}
    assert all(p._actions for p in sub.choices.values())  # registered for real, not the listing's placeholders


def test_a_command_runs_with_only_its_module_registered(capsys):
    assert main(["models"]) == 0
    assert "tiny-gpt2" in capsys.readouterr().out


def test_a_full_disk_mid_run_is_one_line_not_a_traceback(monkeypatch, capsys):
    import errno

    import tuneguard.commands.models as models_command

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/out/results.json")

    monkeypatch.setattr(models_command, "run", full)
    assert main(["models"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no space left on device writing /out/results.json" in err


def test_an_unexpected_os_error_is_not_hidden(monkeypatch):
    import errno

    import tuneguard.commands.models as models_command

    def broken(args):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(models_command, "run", broken)
    with pytest.raises(OSError):
        main(["models"])
