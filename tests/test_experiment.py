import json
import logging
import math
import sys
import types

import pytest

from helpers import write_jsonl
from tuneguard.errors import TuneguardError
from tuneguard.experiment import draw_texts, load_experiment, run_experiment, select_regimes
from tuneguard.models import tiny_model
from tuneguard.scoring import ScoringEngine
from tuneguard.scoring.perplexity import perplexity


def write_corpus(path, prefix, n):
    write_jsonl(path, [f"{prefix} record {i}: value {i * 13 % 97} noted on day {i}." for i in range(n)])


EXPERIMENT = """
name = "tiny"
model = "tiny-gpt2"
out = "out"
attacks = ["loss", "zlib", "min-k", "ratio", "bag-of-words"]
general_texts = 4
[attack_options]
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


def experiment(tmp_path, text=EXPERIMENT, n_texts=20):
    write_corpus(tmp_path / "a.jsonl", "alpha", n_texts)
    (tmp_path / "exp.toml").write_text(text)
    return load_experiment(tmp_path / "exp.toml")


def test_experiment_runs_every_cell_once_and_writes_the_table(tmp_path):
    exp = experiment(tmp_path)
    assert [r.name for r in exp.regimes] == ["pretrained", "lora", "dp"]
    summary = run_experiment(exp, progress=False)
    cells = summary["cells"]["A"]
    assert set(cells) == {"pretrained", "lora", "dp"}
    assert cells["dp"]["epsilon_spent"] <= 50.0 + 1e-6
    table = (tmp_path / "out" / "table1.txt").read_text()
    assert "average" in table and "perplexity (domain)" in table and "lora" in table
    trained_on = next(line for line in table.splitlines() if line.startswith("texts trained on")).split()[3:]
    assert trained_on == ["0", str(exp.datasets[0].members), str(exp.datasets[0].members)]
    assert (tmp_path / "out" / "tradeoff.png").stat().st_size > 1000
    assert "<table>" in (tmp_path / "out" / "report.html").read_text()
    # A re-run loads every finished cell instead of recomputing it.
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("cell.json")}
    run_experiment(load_experiment(tmp_path / "exp.toml"), progress=False)
    assert stamp == {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("cell.json")}


def test_the_pretrained_ratio_score_is_not_applicable_and_left_out_of_the_average(tmp_path):
    exp = experiment(tmp_path, EXPERIMENT.replace("lora = {}\ndp = { epsilon = 50.0 }\n", ""))
    cell = run_experiment(exp, progress=False)["cells"]["A"]["pretrained"]
    assert "ratio" in cell["not_applicable"]  # target == reference: the score is identically 0
    others = [v for n, v in cell["auc"].items() if n != "ratio"]
    assert cell["average_auc"] == pytest.approx(sum(others) / len(others))
    row = next(line for line in (tmp_path / "out" / "table1.txt").read_text().splitlines() if line.startswith("ratio"))
    assert row.split()[-1] == "n/a"


def test_each_cell_scores_within_its_training_window(tmp_path, monkeypatch):
    import tuneguard.attacks

    windows = []
    real = tuneguard.attacks.run_attacks

    def spy(*args, **kwargs):
        windows.append(kwargs["max_length"])
        return real(*args, **kwargs)
    monkeypatch.setattr(tuneguard.attacks, "run_attacks", spy)
    text = EXPERIMENT.replace("max_length = 32", "max_length = 6").replace(
        "lora = {}\ndp = { epsilon = 50.0 }\n", "lora = { train = { max_length = 9 } }\n")
    exp = experiment(tmp_path, text)
    cells = run_experiment(exp, progress=False)["cells"]["A"]
    assert windows == [6, 9] and cells["pretrained"]["max_length"] == 6 and cells["lora"]["max_length"] == 9
    _, nonmembers = draw_texts(exp.datasets[0], exp.seed)
    engine = ScoringEngine(tiny_model("gpt2"), max_length=6, cache=False, progress=False)
    assert cells["pretrained"]["ppl_domain"] == pytest.approx(perplexity(engine, nonmembers))
    # An explicit scoring window still wins.
    (tmp_path / "exp.toml").write_text(text.replace("n_boot = 50", "n_boot = 50\nmax_length = 12"))
    assert {c["max_length"] for c in run_experiment(load_experiment(tmp_path / "exp.toml"),
                                                    progress=False)["cells"]["A"].values()} == {12}


def test_cells_are_reused_only_while_everything_that_decided_them_is_unchanged(tmp_path, caplog):
    text = EXPERIMENT.replace("dp = { epsilon = 50.0 }\n", "")
    run_experiment(experiment(tmp_path, text), progress=False)
    lora_dir = tmp_path / "out" / "A" / "lora"
    model_stamp = (lora_dir / "model" / "run.json").stat().st_mtime_ns

    def rerun(new_text):
        (tmp_path / "exp.toml").write_text(new_text)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tuneguard.experiment"):
            return run_experiment(load_experiment(tmp_path / "exp.toml"), progress=False)["cells"]["A"]

    # Only the scoring changed: re-scored, the trained model is reused.
    rerun(text.replace("n_boot = 50", "n_boot = 60"))
    assert "lora: re-scoring it (its trained model is reused): its attacks changed" in caplog.text
    assert (lora_dir / "model" / "run.json").stat().st_mtime_ns == model_stamp
    # The training changed: the cell is recomputed from scratch (the old model would be refused).
    rerun(text.replace("n_boot = 50", "n_boot = 60").replace("lr = 0.01", "lr = 0.02"))
    assert "lora: recomputing it from scratch: its train changed" in caplog.text
    assert json.loads((lora_dir / "model" / "run.json").read_text())["config"]["lr"] == 0.02
    # Another base model with the same name cannot be told apart by its options: the fingerprint tells.
    import tuneguard.models

    real_load = tuneguard.models.load_model
    tuneguard.models.load_model = lambda ref, **kw: tiny_model("gpt2", seed=3) if ref == "tiny-gpt2" else \
        real_load(ref, **kw)
    try:
        rerun(text.replace("n_boot = 50", "n_boot = 60").replace("lr = 0.01", "lr = 0.02"))
    finally:
        tuneguard.models.load_model = real_load
    assert "pretrained: recomputing it from scratch: its base" in caplog.text
    # A cell saved by an older tuneguard (no key) is stale.
    cell_path = lora_dir / "cell.json"
    old = {k: v for k, v in json.loads(cell_path.read_text()).items() if k not in ("schema", "key", "key_parts")}
    cell_path.write_text(json.dumps(old))
    rerun(text.replace("n_boot = 50", "n_boot = 60").replace("lr = 0.01", "lr = 0.02"))
    assert "saved by an older tuneguard (cell schema 1)" in caplog.text
    assert json.loads(cell_path.read_text())["schema"] == 2


def test_a_slice_runs_only_its_columns_and_the_full_run_reuses_them(tmp_path):
    exp = experiment(tmp_path)
    assert [c.name for c in select_regimes(exp, "dp, pre*").regimes] == ["pretrained", "dp"]  # the file's order
    sliced = run_experiment(select_regimes(exp, "lora"), progress=False)
    assert sliced["regimes"] == ["lora"] and list(sliced["cells"]["A"]) == ["lora"]
    lora_cell = tmp_path / "out" / "A" / "lora" / "cell.json"
    stamp = lora_cell.stat().st_mtime_ns
    assert not (tmp_path / "out" / "A" / "dp").exists()
    # Another slice leaves the unselected cells alone, even one whose training has since changed.
    (tmp_path / "exp.toml").write_text(EXPERIMENT.replace("lora = {}", "lora = { train = { lr = 0.02 } }"))
    run_experiment(select_regimes(load_experiment(tmp_path / "exp.toml"), "pretrained"), progress=False)
    assert lora_cell.stat().st_mtime_ns == stamp
    # The full run reuses the slices' cells and trains only the rest.
    (tmp_path / "exp.toml").write_text(EXPERIMENT)
    full = run_experiment(load_experiment(tmp_path / "exp.toml"), progress=False)
    assert list(full["cells"]["A"]) == ["pretrained", "lora", "dp"] and lora_cell.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("patterns, message", [
    ("lroa", r"tiny: no regime column matches 'lroa' \(columns: pretrained, lora, dp\); did you mean 'lora'\?"),
    ("lora,dp-*", r"no regime column matches 'dp-\*'"),
    (" , ", r"tiny: no regime column was selected: name some"),
])
def test_a_slice_that_selects_nothing_is_refused(tmp_path, patterns, message):
    with pytest.raises(TuneguardError, match=message):
        select_regimes(experiment(tmp_path), patterns)


def test_run_takes_a_slice_on_the_command_line(tmp_path, capsys):
    from tuneguard.cli import main

    experiment(tmp_path)
    assert main(["run", str(tmp_path / "exp.toml"), "--regimes", "lroa"]) == 2
    assert "did you mean 'lora'?" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "exp.toml"), "--regimes", "pretrained"]) == 0
    assert [p.parent.name for p in (tmp_path / "out").rglob("cell.json")] == ["pretrained"]


def test_soft_ratios_become_columns(tmp_path):
    exp = experiment(tmp_path, EXPERIMENT.replace("dp = { epsilon = 50.0 }",
                                                  'soft = { ratios = [0.25, 0.5], paraphraser = "wordnet" }'))
    assert [r.name for r in exp.regimes] == ["pretrained", "lora", "soft ρ=0.25", "soft ρ=0.5"]
    assert [r.regime.params.ratio for r in exp.regimes[2:]] == [0.25, 0.5]
    assert exp.regimes[2].train.method == "full"  # SOFT protects (and is compared with) full fine-tuning


@pytest.mark.parametrize("change, message", [
    (("model = \"tiny-gpt2\"\n", ""), "missing required key 'model'"),
    (("[regimes]", "[regimes"), "not valid TOML"),
    (("pretrained = {}", "bogus = {}"), "regime 'bogus' has unknown kind 'bogus'"),
    (("attacks = [", "attack = ["), "has no top-level key 'attack' .*did you mean 'attacks'"),
    (("epsilon = 50.0", "epsilom = 50.0"),
     r"exp.toml: regime 'dp' has no option 'epsilom' \(options: epsilon, delta, max_grad_norm, lr_factor, "
     r"batch_factor, kind, train\); "
     "did you mean 'epsilon'"),
    (("epsilon = 50.0", "epsilon = -1"), "regime 'dp': parameter 'epsilon' must be > 0, got -1"),
    (("epsilon = 50.0", "epsilon = 50.0, train = { lrr = 1 }"), "regime 'dp' train has no parameter 'lrr'"),
    (("lr = 0.01", "lr = 'fast'"), r"\[train\]: parameter 'lr' must be a number, got 'fast'"),
    (("lr = 0.01", "method = 'lorra'"), "unknown training method 'lorra'"),
    (("lr = 0.01", "lr = 0.01\nextra = { use_rslorra = true }"),
     r"regime '\w+': training method 'lora' has no peft option 'use_rslorra' .*did you mean 'use_rslora'"),
    (("n_boot = 50", "n_bot = 50"), r"\[attack_options\] has no option 'n_bot'"),
    (("\"bag-of-words\"]", "\"bag-of-wordz\"]"), "unknown attack 'bag-of-wordz'"),
    (("n_boot = 50", "n_boot = 50\nparams = { recall = { x = 1 } }"), "not among the attacks run"),
    (("path = \"a.jsonl\"", "path = \"missing.jsonl\""), "missing.jsonl does not exist"),
    (("members = 8", "members = 18"), "has 20 texts after cleaning, fewer than the 18 members"),
    (("members = 8", "membres = 8"), "dataset 'A' has no option 'membres'"),
    (("dp = { epsilon = 50.0 }", "soft = { ratio = 0.5, ratios = [1.0] }"), "sets both 'ratio' and 'ratios'"),
    (("dp = { epsilon = 50.0 }", "soft = { gate = { max_common_runs = 3 } }"),
     "regime 'soft' option 'gate' has no parameter 'max_common_runs'"),
    (("dp = { epsilon = 50.0 }", "soft = { on_failure = 'keep' }"), "parameter 'on_failure' must be one of"),
    (("[[datasets]]", "[[dataset]]"), "has no top-level key 'dataset' .*did you mean 'datasets'"),
    (("general_texts = 4\n[attack_options]\n", "[attack_options]\ngeneral_texts = 4\n"),
     r"\[attack_options\] has no option 'general_texts' .*; 'general_texts' is a top-level key: put it above the "
     r"first \[table\]"),
    (("\"bag-of-words\"]", "\"bag-of-words\", \"dc-pdd\"]"),
     r"dc-pdd needs a reference corpus .*set corpus = FILE in \[attack_options\]"),
    (("\"bag-of-words\"]", "\"bag-of-words\", \"recall\"]"),
     r"dataset 'A': 7 ReCall shots \(recall\) would leave fewer than 2 of its 8 nonmembers .*n_shots <= 6"),
    (("attacks = [\"loss\", \"zlib\", \"min-k\", \"ratio\", \"bag-of-words\"]", "attacks = [\"ensemble\"]"),
     "the ensemble has no feature"),
])
def test_bad_experiment_files_fail_at_load_with_one_line(tmp_path, monkeypatch, change, message):
    import tuneguard.models

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the file was checked")
    monkeypatch.setattr(tuneguard.models, "load_model", no_model)
    with pytest.raises(TuneguardError, match=message) as info:
        experiment(tmp_path, EXPERIMENT.replace(*change))
    assert "\n" not in str(info.value) or "TOML" in str(info.value)


@pytest.mark.parametrize("change, message", [
    (("path = \"a.jsonl\"", "path = \"latin1.txt\""), r"exp.toml: dataset 'A': .*latin1.txt is not UTF-8 text"),
    (("path = \"a.jsonl\"", "path = \"empty\""), r"exp.toml: dataset 'A': directory .*empty holds no text files"),
    (("n_boot = 50", "n_boot = 50\ncorpus = \"latin1.txt\""),
     r"exp.toml: \[attack_options\]: corpus: .*latin1.txt is not UTF-8 text"),
])
def test_every_local_file_is_read_at_load(tmp_path, change, message):
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 au lait, served at nine every morning\n".encode("latin-1"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TuneguardError, match=message):
        experiment(tmp_path, EXPERIMENT.replace(*change))


def test_an_out_that_cannot_be_written_fails_at_load(tmp_path):
    (tmp_path / "taken").write_text("a file where the output directory should go")
    with pytest.raises(TuneguardError, match=r"exp.toml: out: output directory .*taken is an existing file"):
        experiment(tmp_path, EXPERIMENT.replace('out = "out"', 'out = "taken"'))


def test_every_dataset_is_drawn_before_the_model_loads(tmp_path, monkeypatch):
    import tuneguard.experiment.texts
    import tuneguard.models

    exp = experiment(tmp_path, EXPERIMENT.replace("path = \"a.jsonl\"", "path = \"hf:some/corpus\""))
    monkeypatch.setattr(tuneguard.experiment.texts, "load_texts", lambda path, column=None: [
        f"one of only five hub texts, number {i}" for i in range(5)])

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before every dataset was drawn")
    monkeypatch.setattr(tuneguard.models, "load_model", no_model)
    with pytest.raises(TuneguardError, match="dataset A has 5 texts, fewer than the 16 asked for"):
        run_experiment(exp, progress=False)


def test_attack_parameters_are_checked_at_load(tmp_path):
    with pytest.raises(TuneguardError, match="attack 'min-k'.*'k'"):
        experiment(tmp_path, EXPERIMENT.replace("n_boot = 50", "n_boot = 50\nparams = { min-k = { k = 5 } }"))
    exp = experiment(tmp_path, EXPERIMENT.replace("n_boot = 50", "n_boot = 50\nparams = { min-k = { k = 0.1 } }"))
    assert exp.suite.params == {"min-k": {"k": 0.1}}


def test_every_dp_option_reaches_dp_sgd(tmp_path, monkeypatch):
    import tuneguard.defenses.dp_sgd as dp_sgd

    seen = {}

    class Reached(Exception):
        pass

    def fake(base, texts, out_dir, config, dp, **kwargs):
        seen.update(config=config, dp=dp)
        raise Reached
    monkeypatch.setattr(dp_sgd, "dp_finetune", fake)
    exp = experiment(tmp_path, EXPERIMENT.replace("epsilon = 50.0", "epsilon = 4.0, delta = 1e-3, max_grad_norm = 0.5"))
    column = exp.regimes[-1]
    with pytest.raises(Reached):
        column.regime.build(None, [], tmp_path, column.train, progress=False)
    assert (seen["dp"].target_epsilon, seen["dp"].delta, seen["dp"].max_grad_norm) == (4.0, 1e-3, 0.5)
    # DP-SGD's step and batch are scaled from the run's (10 × lr, 4 × batch by accumulation by default).
    assert seen["config"].method == "lora" and seen["config"].lr == pytest.approx(0.1)
    assert seen["config"].grad_accum == 4 and seen["config"].batch_size == 4


def test_a_soft_regime_takes_gate_thresholds_from_the_file(tmp_path, monkeypatch):
    import tuneguard.defenses.soft as soft
    from tuneguard.paraphrase.gate import GateConfig

    exp = experiment(tmp_path, EXPERIMENT.replace(
        "dp = { epsilon = 50.0 }", 'soft = { ratio = 1.0, paraphraser = "wordnet", gate = { max_common_run = 30 } }'))
    seen = {}

    class Reached(Exception):
        pass

    def fake_run_soft(*args, **kwargs):  # stop once SOFT is called: only its arguments matter here
        seen.update(kwargs)
        raise Reached

    monkeypatch.setattr(soft, "run_soft", fake_run_soft)
    column = exp.regimes[-1]
    with pytest.raises(Reached):
        column.regime.build(None, [], tmp_path, column.train, progress=False)
    assert seen["config"].gate == GateConfig(max_common_run=30) and seen["config"].ratio == 1.0
    assert seen["train"].method == "full"


def test_perplexity_is_token_weighted():
    engine = ScoringEngine(tiny_model("gpt2"), cache=False, progress=False)
    texts = ["a short one", "a much longer text with many more tokens than the first one has"]
    scores = engine.score(texts)
    nll = -sum(s.logprobs.sum() for s in scores) / sum(s.n for s in scores)
    assert perplexity(engine, texts) == pytest.approx(float(math.exp(nll)))


def test_a_new_regime_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
    from dataclasses import dataclass

    from tuneguard.params import Params, param
    from tuneguard.regimes import REGIMES
    from tuneguard.regimes.base import Regime

    @dataclass
    class ToyParams(Params):
        strength: float = param(1.0, "how hard", gt=0)

    class Toy(Regime):
        name = "toy"
        summary = "a toy defence"
        Params = ToyParams

        def build(self, base, members, cell_dir, train, *, progress=True):
            return base, {"train_size": 0}

    module = types.ModuleType("toy_regime")
    module.Toy = Toy
    monkeypatch.setitem(sys.modules, "toy_regime", module)
    monkeypatch.setattr(REGIMES, "_entries", {**REGIMES._entries, "toy": "toy_regime:Toy"})
    exp = experiment(tmp_path, EXPERIMENT.replace("dp = { epsilon = 50.0 }", "toy = { strength = 2 }"))
    assert exp.regimes[-1].regime.params.strength == 2.0
    with pytest.raises(TuneguardError, match="regime 'toy' has no option 'strenght'"):
        experiment(tmp_path, EXPERIMENT.replace("dp = { epsilon = 50.0 }", "toy = { strenght = 2 }"))


def test_run_help_lists_the_regimes_and_their_options():
    from tuneguard.cli import build_parser
    from tuneguard.regimes import REGIMES

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["run"]
    text = sub.format_help()
    assert all(f"  {name}: " in text for name in REGIMES.names())
    assert "epsilon (float, default 8.0; > 0)" in text and "ratios: one column per selection ratio" in text


def test_the_bench_table_loads_and_a_typo_in_it_fails(tmp_path):
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench" / "table1_mini.toml"
    if not (bench.parent.parent.parent / "shared" / "data").is_dir():
        pytest.skip("../shared/data is not beside the project")
    exp = load_experiment(bench)
    assert [c.name for c in exp.regimes][:3] == ["pretrained", "full", "lora"]
    typo = tmp_path / "x.toml"
    typo.write_text(bench.read_text().replace("dp = { epsilon", "dp = { epsilom").replace(
        '"../../shared/', f'"{bench.parent.parent.parent}/shared/'))
    with pytest.raises(TuneguardError, match=r"x.toml: regime 'dp' has no option 'epsilom' \(options: epsilon, "):
        load_experiment(typo)


def test_a_suite_in_the_file_keeps_its_settings_and_the_default_is_softs_table(tmp_path):
    from tuneguard.attacks import SUITES

    fast = EXPERIMENT.replace('attacks = ["loss", "zlib", "min-k", "ratio", "bag-of-words"]', 'attacks = "fast"')
    suite = experiment(tmp_path, fast).suite
    assert "ez-mia" in suite.attacks and suite.params["ensemble"]["features"] == "extended"
    own = fast.replace("n_boot = 50", "n_boot = 50\nparams = { ensemble = { folds = 3 } }")
    params = experiment(tmp_path, own).suite.params["ensemble"]
    assert params["features"] == "extended" and params["folds"] == 3  # the file's own on top of the suite's
    default = EXPERIMENT.replace('attacks = ["loss", "zlib", "min-k", "ratio", "bag-of-words"]\n', "").replace(
        "n_boot = 50", "n_boot = 50\nn_shots = 2")
    assert experiment(tmp_path, default).suite.attacks == list(SUITES["soft-table"].members())
