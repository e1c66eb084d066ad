"""bench/leak_bench.py's committed table: its command line reads back as the one that ran."""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

BENCH = Path(__file__).resolve().parents[1] / "bench" / "leak_bench.py"


def test_the_command_line_keeps_an_empty_argument(monkeypatch):
    spec = importlib.util.spec_from_file_location("leak_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--suites", "all,fast", "--cells", "", "--out", "/tmp/a b"]
    monkeypatch.setattr(sys, "argv", ["leak_bench.py", *argv])
    args = SimpleNamespace(model="smollm2-135m", members=4, nonmembers=4, max_length=96, shots=1)
    line = next(line for line in bench.markdown({"targets": {}}, args).splitlines() if line.startswith("Command:"))
    assert shlex.split(line.removeprefix("Command: ").strip("`")) == ["python", "bench/leak_bench.py", *argv]
