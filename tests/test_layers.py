"""Layers point one way: the renderers and the light commands import no torch (seconds a report or `scan --help`
would wait for nothing)."""

import subprocess
import sys

import pytest

LIGHT = ["tuneguard.report", "tuneguard.report.table", "tuneguard.report.experiment", "tuneguard.report.compare",
         "tuneguard.report.privacy", "tuneguard.commands.scan"]


@pytest.mark.parametrize("module", LIGHT)
def test_importing_a_light_module_imports_no_torch(module):
    # A fresh interpreter: this test process has torch loaded already.
    code = f"import {module}, sys; assert 'torch' not in sys.modules, 'torch imported'"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_the_moved_names_answer_where_they_now_live():
    import tuneguard.attacks as attacks
    from tuneguard.attacks.runner import run_attacks
    from tuneguard.models import device

    assert attacks.run_attacks is run_attacks
    assert not hasattr(device, "add_device_args")  # command-line options live in tuneguard.commands
    with pytest.raises(AttributeError):
        attacks.no_such_name  # noqa: B018
