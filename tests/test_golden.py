"""A fixed tiny run whose results.json must not change: every attack of ``all`` plus dc-pdd on a tiny GPT-2 fine-tuned
in the test, compared with tests/data/golden_results.json (run-specific paths and timings masked). Floats are compared
to 1e-4 relative or 1e-5 absolute: the last float32 digits of a forward pass move with the torch / transformers build
(a transformers upgrade moved these scores by up to 6.5e-6 relative), while a change meant to move numbers moves them
by orders of magnitude more (the zlib fix moved an AUC by 0.28). Regenerate it, after a change that is meant to move
numbers, with ``TUNEGUARD_UPDATE_GOLDEN=1 pytest tests/test_golden.py`` and say in the change why the numbers moved.
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
    assert_close(got, json.loads(GOLDEN.read_text(encoding="utf-8")))


def assert_close(got: Any, want: Any, where: str = "results") -> None:
    """``got`` has ``want``'s structure, strings and integers exactly, and its floats to 1e-4 relative or 1e-5
absolute."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: a list of another length"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-5, nan_ok=True), f"{where}: {got} != {want}"
    else:
        assert got == want and type(got) is type(want), f"{where}: {got!r} != {want!r}"
