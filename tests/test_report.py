"""The MIA report (results.json, ROC PNGs, report.html, terminal table) and the generic report pieces."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from tuneguard.attacks.result import AttackResult, MIAResult
from tuneguard.errors import TuneguardError
from tuneguard.files import read_json
from tuneguard.metrics import evaluate
from tuneguard.report import (confounding_warning, format_table, html_page, html_table, img_tag, mia_table,
                              roc_figures, write_mia_report)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONFOUNDED = "confounded"


def _attack(y: np.ndarray, scores: np.ndarray, note: str | None = None) -> AttackResult:
    return AttackResult(scores=scores, raw=-scores, raw_name="-score", labels=y, params={"k": 0.2},
                        metrics=evaluate(y, scores, n_boot=200), note=note)


def _result(bow_shift: float | None = 0.0, n: int = 100) -> MIAResult:
    """Two model attacks plus, unless ``bow_shift`` is None, a bag-of-words whose scores shift members by it."""
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(n, int), np.zeros(n, int)]
    attacks = {"loss": _attack(y, rng.normal(size=2 * n) + 0.8 * y, note="higher = member"),
               "zlib": _attack(y, rng.normal(size=2 * n) + 0.3 * y)}
    if bow_shift is not None:
        attacks["bag-of-words"] = _attack(y, rng.normal(size=2 * n) + bow_shift * y)
    return MIAResult(title="MIA on tiny-gpt2", settings={"target": "tiny-gpt2", "seed": 0, "params": {"loss": {}}},
                     warnings=["3 texts were truncated"],
                     skipped=[{"index": 4, "label": 1, "reason": "no token to score", "text": "<b>x</b>"}],
                     attacks=attacks)


def test_report_files_are_written(tmp_path):
    paths = write_mia_report(tmp_path / "out", _result())
    assert set(paths) == {"json", "exposure", "loglog", "linear", "html"}
    assert paths["exposure"] == tmp_path / "out" / "exposure.jsonl"
    assert paths["loglog"].name == "roc_loglog.png" and paths["linear"].name == "roc_linear.png"
    for key in ("loglog", "linear"):
        assert paths[key].read_bytes().startswith(PNG_MAGIC)
    assert paths["json"] == tmp_path / "out" / "results.json"
    assert paths["html"].read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_results_json_round_trips(tmp_path):
    result = _result()
    loaded = read_json(write_mia_report(tmp_path, result)["json"])
    assert loaded["title"] == result.title and loaded["skipped"] == result.skipped
    for name, attack in result.attacks.items():
        assert loaded["attacks"][name]["metrics"] == attack.metrics
        assert loaded["attacks"][name]["scores"] == attack.scores.tolist()
        assert loaded["attacks"][name]["labels"] == attack.labels.tolist()
    assert loaded["confounding_warning"] is None
    again = MIAResult.from_json(loaded)  # a saved run reads back into the same typed result
    assert list(again.attacks) == list(result.attacks) and again.attacks["loss"].auc == result.attacks["loss"].auc
    np.testing.assert_array_equal(again.attacks["zlib"].scores, result.attacks["zlib"].scores)


def test_html_is_self_contained(tmp_path):
    page = write_mia_report(tmp_path, _result(bow_shift=1.5))["html"].read_text(encoding="utf-8")
    sources = re.findall(r"""\bsrc\s*=\s*["']?([^"' >]*)""", page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"\bhref\s*=|<link\b|<script\b|@import|url\(", page)
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page  # user text is escaped
    assert "no token to score" in page and "3 texts were truncated" in page and "tiny-gpt2" in page


@pytest.mark.parametrize(("shift", "warned"), [(1.5, True), (-1.5, True), (0.0, False), (None, False)])
def test_confounding_warning_when_and_only_when_blind_baseline_beats_chance(tmp_path, shift, warned):
    result = _result(bow_shift=shift)
    if shift is not None:
        auc = result.attacks["bag-of-words"].auc
        assert (auc > 0.6 or auc < 0.4) == warned  # the fixture really sits on the intended side
    paths = write_mia_report(tmp_path, result)
    assert (CONFOUNDED in mia_table(result)) == warned
    assert (CONFOUNDED in paths["html"].read_text(encoding="utf-8")) == warned
    assert (read_json(paths["json"])["confounding_warning"] is not None) == warned


def test_no_confounding_warning_when_the_ci_includes_chance():
    result = _result()
    metrics = result.attacks["bag-of-words"].metrics
    metrics.update(auc=0.63, auc_ci=[0.45, 0.8])
    assert confounding_warning(result) is None
    metrics.update(auc_ci=[0.52, 0.74])
    assert CONFOUNDED in confounding_warning(result)


def test_table_shows_a_dash_where_the_rule_forbids_a_figure(tmp_path):
    result = _result(n=100)  # 100 non-members: TPR@1% and TPR@10% allowed, TPR@0.1% not
    table = mia_table(result)
    header = next(line for line in table.splitlines() if line.startswith("attack"))
    assert re.split(r"\s{2,}", header) == ["attack", "AUC [95% CI]", "TPR@0.1%", "TPR@1%", "TPR@10%"]
    loss = re.split(r"\s{2,}", next(line for line in table.splitlines() if line.startswith("loss")))
    assert loss[2] == "-" and loss[3] != "-" and loss[4].endswith("]")
    assert "TPR@0.1%: needs >= 1000 non-members, have 100" in table
    page = write_mia_report(tmp_path, result)["html"].read_text(encoding="utf-8")
    assert "<td>-</td>" in page and "needs &gt;= 1000 non-members, have 100" in page


def test_format_table_aligns_and_dashes_missing():
    rows = [{"name": "a", "value": 1.23456, "n": 3}, {"name": "longer", "value": None, "n": 12}]
    text = format_table(rows, ["name", "value", "n"], title="T")
    lines = text.splitlines()
    assert lines[0] == "T" and len({len(line) for line in lines[1:]}) == 1  # equal widths: aligned
    assert lines[3].split() == ["a", "1.235", "3"] and lines[4].split() == ["longer", "-", "12"]
    assert lines[3].endswith(" 3")  # numbers are right-aligned


def test_html_table_escapes_and_highlights():
    rows = [{"a": "<x>", "auc": "0.61 [0.5, 0.7]"}, {"a": "y", "auc": "0.72 [0.6, 0.8]"}]
    table = html_table(rows, ["a", "auc"], highlight={"auc": "max"})
    assert "&lt;x&gt;" in table and "<x>" not in table
    assert '<td class="num best">0.72 [0.6, 0.8]</td>' in table
    assert '<td class="num">0.61 [0.5, 0.7]</td>' in table
    with pytest.raises(TuneguardError, match="'max' or 'min'"):
        html_table(rows, ["a"], highlight={"auc": "best"})


def test_html_page_sections_settings_and_images(tmp_path):
    loglog, _ = roc_figures({"x": ([0, 0.5, 1], [0, 0.8, 1])}, tmp_path / "roc", title="t", n_nonmembers=2)
    page = html_page("A & B", [("Figure", img_tag(loglog))], settings={"nested": {"k": [1, 2]}, "seed": 0})
    assert "<title>A &amp; B</title>" in page and page.index("Figure") < page.index("Settings")
    assert 'src="data:image/png;base64,' in page and "&quot;k&quot;" in page
    with pytest.raises(TuneguardError, match="does not exist"):
        img_tag(tmp_path / "missing.png")


def test_roc_figures_write_both_pngs(tmp_path):
    paths = roc_figures({"a": ([0, 0.1, 1], [0, 0.5, 1]), "b": ([0, 1], [0, 1])}, tmp_path / "sub" / "fig")
    assert [p.name for p in paths] == ["fig_loglog.png", "fig_linear.png"]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in paths)


