"""Goldfish loss: the hashed token mask, its use by the training loop, and the experiment regime."""

import json
import subprocess
import sys

import pytest
import torch

from tuneguard.errors import TuneguardError
from tuneguard.models import tiny_model
from tuneguard.train import TrainConfig, finetune
from tuneguard.train.batching import IGNORE, collate, encode_examples
from tuneguard.train.goldfish import GoldfishConfig, goldfish_labels, goldfish_mask
from helpers import sentences


def random_ids(rows=64, length=512, seed=0):
    return torch.randint(0, 50_000, (rows, length), generator=torch.Generator().manual_seed(seed))


def test_the_mask_is_deterministic_across_processes():
    ids = random_ids(4, 200)
    here = goldfish_mask(ids, 4, 13)
    assert torch.equal(here, goldfish_mask(ids.clone(), 4, 13))
    # Python's hash() is salted per process: a mask built on it would change with PYTHONHASHSEED.
    code = ("import torch, sys; from tuneguard.train.goldfish import goldfish_mask; "
            "ids = torch.randint(0, 50000, (4, 200), generator=torch.Generator().manual_seed(0)); "
            "sys.stdout.write(''.join('1' if v else '0' for v in goldfish_mask(ids, 4, 13).flatten().tolist()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout
    assert out == "".join("1" if v else "0" for v in here.flatten().tolist())


@pytest.mark.parametrize("k", [2, 4, 8])
def test_about_one_token_in_k_is_dropped_and_never_the_first_h(k):
    mask = goldfish_mask(random_ids(), k, 13)
    assert not mask[:, :13].any()  # fewer than h tokens before them: always learnt
    assert mask[:, 13:].float().mean().item() == pytest.approx(1 / k, abs=0.015)


def test_a_repeated_passage_drops_the_same_tokens_at_any_offset():
    passage = random_ids(1, 80, seed=1)[0]
    a = torch.cat([random_ids(1, 5, seed=2)[0], passage])
    b = torch.cat([random_ids(1, 37, seed=3)[0], passage, random_ids(1, 9, seed=4)[0]])
    h = 13
    in_a, in_b = goldfish_mask(a, 4, h)[5 + h:5 + 80], goldfish_mask(b, 4, h)[37 + h:37 + 80]
    assert torch.equal(in_a, in_b) and in_a.any() and not in_a.all()
    # The decision depends on the h tokens before a position only: change one token further back, nothing moves.
    c = a.clone()
    c[5 + 20] += 1
    assert torch.equal(goldfish_mask(c, 4, h)[5 + 21 + h:], goldfish_mask(a, 4, h)[5 + 21 + h:])


def test_padding_is_never_dropped_and_never_changes_a_decision():
    row = random_ids(1, 60, seed=5)[0]
    alone = goldfish_mask(row, 4, 13)
    # Right padding (as training batches are padded): the real tokens decide as alone, padding is never dropped.
    right = torch.cat([row, torch.zeros(20, dtype=torch.long)])
    right_mask = torch.cat([torch.ones(60), torch.zeros(20)]).long()
    got = goldfish_mask(right[None], 4, 13, right_mask[None])[0]
    assert torch.equal(got[:60], alone) and not got[60:].any()
    # Left padding: a context reaching into padding is not a real context, so the first h real tokens stay learnt.
    left = torch.cat([torch.zeros(20, dtype=torch.long), row])
    left_mask = torch.cat([torch.zeros(20), torch.ones(60)]).long()
    got = goldfish_mask(left, 4, 13, left_mask)
    assert not got[:20].any() and torch.equal(got[20:], alone)


def test_dropped_tokens_become_ignored_labels_and_nothing_else_changes():
    tok = tiny_model("llama").tokenizer
    texts = sentences(6, seed=0)
    batch = collate(encode_examples(texts + [("A prompt that is not learnt", " and its completion.")], tok, 64), 0)
    labels = goldfish_labels(batch, GoldfishConfig(k=2, h=3))
    drop = goldfish_mask(batch["input_ids"], 2, 3, batch["attention_mask"])
    assert drop.any()
    assert (labels[drop] == IGNORE).all()
    assert torch.equal(labels[~drop], batch["labels"][~drop])  # prompts and padding stay ignored, the rest kept


def first_step_loss(tmp_path, name, goldfish=None):
    config = TrainConfig(method="full", epochs=1, lr=1e-3, batch_size=16, max_length=48, max_steps=1)
    record = finetune(tiny_model("llama"), sentences(8, seed=1), tmp_path / name, config, goldfish=goldfish,
                      progress=False).record
    return record, record.loss_curve[0]


def test_a_goldfish_step_trains_on_the_kept_tokens_only(tmp_path):
    plain_record, plain = first_step_loss(tmp_path, "plain")
    record, loss = first_step_loss(tmp_path, "goldfish", GoldfishConfig(k=2, h=2))
    assert loss != pytest.approx(plain, abs=1e-4)
    # The first step's loss is the untrained model's loss over the tokens the mask keeps.
    base = tiny_model("llama")
    batch = collate(encode_examples(sentences(8, seed=1), base.tokenizer, 48), base.tokenizer.pad_token_id)
    with torch.no_grad():
        expected = base.model(**{**batch, "labels": goldfish_labels(batch, GoldfishConfig(k=2, h=2))}).loss.item()
        unmasked = base.model(**batch).loss.item()
    assert loss == pytest.approx(expected, rel=1e-4) and plain == pytest.approx(unmasked, rel=1e-4)
    assert record.method == "full+goldfish" and plain_record.method == "full"
    # The Goldfish settings are part of the run: a plain run's directory is not reused for it, nor another k's.
    with pytest.raises(TuneguardError, match="already holds a run with other settings"):
        first_step_loss(tmp_path, "plain", GoldfishConfig(k=2, h=2))
    with pytest.raises(TuneguardError, match="already holds a run with other settings"):
        first_step_loss(tmp_path, "goldfish", GoldfishConfig(k=3, h=2))
    assert first_step_loss(tmp_path, "goldfish", GoldfishConfig(k=2, h=2))[1] == loss  # the same run is reused


def test_goldfish_refuses_a_classification_model(tmp_path):
    with pytest.raises(TuneguardError, match="does not apply to a sequence-classification model"):
        finetune(tiny_model("llama", task="seq-cls"), [("a text", 0), ("another", 1)], tmp_path, TrainConfig(),
                 goldfish=GoldfishConfig(), progress=False)


def test_the_goldfish_regime_fine_tunes_fully_with_its_mask(tmp_path):
    from tuneguard.experiment import load_experiment

    (tmp_path / "a.txt").write_text("\n".join(sentences(12, seed=2)))
    text = ('model = "tiny-llama"\nattacks = ["loss"]\n[train]\nepochs = 1\nlr = 1e-3\nmax_length = 32\n'
            '[[datasets]]\nname = "A"\npath = "a.txt"\nmembers = 4\nnonmembers = 4\n[regimes]\n')
    (tmp_path / "exp.toml").write_text(text + "goldfish = { k = 3 }\n")
    column = load_experiment(tmp_path / "exp.toml").regimes[0]
    assert (column.kind, column.train.method, column.regime.params) == ("goldfish", "full", GoldfishConfig(k=3))
    target, facts = column.regime.build(tiny_model("llama"), sentences(4, seed=2), tmp_path / "cell", column.train,
                                        progress=False)
    record = json.loads((tmp_path / "cell" / "model" / "run.json").read_text())
    assert record["method"] == "full+goldfish" and facts == {"train_size": 4}
    (tmp_path / "exp.toml").write_text(text + "goldfish = { k = 1 }\n")
    with pytest.raises(TuneguardError, match="regime 'goldfish': parameter 'k' must be >= 2, got 1"):
        load_experiment(tmp_path / "exp.toml")
