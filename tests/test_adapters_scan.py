"""The detector registry, calibration files and the checks a scan makes before trusting one, the scan API, and
population scoring with one threshold per rank (synthetic adapters; no model is loaded)."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from helpers import BOOST, synthetic_adapter, synthetic_cohort
from tuneguard.adapters import DETECTORS, Calibration, Detector, DetectorResult, calibrate, read_adapter
from tuneguard.adapters.detectors.behavioural import BehaviouralDetector
from tuneguard.adapters.population import auroc_ci, population_specs, score_population
from tuneguard.adapters.scan import ScanResult, scan_adapters
from tuneguard.adapters.synthetic import write_synthetic_adapter
from tuneguard.cli import build_parser, main
from tuneguard.commands.scan import detectors_from_args
from tuneguard.errors import TuneguardError
from tuneguard.metrics import mann_whitney_auc as _auroc, tpr_at_fpr
from tuneguard.plugin import Plugin

SMALL = {"self_attn.q_proj": (32, 32), "self_attn.v_proj": (32, 16), "mlp.down_proj": (48, 32)}
adapter = partial(synthetic_adapter, modules=SMALL, layers=3)
cohort = partial(synthetic_cohort, make=adapter)


@pytest.mark.parametrize("name", DETECTORS.names())
def test_every_registered_detector_keeps_the_contract(name):
    cls = DETECTORS.get(name)
    assert issubclass(cls, Detector) and issubclass(cls, Plugin)
    assert cls.name == name and cls.kind == "detector" and cls.summary
    assert cls.default_statistic in cls.statistics and len(set(cls.statistics)) == len(cls.statistics)
    assert cls.default_direction in ("higher", "lower", "two-sided")
    cls.Params()  # every declared parameter has a valid default
    assert cls.help().startswith(f"{name}: ")
    with pytest.raises(TuneguardError, match=f"detector '{name}' has no parameter 'nope'"):
        cls(**({"base": "tiny-gpt2"} if cls.needs_base else {}), nope=1)
    with pytest.raises(TuneguardError, match="unknown detector 'nope': choose from weights, behavioural"):
        DETECTORS.get("nope")


def test_behavioural_parameters_are_checked_before_any_model_loads():
    with pytest.raises(TuneguardError, match="parameter 'verdict' must be one of logits, generate"):
        BehaviouralDetector("no-such-model", verdict="sample")
    with pytest.raises(TuneguardError, match="parameter 'max_text_tokens' must be > 0"):
        BehaviouralDetector("no-such-model", max_text_tokens=0)
    det = BehaviouralDetector("no-such-model", injections=["x"], battery="C")
    assert det.settings()["n_injections"] == 1 and "batch_size" not in det.settings() and not det.bases.loaded


def _cal_file(tmp_path, **changes) -> str:
    clean, poisoned = cohort(tmp_path / "pop")
    det = DETECTORS.make("weights")
    cal = calibrate(det, [det.score(read_adapter(p)) for p in clean], statistic=None, base_model="tiny-llama",
                    rank=4, lora_alpha=8, use_rslora=False, task=None)
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({**cal.to_dict(), **changes}))
    return str(path)


@pytest.mark.parametrize("changes, message", [
    ({"thresold": 1.0}, "has no parameter 'thresold'"),
    ({"rank": "four"}, "parameter 'rank' must be an integer, got 'four'"),
    ({"direction": "up"}, "parameter 'direction' must be one of higher, lower, two-sided"),
    ({"clean_scores": [0.1, "x"]}, "parameter 'clean_scores'"),
    ({"format": "tuneguard-backdoor-calibration/1"}, "old calibration file"),
])
def test_a_bad_calibration_file_is_one_line_naming_it(tmp_path, capsys, changes, message):
    path = _cal_file(tmp_path, **changes)
    with pytest.raises(TuneguardError, match=message) as err:
        Calibration.load(path)
    assert path in str(err.value) and "backdoor calibrate" in str(err.value)
    capsys.readouterr()
    assert main(["scan", str(tmp_path / "pop"), "--calibration", path]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and path in err_lines[0]


def test_the_calibration_records_and_compares_the_lora_scale(tmp_path, capsys):
    """Two adapters identical but for lora_alpha: the statistic scales with alpha/r, and a calibration made at one
    alpha gives no verdict at another (nor with rsLoRA)."""
    clean, poisoned = cohort(tmp_path / "a8")
    same = adapter(tmp_path / "a16" / "twin", seed=100, alpha=16, boost=BOOST)  # = poisoned[0] but for alpha
    det = DETECTORS.make("weights")
    s8, s16 = (det.score(read_adapter(p)).statistics["frob_std"] for p in (poisoned[0], same))
    assert s16 == pytest.approx(2 * s8, rel=1e-6)
    rs = read_adapter(same)
    rs.config = rs.config.replace(use_rslora=True)  # alpha / sqrt(r): 16 / 2 against 16 / 4
    assert det.score(rs).statistics["frob_std"] == pytest.approx(2 * s16, rel=1e-6)

    cal = tmp_path / "cal.json"
    assert main(["backdoor", "calibrate", *map(str, clean), "--out", str(cal)]) == 0
    assert json.loads(cal.read_text())["lora_alpha"] == 8
    capsys.readouterr()
    assert main(["scan", str(clean[0]), "--calibration", str(cal)]) == 0
    assert main(["scan", str(same), "--calibration", str(cal)]) == 3  # not judged: the LoRA scale differs
    assert "lora_alpha 16 is not the calibrated lora_alpha 8" in capsys.readouterr().err
    # a cohort mixing two scales cannot share one threshold
    assert main(["backdoor", "calibrate", *map(str, clean[:2]), str(tmp_path / "a16"), "--out",
                 str(tmp_path / "mixed.json")]) == 2
    assert "calibration adapters differ in lora_alpha (8.0, 16.0)" in capsys.readouterr().err
    config = json.loads((same / "adapter_config.json").read_text())
    (same / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 8, "use_rslora": True}))
    assert main(["scan", str(same), "--calibration", str(cal)]) == 3
    assert "use_rslora True is not the calibrated use_rslora False" in capsys.readouterr().err


def test_an_adapter_of_another_kind_is_not_comparable_to_the_calibration(tmp_path, capsys):
    """Calibration files record what the cohort trains; an adapter training other modules, another task type or
    other modules_to_save gets no verdict from it (neither clean nor flagged), whatever its statistic."""
    clean, poisoned = cohort(tmp_path / "pop")
    cal = tmp_path / "cal.json"
    assert main(["backdoor", "calibrate", *map(str, clean), "--poisoned", *map(str, poisoned), "--out", str(cal)]) == 0
    saved = json.loads(cal.read_text())
    assert saved["format"] == "tuneguard-backdoor-calibration/3" and saved["task_type"] == "CAUSAL_LM"
    assert saved["target_modules"] == ["down_proj", "q_proj", "v_proj"] and saved["modules_to_save"] == []
    # q and v only (PEFT's default targets for a Llama), with updates that would be far beyond the threshold
    qv = write_synthetic_adapter(tmp_path / "other" / "qv", modules={k: SMALL[k] for k in ("self_attn.q_proj",
                                 "self_attn.v_proj")}, layers=3, r=4, alpha=8, b_std=0.5, base_model="tiny-llama")
    seq_cls = adapter(tmp_path / "other" / "seq-cls", seed=7)
    config = json.loads((seq_cls / "adapter_config.json").read_text())
    (seq_cls / "adapter_config.json").write_text(json.dumps({**config, "task_type": "SEQ_CLS"}))
    adapter(tmp_path / "other" / "head", seed=8, modules_to_save={"lm_head.weight": np.zeros((4, 32))})
    result = scan_adapters([tmp_path / "other"], [Calibration.load(cal)])
    rows = {r.adapter.rsplit("/", 1)[-1]: r for r in result.adapters}
    assert {n: r.verdict for n, r in rows.items()} == {"head": "not-comparable", "qv": "not-comparable",
                                                      "seq-cls": "not-comparable"}
    assert result.exit_code == 3  # no verdict: as for an adapter no calibration covers
    notes = {n: r.detectors["weights"].note for n, r in rows.items()}
    assert notes == {
        "qv": "not comparable to the calibration: target modules q_proj,v_proj are not the calibrated "
              "down_proj,q_proj,v_proj",
        "seq-cls": "not comparable to the calibration: task type SEQ_CLS is not the calibrated CAUSAL_LM",
        "head": "not comparable to the calibration: modules_to_save lm_head are not the calibrated none"}
    qv_score = rows["qv"].detectors["weights"].statistics["frob_std"]
    assert Calibration.load(cal).flags(qv_score)  # what the threshold alone would have said
    capsys.readouterr()
    assert main(["scan", str(qv), "--calibration", str(cal)]) == 3
    err = capsys.readouterr().err
    assert f"not-comparable {qv} (weights): not comparable to the calibration: target modules" in err
    # one calibration per kind of adapter: accepted together, as they never judge the same adapter
    for_qv = Calibration.load(cal).replace(target_modules=["q_proj", "v_proj"], low=-1.0, high=1.0)
    both = scan_adapters([qv, clean[0]], [Calibration.load(cal), for_qv])
    assert [r.verdict for r in both.adapters] == ["clean", "clean"] and both.exit_code == 0
    # a format-2 file (before target modules were recorded) still loads: nothing to compare, so the threshold
    # judges, on the LoRA-only statistic that format computed, and the scan says so
    old = {k: v for k, v in saved.items() if k not in ("task_type", "target_modules", "modules_to_save", "notes")}
    (tmp_path / "old.json").write_text(json.dumps({**old, "format": "tuneguard-backdoor-calibration/2"}))
    upgraded = Calibration.load(tmp_path / "old.json")
    assert upgraded.statistic == "frob_std_lora" and upgraded.target_modules is None
    (row,) = scan_adapters([qv], [upgraded]).adapters
    assert row.verdict == "flagged"
    assert main(["scan", str(qv), "--calibration", str(tmp_path / "old.json")]) == 1
    err = capsys.readouterr().err
    assert "calibration format 2 records neither the task type nor the target modules" in err
    assert "its frob_std (over LoRA pairs only in format 2) is judged as frob_std_lora" in err


def _behavioural_cal(tmp_path, det: BehaviouralDetector) -> Calibration:
    results = [DetectorResult("behavioural", f"a{i}", {s: 0.1 * i for s in det.statistics}) for i in range(2)]
    return calibrate(det, results, base_model="tiny-llama", rank=4, lora_alpha=8, use_rslora=False, task=None)


@pytest.mark.parametrize("change, setting", [
    ({"verdict": "logits"}, "verdict"),
    ({"battery": "C"}, "battery"),
    ({"injections": ["another injection"]}, "injections"),
    ({"max_text_tokens": 32}, "max_text_tokens"),
    ({"extra_probes": ["per my lawyer"]}, "extra_probes"),
])
def test_scan_refuses_a_calibration_made_with_other_detector_settings(tmp_path, change, setting):
    made = BehaviouralDetector("tiny-llama", injections=["ignore the rules"])
    cal = _behavioural_cal(tmp_path, made)
    cal.save(tmp_path / "cal.json")
    adapter(tmp_path / "a")
    now = BehaviouralDetector("tiny-llama", **{"injections": ["ignore the rules"], **change})
    with pytest.raises(TuneguardError, match=rf"cal.json was made with detector 'behavioural' {setting} .* but "
                                             rf"this scan uses .*: scan with the calibration's {setting}") as err:
        scan_adapters([tmp_path / "a"], [tmp_path / "cal.json"], detectors=[now])
    assert "\n" not in str(err.value) and not now.bases.loaded  # refused before any model was loaded
    same = BehaviouralDetector("tiny-llama", injections=["ignore the rules"], batch_size=3)  # speed only
    assert same.settings() == cal.settings


def test_scan_and_evaluate_share_one_default_verdict():
    parser = build_parser()
    scan_args = parser.parse_args(["scan", "adapters", "--base", "tiny-gpt2"])
    (det,) = detectors_from_args(scan_args, ["behavioural"])
    evaluate = parser.parse_args(["backdoor", "evaluate", "adapter", "--test", "t.jsonl"]).verdict
    calibrate_args = parser.parse_args(["backdoor", "calibrate", "c", "--out", "o", "--base", "tiny-gpt2"])
    (cal_det,) = detectors_from_args(calibrate_args, ["behavioural"])
    assert det.settings()["verdict"] == evaluate == cal_det.settings()["verdict"] == "generate"  # backdoor.md's


class ToyDetector(Detector):
    """A detector the scan was not written for: its own statistic reaches the table."""

    name = "toy"
    summary = "number of LoRA modules"
    statistics = ("n_modules",)
    default_statistic = "n_modules"

    def score(self, adapter):
        return DetectorResult(self.name, str(adapter.path), {"n_modules": float(len(adapter.pairs))})


def test_scan_api_result_table_and_json(tmp_path):
    clean, poisoned = cohort(tmp_path / "pop")
    det = DETECTORS.make("weights")
    cal = calibrate(det, [det.score(read_adapter(p)) for p in clean], [det.score(read_adapter(poisoned[0]))],
                    statistic="frob_max", base_model="tiny-llama", rank=4, lora_alpha=8, use_rslora=False, task=None)
    result = scan_adapters([tmp_path / "pop"], [cal], detectors=[det, ToyDetector()])
    assert isinstance(result, ScanResult) and result.exit_code == 1
    assert result.statistics == {"weights": "frob_max", "toy": "n_modules"}
    header = result.table().splitlines()[0].split()
    assert header == ["adapter", "r", "frob_max", "weights", "n_modules", "toy", "verdict"]
    rows = {r["adapter"].rsplit("/", 1)[-1]: r for r in result.to_json()["adapters"]}
    assert rows["poison1"]["verdict"] == "flagged" and rows["clean0"]["verdict"] == "clean"
    assert rows["clean0"]["detectors"]["toy"] == {"verdict": "unverified", "note": "no calibration",
                                                  "statistics": {"n_modules": 9.0}, "details": {}}
    cal.save(tmp_path / "cal.json")
    assert main(["scan", str(tmp_path / "pop"), "--calibration", str(tmp_path / "cal.json"), "--json",
                 str(tmp_path / "s.json")]) == 1
    written = json.loads((tmp_path / "s.json").read_text())["adapters"]
    expected = json.loads(json.dumps(result.to_json()))["adapters"]
    assert [r["detectors"]["weights"] for r in written] == [r["detectors"]["weights"] for r in expected]
    with pytest.raises(TuneguardError, match="thresholds 'n_modules', which detector 'weights' does not report"):
        scan_adapters([tmp_path / "pop"], [Calibration(**{**cal.to_dict(), "statistic": "n_modules"})])


def test_population_fits_one_threshold_per_rank(tmp_path):
    """Rank-8 clean adapters score above rank-4 poisoned ones: one pooled threshold misses those, one per rank
    does not."""
    members = []
    for r, b_std in ((4, 0.01), (8, 0.2)):
        clean, poisoned = cohort(tmp_path / f"r{r}", r=r, b_std=b_std)
        members += [{"name": p.parent.name + "/" + p.name, "path": str(p), "poisoned": p in poisoned}
                    for p in clean + poisoned]
    report = score_population(members, [DETECTORS.make("weights")], progress=False)
    stat = report["detectors"]["weights"]["frob_std"]
    scores = stat["scores"]
    assert max(scores[f"r8/clean{i}"] for i in range(3)) > max(scores[f"r4/poison{i}"] for i in range(2))
    assert report["ranks"] == [4, 8] and set(stat["per_rank"]) == {"4", "8"}
    assert stat["misses"] == [] and stat["false_alarms"] == [] and stat["tpr_at_fpr_0"] == 1.0
    assert stat["per_rank"]["4"]["threshold"] < stat["per_rank"]["8"]["threshold"]
    assert stat["direction"] == "higher" and stat["auroc"] == 1.0 and report["combined"]["tpr"] == 1.0
    # separated at both ranks, yet 3 clean / 2 poisoned per rank cannot make the AUROC certain (a bootstrap said
    # [1, 1]); pooled over the two ranks the interval is narrower than one rank's
    assert stat["auroc_ci"] == pytest.approx([0.6110, 1.0], abs=1e-4)
    assert stat["per_rank"]["8"]["auroc_ci"] == pytest.approx([0.4389, 1.0], abs=1e-4)
    assert report["auroc_ci_method"].startswith("95% score interval (Newcombe 2006")
    # the FPR > 0 points come from tuneguard.metrics, rank by rank
    r4 = [m for m in members if m["name"].startswith("r4/")]
    y = np.array([m["poisoned"] for m in r4], dtype=int)
    assert stat["per_rank"]["4"]["tpr_at_fpr_0.1"] == tpr_at_fpr(y, [scores[m["name"]] for m in r4], 0.1)
    lone = [m for m in members if m["name"] != "r8/clean1" and m["name"] != "r8/clean2"]
    with pytest.raises(TuneguardError, match="rank 8 has 1 clean adapter"):
        score_population(lone, [DETECTORS.make("weights")], progress=False)
    with pytest.raises(TuneguardError, match="use at least 4"):  # before any adapter is trained
        population_specs(3, 4, ranks=(8, 16))


def test_population_scores_resume_from_the_cache_until_an_adapter_changes(tmp_path):
    clean, poisoned = cohort(tmp_path / "pop")
    members = [{"name": p.name, "path": str(p), "poisoned": p in poisoned} for p in clean + poisoned]
    det = DETECTORS.make("weights")
    first = score_population(members, {"w": det}, progress=False, cache=tmp_path / "scores")
    assert sorted(f.name for f in (tmp_path / "scores" / "w").iterdir()) == sorted(f"{m['name']}.json" for m in members)
    calls, score = [], det.score
    det.score = lambda a: calls.append(a.path.name) or score(a)
    assert score_population(members, {"w": det}, progress=False, cache=tmp_path / "scores") == first
    assert calls == []  # every score came from the cache
    adapter(clean[0], seed=50)  # the same directory, other weights: scored again
    score_population(members, {"w": det}, progress=False, cache=tmp_path / "scores")
    assert calls == ["clean0"]


def test_population_score_cache_stays_inside_its_folder_whatever_the_names(tmp_path):
    # A population file names its members and detectors; '..' and '/' in them once put cached scores elsewhere.
    clean, poisoned = cohort(tmp_path / "pop")
    names = ["../../escape", "a/b", "..", "ok", "new\nline", "/abs"]
    members = [{"name": n, "path": str(p), "poisoned": p in poisoned} for n, p in zip(names, clean + poisoned)]
    score_population(members, {"../w": DETECTORS.make("weights")}, progress=False, cache=tmp_path / "c" / "scores")
    written = [p for p in tmp_path.rglob("*.json") if "pop" not in p.relative_to(tmp_path).parts]
    assert len(written) == len(members)
    assert all((tmp_path / "c" / "scores") in p.parents for p in written)


def test_population_auroc_ci_is_newcombes_score_interval():
    """Newcombe's method 5 against values computed by hand, at a perfect split (where a bootstrap gives [1, 1]) and
    with ties."""
    z = 1.959963984540054
    separated = lambda m, n: [(np.zeros(m), np.ones(n))]  # noqa: E731
    # m = n = 1: N* = 0 and V(t) = t (1 - t), the Wilson interval of one success: 1 / (1 + z^2)
    assert auroc_ci(separated(1, 1)) == pytest.approx([1 / (1 + z**2), 1.0])
    # m = n = 2: N* = 1, and (1 - t)^2 = z^2 t (1 - t) (1 + (1 - t) / (2 - t) + t / (1 + t)) / 4 becomes the cubic
    # (4 + 3 z^2) t^3 - (8 + 3 z^2) t^2 - (4 + 3 z^2) t + 8 = 0 once (1 - t) is divided out
    cubic = np.roots([4 + 3 * z**2, -(8 + 3 * z**2), -(4 + 3 * z**2), 8])
    (by_hand,) = [r.real for r in cubic if abs(r.imag) < 1e-12 and 0 < r.real < 1]
    assert auroc_ci(separated(2, 2)) == pytest.approx([by_hand, 1.0]) and by_hand == pytest.approx(0.3856, abs=1e-4)
    # the study's cohort, 4 clean / 8 poisoned, separated: well below 1, and narrower as the cohort grows
    lows = [auroc_ci(separated(m, 2 * m))[0] for m in (4, 8, 16, 32)]
    assert lows[0] == pytest.approx(0.6619, abs=1e-4) and lows == sorted(lows) and lows[-1] < 1.0
    # ties count half (0.875 here) and the interval lies around the estimate, inside [0, 1]
    rng = np.random.default_rng(3)
    clean, poisoned = rng.integers(0, 4, 7).astype(float), rng.integers(1, 5, 5).astype(float)
    y = np.r_[np.zeros(7), np.ones(5)]
    assert _auroc(clean, poisoned) == pytest.approx(roc_auc_score(y, np.r_[clean, poisoned]))
    groups = [(np.array([0.0, 1.0]), np.array([1.0, 2.0])), (clean, poisoned)]
    low, high = auroc_ci(groups)
    point = (0.875 * 4 + _auroc(clean, poisoned) * 35) / 39
    assert 0.0 < low < point < high < 1.0
    # one group: the bounds solve (point - t)^2 = z^2 V(t) exactly
    m, n, auc = 7, 5, _auroc(clean, poisoned)
    variance = lambda t: t * (1 - t) * (1 + (m + n - 2) / 2 * ((1 - t) / (2 - t) + t / (1 + t))) / (m * n)  # noqa: E731
    for bound in auroc_ci([(clean, poisoned)]):
        assert (auc - bound) ** 2 == pytest.approx(z**2 * variance(bound))
    # the mirror image of a separation gives the mirrored interval
    assert auroc_ci([(np.ones(4), np.zeros(8))]) == pytest.approx([0.0, 1 - lows[0]], abs=1e-9)