def test_report_without_attacks_is_refused(tmp_path):
    with pytest.raises(TuneguardError, match="no attack"):
        write_mia_report(tmp_path, MIAResult(title="empty", settings={}, attacks={}))


def test_results_json_is_valid_json_with_nan_scores(tmp_path):
    result = _result()
    result.attacks["zlib"].scores = result.attacks["zlib"].scores.copy()
    result.attacks["zlib"].scores[0] = np.nan
    text = write_mia_report(tmp_path, result)["json"].read_text(encoding="utf-8")
    assert json.loads(text)["attacks"]["zlib"]["scores"][0] is None


def test_html_lists_each_attacks_declared_parameters_and_what_does_not_apply(tmp_path):
    result = _result()
    result.attacks["min-k"] = result.attacks.pop("zlib")
    result.attacks["min-k"].params = {"k": 0.5, "rounding": "ceil"}
    result.attacks["loss"].not_applicable = "the reference model is the target itself"
    page = write_mia_report(tmp_path, result)["html"].read_text(encoding="utf-8")
    # From the min-k declaration: the value given, the parameter's help and what it allows.
    assert "k = 0.5: fraction of the scored tokens averaged (the lowest log-probs) (in (0, 1])" in page
    assert "rounding = &quot;ceil&quot;: how k·n becomes a token count" in page
    assert "not applicable (loss): the reference model is the target itself" in page
    assert "not applicable (loss): the reference model is the target itself" in mia_table(result)


def test_importing_the_table_module_loads_no_heavy_library():
    # Reports of other commands import tuneguard.report.table at start-up: it must stay light.
    code = ("import sys, tuneguard.report.table, tuneguard.report; "
            "print(sorted({'sklearn', 'scipy', 'matplotlib', 'torch'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_roc_titles_fit_and_the_page_shows_the_png_unscaled():
    from tuneguard.report.figures import DPI, roc_figure

    long_title = "Membership inference audit: smollm2-135m fine-tuned (lora) on 48 texts with a long name " * 2
    curves = {f"attack-{i}": ([0, 0.05, 0.1, 1], [0, 0.2 + i / 50, 0.4, 1]) for i in range(12)}
    for scale in ("loglog", "linear"):
        fig = roc_figure(curves, scale, title=long_title, n_nonmembers=45, fpr_levels=[0.1])
        fig.canvas.draw()
        renderer, box = fig.canvas.get_renderer(), fig.bbox
        ax = fig.axes[0]
        for artist in (ax.title, ax.get_legend(), ax.xaxis.label, ax.yaxis.label):
            extent = artist.get_window_extent(renderer)
            assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0 and extent.y1 <= box.y1
        assert "chance (TPR = FPR)" in [t.get_text() for t in ax.get_legend().get_texts()]
        assert [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"] == [0.1]
        # Shown at its own size in the page's 60rem column (960 px less 2rem of padding), so 8 pt stays 8 pt.
        assert fig.get_size_inches()[0] * DPI <= 928
        assert min(t.get_fontsize() for t in ax.get_legend().get_texts()) >= 8
