"""A fixed tiny run whose results.json must not change: every attack of ``all`` plus dc-pdd on a tiny GPT-2 fine-tuned
in the test, compared with tests/data/golden_results.json (floats to 10 significant digits, run-specific paths and
timings masked). Regenerate it, after a change that is meant to move numbers, with
``TUNEGUARD_UPDATE_GOLDEN=1 pytest tests/test_golden.py`` and say in the change why the numbers moved.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from tuneguard.attacks import run_attacks
from tuneguard.files import read_json
from tuneguard.models import tiny_model
from tuneguard.report import write_mia_report
from tuneguard.train import TrainConfig, finetune

GOLDEN = Path(__file__).parent / "data" / "golden_results.json"
WORDS = ("the patient dose rose after three weeks of mild therapy while serum levels fell in the cohort and renal "
         "risk stayed low for most adults in the trial").split()


def texts(n: int, seed: int) -> list[str]:
    """``n`` distinct texts of 8 to 40 words, so some are longer than the 32-token training window."""
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        out[" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))).capitalize() + "."] = None
    return list(out)


def projection(value: Any, root: str) -> Any:
    """``value`` with floats to 10 significant digits and ``root`` (the test's directory) masked."""
    if isinstance(value, dict):
        return {k: projection(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [projection(v, root) for v in value]
    if isinstance(value, float):
        return float(f"{value:.10g}")
    if isinstance(value, str):
        return value.replace(root, "<tmp>")
    return value


def test_results_json_of_a_fixed_run_is_unchanged(tmp_path):
    data = texts(24, seed=0)
    members, nonmembers, corpus = data[:9], data[9:18], data[18:]
    target = finetune(tiny_model("gpt2"), members, tmp_path / "target",
                      TrainConfig(method="full", epochs=8, lr=3e-3, batch_size=3, max_length=32), progress=False).model
    result = run_attacks(target, members, nonmembers, attacks=["all", "dc-pdd"], corpus=corpus, n_shots=2, n_boot=50,
                         seed=0, progress=False, title="golden run")
    saved = read_json(write_mia_report(tmp_path / "report", result)["json"])
    saved["cost"]["seconds"] = {name: "<seconds>" for name in saved["cost"]["seconds"]}  # wall-clock: varies
    got = projection(saved, str(tmp_path))
    if os.environ.get("TUNEGUARD_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=1) + "\n", encoding="utf-8")
        pytest.skip(f"wrote {GOLDEN}")
    assert got == json.loads(GOLDEN.read_text(encoding="utf-8"))
