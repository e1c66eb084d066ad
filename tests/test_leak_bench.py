"""bench/leak_bench.py's committed table: its command line reads back as the one that ran, and each row names its
cell."""

from __future__ import annotations

import shlex
import sys
from types import SimpleNamespace

from helpers import load_script


def test_the_command_line_keeps_an_empty_argument(monkeypatch):
    bench = load_script("bench/leak_bench")
    argv = ["--suites", "all,fast", "--cells", "", "--out", "/tmp/a b"]
    monkeypatch.setattr(sys, "argv", ["leak_bench.py", *argv])
    args = SimpleNamespace(model="smollm2-135m", members=4, nonmembers=4, max_length=96, shots=1, suites="fast")
    line = next(line for line in bench.markdown({"targets": {}}, args).splitlines() if line.startswith("Command:"))
    assert shlex.split(line.removeprefix("Command: ").strip("`")) == ["python", "bench/leak_bench.py", *argv]


def test_rows_of_the_same_attack_in_two_cells_are_told_apart_and_an_unmeasurable_tpr_is_a_dash():
    bench = load_script("bench/leak_bench")
    args = SimpleNamespace(model="smollm2-135m", members=4, nonmembers=4, max_length=96, shots=1, suites="fast")
    row = {"attack": "ratio", "auc": 0.9, "auc_ci": [0.8, 1.0], "tpr@0.1%": None, "tpr@0.1%_ci": None,
           "tpr@1%": 0.4, "tpr@1%_ci": [0.2, 0.6], "tpr@10%": 0.7, "tpr@10%_ci": [0.6, 0.8],
           "forward_passes": 8, "seconds": 1.0}
    target = {"train": {"config": {"epochs": 3, "lr": 1e-4}}, "suites": {}, "comparisons": {},
              "rows": [{**row, "cell": "suite-fast"}, {**row, "cell": "shadows", "forward_passes": 0}]}
    lines = bench.markdown({"targets": {"full": target}}, args).splitlines()
    assert "ReCall shots" not in lines[2]  # only `all` draws them
    args.suites = "all,fast"
    assert "1 non-member and 1 member texts are ReCall shots" in bench.markdown({"targets": {}}, args)
    assert [line.split(" | ")[:4] for line in lines if "| ratio |" in line] == [
        ["| suite-fast", "ratio", "0.900 [0.800, 1.000]", "-"], ["| shadows", "ratio", "0.900 [0.800, 1.000]", "-"]]
