"""`tuneguard scan` against careless and hostile inputs (issue 17): each broken adapter is its own row and never
stops the scan, NaN/inf weights and LoRA pairs that would not load cannot hide a flagged adapter, the tensors' rank
decides, skipped paths are listed, and a weight-only scan never imports torch."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from functools import partial

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from helpers import BOOST, synthetic_adapter, synthetic_cohort, weights_calibration
from tuneguard.adapters import DETECTORS, Detector, DetectorResult, calibrate, read_adapter
from tuneguard.adapters.safetensors_io import load_tensors
from tuneguard.adapters.scan import EXIT_CODES, scan_adapters
from tuneguard.adapters.synthetic import write_synthetic_adapter
from tuneguard.errors import TuneguardError

# The shapes of tuneguard's tiny Llama (width 64, MLP 128, 2 KV heads of 16), so that --base tiny-llama fits.
TINY = {"self_attn.q_proj": (64, 64), "self_attn.v_proj": (64, 32), "mlp.down_proj": (128, 64)}
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
FAKE = "base_model.model.model.layers.0.self_attn.zz_proj"  # a module no Llama has
adapter = partial(synthetic_adapter, modules=TINY, layers=2)
cohort = partial(synthetic_cohort, make=adapter)


def edit_config(path, **changes):
    cfg = json.loads((path / CONFIG).read_text())
    (path / CONFIG).write_text(json.dumps({**cfg, **changes}))


def add_tensors(path, tensors):
    weights = path / WEIGHTS
    save_file({**load_file(str(weights)), **tensors}, str(weights))


def raw_safetensors(path, header, data: bytes, *, length: int | None = None) -> None:
    """A safetensors file written byte by byte, so that it can be as broken as a hostile one."""
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)


def rows_by_name(result):
    return {os.path.basename(r.adapter): r for r in result.adapters}


F32 = np.arange(6, dtype=np.float32).tobytes()
ENTRY = {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
BROKEN_WEIGHTS = {
    "truncated data": (lambda p: (p / WEIGHTS).write_bytes((p / WEIGHTS).read_bytes()[:-100]), "not fully covered"),
    "offsets beyond the file": (lambda p: raw_safetensors(p / WEIGHTS, {"x": {**ENTRY, "data_offsets": [0, 2400]}},
                                                          F32), "offset"),
    "shape contradicts offsets": (lambda p: raw_safetensors(p / WEIGHTS, {"x": {**ENTRY, "shape": [2, 4]}}, F32),
                                  "invalid shape"),
    "reversed offsets": (lambda p: raw_safetensors(p / WEIGHTS, {"x": {**ENTRY, "data_offsets": [24, 0]}}, F32),
                         "invalid offset"),
    "overlapping tensors": (lambda p: raw_safetensors(p / WEIGHTS, {"x": ENTRY, "y": ENTRY}, F32), "invalid offset"),
    "header is a list": (lambda p: raw_safetensors(p / WEIGHTS, [1, 2], F32), "invalid JSON in header"),
    "header is a number": (lambda p: raw_safetensors(p / WEIGHTS, 5, F32), "invalid JSON in header"),
    "entry without offsets": (lambda p: raw_safetensors(p / WEIGHTS, {"x": {"dtype": "F32", "shape": [2, 3]}}, F32),
                              "missing field `data_offsets`"),
    "unknown dtype": (lambda p: raw_safetensors(p / WEIGHTS, {"x": {**ENTRY, "dtype": "Q4"}}, F32), "unknown variant"),
    "huge header length": (lambda p: raw_safetensors(p / WEIGHTS, {}, b"", length=10**15), "header too large"),
    "header not UTF-8": (lambda p: (p / WEIGHTS).write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{}"), "UTF-8"),
    "empty file": (lambda p: (p / WEIGHTS).write_bytes(b""), "header too small"),
    "rank-0 tensors": (lambda p: add_tensors(p, {f"{FAKE}.lora_A.weight": np.array(1.0, np.float32),
                                                 f"{FAKE}.lora_B.weight": np.array(1.0, np.float32)}),
                       "which no LoRA layer has"),
    "LoRA rank 0": (lambda p: add_tensors(p, {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((0, 64), np.float32),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros((64, 0), np.float32)}),
        "all sizes > 0"),
    "unsupported dtype": (lambda p: raw_safetensors(p / WEIGHTS, {
        f"{FAKE}.lora_A.weight": {"dtype": "F8_E4M3", "shape": [2, 3], "data_offsets": [0, 6]},
        f"{FAKE}.lora_B.weight": {"dtype": "F8_E4M3", "shape": [3, 2], "data_offsets": [6, 12]}}, F32[:12]),
        "dtype F8_E4M3, which tuneguard cannot read"),
    "no LoRA tensors": (lambda p: raw_safetensors(p / WEIGHTS, {"x": ENTRY}, F32), "holds no lora_A/lora_B"),
    "weights missing": (lambda p: (p / WEIGHTS).unlink(), "adapter_model.safetensors is missing"),
}
BROKEN_CONFIGS = {
    "r as a string": ({"r": "16"}, "parameter 'r' must be an integer, got '16'"),
    "lora_alpha as a string": ({"lora_alpha": "16"}, "parameter 'lora_alpha' must be a number, got '16'"),
    "negative r": ({"r": -1}, "parameter 'r' must be >= 0"),
    "use_rslora as a string": ({"use_rslora": "yes"}, "parameter 'use_rslora' must be true or false"),
    "alpha_pattern regex": ({"alpha_pattern": {"q_proj(": 4}}, "alpha_pattern key 'q_proj\\(' is not a valid regular"),
    "rank_pattern value": ({"rank_pattern": {"q_proj": "2"}}, "rank_pattern' must map patterns to positive integers"),
    "target_modules regex": ({"target_modules": "(q|v_proj"}, "target_modules is not a valid regular expression"),
    "another PEFT type": ({"peft_type": "IA3"}, "is a IA3 adapter; only LoRA"),
}


@pytest.mark.parametrize("case", [*BROKEN_WEIGHTS, *BROKEN_CONFIGS])
def test_a_broken_adapter_is_one_error_row_and_the_scan_goes_on(tmp_path, case):
    clean, poisoned = cohort(tmp_path / "cal")
    cal = weights_calibration(clean, poisoned)
    adapter(tmp_path / "scan" / "a-good", seed=7)
    broken = adapter(tmp_path / "scan" / "b-broken", seed=8)
    if case in BROKEN_WEIGHTS:
        breaks, message = BROKEN_WEIGHTS[case]
        breaks(broken)
    else:
        changes, message = BROKEN_CONFIGS[case]
        edit_config(broken, **changes)
    result = scan_adapters([tmp_path / "scan"], [cal])
    rows = rows_by_name(result)
    assert rows["a-good"].verdict == "clean"
    row = rows["b-broken"]
    assert row.verdict == "error" and row.reason and "\n" not in row.reason
    assert message.replace("\\", "") in row.reason and str(broken) in row.reason
    assert result.exit_code == 2
    assert result.to_json()["adapters"][1] == {"adapter": str(broken), "verdict": "error", "reason": row.reason}
    assert "error" in result.table() and row.reason in result.table()


def test_an_unexpected_failure_is_a_row_too(tmp_path):
    class Crashing(Detector):
        name = "crashing"
        summary = "raises what no one expected"
        statistics = ("x",)
        default_statistic = "x"

        def score(self, adapter):
            if adapter.path.name == "b":
                raise RuntimeError("boom\nsecond line")
            return DetectorResult(self.name, str(adapter.path), {"x": 1.0})

    adapter(tmp_path / "a")
    adapter(tmp_path / "b", seed=1)
    rows = rows_by_name(scan_adapters([tmp_path], detectors=[DETECTORS.make("weights"), Crashing()]))
    assert rows["a"].verdict == "unverified" and rows["b"].verdict == "error"
    assert rows["b"].detectors["weights"].verdict == "unverified"  # the other detector still scored it
    assert rows["b"].detectors["crashing"].note.endswith("unexpected RuntimeError: boom (rerun with -v for the "
                                                         "traceback)")


def test_the_nan_pair_for_a_missing_module_does_not_hide_a_flagged_adapter(tmp_path):
    """The evasion in issue 17: a flagged adapter plus one NaN LoRA pair for a module the base lacks was `clean`."""
    clean, poisoned = cohort(tmp_path / "cal")
    cal = weights_calibration(clean, poisoned)
    target = adapter(tmp_path / "scan" / "evil", seed=200, boost=BOOST)
    assert scan_adapters([target], [cal]).exit_code == 1
    nan = np.full((4, 64), np.nan, np.float32)
    add_tensors(target, {f"{FAKE}.lora_A.weight": nan, f"{FAKE}.lora_B.weight": nan.T.copy()})
    for targets in (None, ["q_proj", "v_proj", "down_proj", "zz_proj"]):  # the pair not targeted / targeted too
        edit_config(target, target_modules=targets or ["down_proj", "q_proj", "v_proj"])
        result = scan_adapters([target], [cal])
        (row,) = result.adapters
        assert row.verdict == "flagged" and result.exit_code == 1
        assert row.findings == [f"tensor {FAKE}.lora_A.weight has 256 of 256 values NaN",
                                f"tensor {FAKE}.lora_B.weight has 256 of 256 values NaN"]
    # untargeted: the pair would not load, so the statistic is the finite one, and it flags on its own
    edit_config(target, target_modules=["down_proj", "q_proj", "v_proj"])
    (row,) = scan_adapters([target], [cal]).adapters
    assert row.detectors["weights"].verdict == "flagged"
    assert row.not_loaded == {"model.layers.0.self_attn.zz_proj": "not in target_modules"}


def test_with_a_base_the_missing_module_is_left_out_of_the_statistics(tmp_path):
    from tuneguard.models import tiny_model

    base = tiny_model("llama")
    clean, poisoned = cohort(tmp_path / "cal")
    cal = weights_calibration(clean, poisoned)
    target = adapter(tmp_path / "evil", seed=200, boost=BOOST)
    before = DETECTORS.make("weights").score(read_adapter(target)).statistics
    edit_config(target, target_modules=["down_proj", "q_proj", "v_proj", "zz_proj"])
    rng = np.random.default_rng(0)  # finite, so only the module check can keep it out of the statistic
    add_tensors(target, {f"{FAKE}.lora_A.weight": rng.standard_normal((4, 64), dtype=np.float32),
                         f"{FAKE}.lora_B.weight": np.zeros((64, 4), np.float32)})
    assert DETECTORS.make("weights").score(read_adapter(target)).statistics != before  # without a base: counted
    result = scan_adapters([target], [cal], base=base)
    (row,) = result.adapters
    assert row.detectors["weights"].statistics == before and row.verdict == "flagged" and result.exit_code == 1
    assert row.not_loaded == {"model.layers.0.self_attn.zz_proj": "the base model tiny-llama has no such module"}
    assert "1 LoRA module(s) would not load" in row.warnings[0]
    # an adapter none of whose modules the base has was trained for another base: an error row
    other = write_synthetic_adapter(tmp_path / "other", modules={"attn.c_attn": (64, 192)}, layers=2, r=4,
                                    base_model="tiny-llama")
    (row,) = scan_adapters([other], base=base).adapters
    assert row.verdict == "error" and "has none of the adapter's 2 LoRA modules" in row.reason


def test_without_a_base_a_module_no_other_adapter_has_is_reported(tmp_path):
    adapter(tmp_path / "a")
    adapter(tmp_path / "b", seed=1)
    odd = adapter(tmp_path / "c", seed=2)
    edit_config(odd, target_modules=["down_proj", "q_proj", "v_proj", "zz_proj"])
    add_tensors(odd, {f"{FAKE}.lora_A.weight": np.ones((4, 64), np.float32),
                      f"{FAKE}.lora_B.weight": np.ones((64, 4), np.float32)})
    rows = rows_by_name(scan_adapters([tmp_path]))
    assert rows["a"].warnings == rows["b"].warnings == []
    assert rows["c"].warnings == [
        "1 LoRA module(s) that no other adapter of base 'tiny-llama' in this scan has: "
        "model.layers.0.self_attn.zz_proj; they are counted, as tuneguard cannot tell without --base whether they load"]
    # alone, nothing to compare with: no warning, and the statistics are the same (they never depend on the others)
    (alone,) = scan_adapters([odd]).adapters
    assert alone.warnings == [] and alone.detectors["weights"].statistics == rows["c"].detectors["weights"].statistics


@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf])
def test_all_non_finite_adapters_are_flagged_not_clean(tmp_path, fill):
    clean, poisoned = cohort(tmp_path / "cal")
    cal = weights_calibration(clean, poisoned)
    bad = adapter(tmp_path / "bad", seed=9)
    add_tensors(bad, {k: np.full_like(v, fill) for k, v in load_file(str(bad / WEIGHTS)).items()})
    for cals in ([cal], []):  # a finding needs no calibration
        result = scan_adapters([bad], cals)
        (row,) = result.adapters
        assert row.verdict == "flagged" and result.exit_code == 1 and len(row.findings) == 12
        assert row.detectors["weights"].verdict == "unverified"  # a NaN statistic is never judged clean
    from tuneguard.cli import main

    assert main(["backdoor", "calibrate", *map(str, clean), str(bad), "--out", str(tmp_path / "c.json")]) == 2
    assert not (tmp_path / "c.json").exists()
    with pytest.raises(TuneguardError, match="non-finite weights"):
        det = DETECTORS.make("weights")
        calibrate(det, [det.score(read_adapter(p)) for p in [*clean, bad]], base_model=None, rank=4, lora_alpha=8,
                  use_rslora=False, task=None)


def test_the_tensors_rank_decides_and_a_contradicting_config_is_reported(tmp_path):
    clean, poisoned = cohort(tmp_path / "cal")
    cal = weights_calibration(clean, poisoned)
    for r in (0, 16):  # config says 0 or 16, the tensors have rank 4
        path = adapter(tmp_path / f"r{r}", seed=100, boost=BOOST)
        edit_config(path, r=r)
        (row,) = scan_adapters([path], [cal]).adapters
        assert row.rank == 4 and row.verdict == "flagged"
        assert row.warnings == [f"adapter_config.json gives rank {r} but the tensors of 6 of 6 modules have another "
                                "(e.g. model.layers.0.mlp.down_proj: rank 4); the tensors' rank 4 is used"]
    reverse = adapter(tmp_path / "reverse", r=16, seed=100, boost=BOOST)
    edit_config(reverse, r=4)  # config says 4, the tensors have rank 16: a rank-4 calibration does not apply
    (row,) = scan_adapters([reverse], [cal]).adapters
    assert row.rank == 16 and row.verdict == "not-comparable" and row.detectors["weights"].note == \
        "not comparable to the calibration: rank 16 is not the calibrated rank 4"
    assert "the tensors' rank 16 is used" in row.warnings[0]


def test_rank_pattern_is_not_a_mismatch(tmp_path):
    path = adapter(tmp_path / "a")
    edit_config(path, r=8, rank_pattern={"q_proj": 4, "v_proj": 4, "down_proj": 4})
    files = read_adapter(path)
    assert files.rank == 4 and files.rank_mismatch() is None


def test_skipped_paths_are_listed_with_why(tmp_path):
    root = tmp_path / "scan"
    adapter(root / "plain")
    adapter(tmp_path / "elsewhere" / "linked")
    adapter(tmp_path / "elsewhere" / "deeper" / "x")
    os.symlink(tmp_path / "elsewhere" / "linked", root / "link-to-adapter")
    os.symlink(tmp_path / "elsewhere" / "deeper", root / "link-to-tree")
    os.symlink(root / "plain", root / "zz-same")
    weights_only = root / "weights-only"
    weights_only.mkdir()
    (weights_only / WEIGHTS).write_bytes((root / "plain" / WEIGHTS).read_bytes())
    adapter(root / ".tmp-unfinished")
    result = scan_adapters([root])
    rows = rows_by_name(result)
    assert set(rows) == {"plain", "link-to-adapter", "link-to-tree", "zz-same", "weights-only", ".tmp-unfinished"}
    assert rows["plain"].verdict == rows["link-to-adapter"].verdict == "unverified"  # scanned
    assert rows["weights-only"].verdict == "error" and "adapter_config.json is missing" in rows["weights-only"].reason
    assert rows["link-to-tree"].verdict == "skipped"
    assert rows["link-to-tree"].reason.startswith(f"symlinked directory (-> {tmp_path / 'elsewhere' / 'deeper'}), "
                                                  "not followed")
    assert rows["zz-same"].verdict == "skipped" and rows["zz-same"].reason.startswith("the same directory as ")
    assert rows[".tmp-unfinished"].verdict == "skipped" and "hidden directory" in rows[".tmp-unfinished"].reason
    assert result.exit_code == 2
    skipped = [r for r in result.to_json()["adapters"] if r["verdict"] == "skipped"]
    assert len(skipped) == 3 and all(r["reason"] for r in skipped)


def test_bf16_weights_read_as_float32(tmp_path):
    bits = np.array([0x3F80, 0xC000, 0x7FC0, 0x0000], dtype="<u2")  # 1, -2, NaN, 0
    raw_safetensors(tmp_path / "w.safetensors", {"x": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]},
                                                 "y": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}},
                    bits.tobytes() + np.float32(5).tobytes())
    got = load_tensors(tmp_path / "w.safetensors")
    assert got["x"].dtype == np.float32 and got["x"].shape == (2, 2)
    assert np.array_equal(got["x"], np.array([[1, -2], [np.nan, 0]], np.float32), equal_nan=True)
    assert got["y"].tolist() == [5.0]
    path = adapter(tmp_path / "bf16", dtype="float32")
    tensors = load_file(str(path / WEIGHTS))
    key = next(iter(tensors))
    # a NaN in a bf16 tensor is found like any other
    header = {k: {"dtype": "F32", "shape": list(v.shape)} for k, v in tensors.items()}
    data, offset = b"", 0
    for k, v in tensors.items():
        chunk = (v.view(np.uint32) >> 16).astype("<u2")
        if k == key:
            chunk[0, 0] = 0x7FC0
        header[k].update(dtype="BF16", data_offsets=[offset, offset + chunk.nbytes])
        data, offset = data + chunk.tobytes(), offset + chunk.nbytes
    raw_safetensors(path / WEIGHTS, header, data)
    (row,) = scan_adapters([path]).adapters
    assert row.verdict == "flagged" and row.findings == [f"tensor {key} has 1 of {tensors[key].size} values NaN"]


def test_cli_scan_of_a_mixed_directory_gives_every_adapter_its_row(tmp_path, capsys):
    import torch

    from tuneguard.cli import main

    clean, poisoned = cohort(tmp_path / "cal")
    weights_calibration(clean, poisoned).save(tmp_path / "cal.json")
    root = tmp_path / "mixed"
    adapter(root / "good", seed=7)
    adapter(root / "flagged", seed=300, boost=BOOST)
    broken = adapter(root / "broken", seed=8)
    (broken / WEIGHTS).write_bytes((broken / WEIGHTS).read_bytes()[:-40])
    pickled = root / "pickled"
    pickled.mkdir()
    (pickled / CONFIG).write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    torch.save({"w": torch.zeros(1)}, pickled / "adapter_model.bin")
    out_json = tmp_path / "scan.json"
    capsys.readouterr()
    code = main(["scan", str(root), "--calibration", str(tmp_path / "cal.json"), "--json", str(out_json)])
    out, err = capsys.readouterr()
    assert code == 1  # a flagged adapter wins over the ones that could not be read
    verdicts = {os.path.basename(r["adapter"]): r["verdict"] for r in json.loads(out_json.read_text())["adapters"]}
    assert verdicts == {"good": "clean", "flagged": "flagged", "broken": "error", "pickled": "refused"}
    table = {line.split()[0].rsplit("/", 1)[-1]: line for line in out.splitlines()[2:]}
    assert set(table) == set(verdicts) and "not fully covered" in table["broken"] and "pickle" in table["pickled"]
    assert "Traceback" not in err and f"refused {pickled}: " in err and f"error {broken}: " in err
    assert json.loads(out_json.read_text())["exit_code"] == 1
    # without the flagged one: 2, some could not be read
    assert main(["scan", str(root / "good"), str(broken), str(pickled), "--calibration", str(tmp_path / "cal.json")]) \
        == 2
    assert main(["scan", str(root / "good"), "--calibration", str(tmp_path / "cal.json")]) == 0
    assert main(["scan", str(root / "good"), str(tmp_path / "missing")]) == 2  # a typo is a row, not the end


def test_scan_help_documents_the_exit_codes():
    import argparse

    from tuneguard.commands import scan

    parser = argparse.ArgumentParser(prog="tuneguard")
    scan.register(parser.add_subparsers())
    text = " ".join(parser._subparsers._group_actions[0].choices["scan"].format_help().split())
    assert "exit status:" in text and " ".join(EXIT_CODES.split()) in text
    for code in ("0 every adapter scanned and none flagged", "1 some adapter flagged", "2 some path could not be",
                 "3 calibrations were given"):
        assert code in text


def test_a_weight_only_scan_never_imports_torch(tmp_path):
    path = adapter(tmp_path / "a")
    script = textwrap.dedent(f"""
        import sys
        from tuneguard.cli import main  # the whole command line: parsing, the device settings, the scan
        code = main(["scan", {str(path)!r}, "--json", {str(tmp_path / "s.json")!r}])
        heavy = sorted(m for m in ("torch", "transformers", "peft", "accelerate") if m in sys.modules)
        print("RESULT", code, heavy)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "RESULT 0 []" in done.stdout
    assert json.loads((tmp_path / "s.json").read_text())["adapters"][0]["detectors"]["weights"]["statistics"]
