import json

import pytest

from tuneguard.errors import TuneguardError
from tuneguard.experiment import load_experiment, perplexity, run_experiment
from tuneguard.models import tiny_model
from tuneguard.scoring import ScoringEngine


def write_corpus(path, prefix, n):
    path.write_text("\n".join(json.dumps({"text": f"{prefix} record {i}: value {i * 13 % 97} noted on day {i}."})
                              for i in range(n)))


EXPERIMENT = """
name = "tiny"
model = "tiny-gpt2"
out = "out"
attacks = ["loss", "zlib", "min-k", "ratio", "bag-of-words"]
general_texts = 4
[attack_options]
max_length = 32
n_boot = 50
[train]
epochs = 2
lr = 0.01
batch_size = 4
max_length = 32
[[datasets]]
name = "A"
path = "a.jsonl"
members = 8
nonmembers = 8
[regimes]
pretrained = {}
lora = {}
dp = { epsilon = 50.0 }
"""


def test_experiment_runs_every_cell_once_and_writes_the_table(tmp_path):
    write_corpus(tmp_path / "a.jsonl", "alpha", 20)
    (tmp_path / "exp.toml").write_text(EXPERIMENT)
    exp = load_experiment(tmp_path / "exp.toml")
    assert [r.name for r in exp.regimes] == ["pretrained", "lora", "dp"]
    summary = run_experiment(exp, progress=False)
    cells = summary["cells"]["A"]
    assert set(cells) == {"pretrained", "lora", "dp"}
    assert cells["pretrained"]["auc"]["ratio"] == 0.5  # target == reference: no signal at all
    assert cells["dp"]["epsilon_spent"] <= 50.0 + 1e-6
    table = (tmp_path / "out" / "table1.txt").read_text()
    assert "average" in table and "perplexity (domain)" in table and "lora" in table
    trained_on = next(line for line in table.splitlines() if line.startswith("texts trained on")).split()[3:]
    assert trained_on == ["0", str(exp.datasets[0].members), str(exp.datasets[0].members)]
    assert (tmp_path / "out" / "tradeoff.png").stat().st_size > 1000
    # A re-run loads every finished cell instead of recomputing it.
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("cell.json")}
    run_experiment(load_experiment(tmp_path / "exp.toml"), progress=False)
    assert stamp == {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("cell.json")}


def test_soft_ratios_become_columns(tmp_path):
    (tmp_path / "e.toml").write_text(EXPERIMENT.replace("dp = { epsilon = 50.0 }",
                                                        'soft = { ratios = [0.25, 0.5], paraphraser = "wordnet" }'))
    names = [r.name for r in load_experiment(tmp_path / "e.toml").regimes]
    assert names == ["pretrained", "lora", "soft ρ=0.25", "soft ρ=0.5"]


@pytest.mark.parametrize("text, message", [
    ("name = 'x'\n[[datasets]]\nname='A'\npath='a'\n[regimes]\nlora = {}", "missing required key 'model'"),
    ("model = [", "not valid TOML"),
    ("model='tiny-gpt2'\n[[datasets]]\nname='A'\npath='a'\n[regimes]\nbogus = {}", "unknown kind 'bogus'"),
])
def test_bad_experiment_files(tmp_path, text, message):
    (tmp_path / "e.toml").write_text(text)
    with pytest.raises(TuneguardError, match=message):
        load_experiment(tmp_path / "e.toml")


def test_perplexity_is_token_weighted():
    engine = ScoringEngine(tiny_model("gpt2"), cache=False, progress=False)
    texts = ["a short one", "a much longer text with many more tokens than the first one has"]
    scores = engine.score(texts)
    nll = -sum(s.logprobs.sum() for s in scores) / sum(s.n for s in scores)
    assert perplexity(engine, texts) == pytest.approx(float(__import__("math").exp(nll)))


def test_soft_cells_say_how_many_paraphrases_they_trained_on():
    from tuneguard.experiment import _trained_on

    cell = {"kind": "soft", "soft": {"train_size": 5, "paraphrased": 1}}  # 4 kept, 1 paraphrased, the rest dropped
    assert _trained_on(cell, 8) == "5 (1 para.)"


def test_a_soft_regime_takes_gate_thresholds_from_the_file(tmp_path, monkeypatch):
    import tuneguard.defenses.soft as soft
    from tuneguard.experiment import _target
    from tuneguard.paraphrase.gate import GateConfig

    (tmp_path / "e.toml").write_text(EXPERIMENT.replace(
        "dp = { epsilon = 50.0 }", 'soft = { ratio = 1.0, paraphraser = "wordnet", gate = { max_common_run = 30 } }'))
    exp = load_experiment(tmp_path / "e.toml")
    seen = {}

    class Reached(Exception):
        pass

    def fake_run_soft(*args, **kwargs):  # stop once SOFT is called: only its arguments matter here
        seen.update(kwargs)
        raise Reached

    monkeypatch.setattr(soft, "run_soft", fake_run_soft)
    with pytest.raises(Reached):
        _target(exp, exp.regimes[-1], None, [], tmp_path, progress=False)
    assert seen["gate"] == GateConfig(max_common_run=30)
