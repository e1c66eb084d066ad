"""The scoring engine's batching: token budgets, out-of-memory retries, batch independence, the dtype in the cache
key, the float32 reduction's precision, and sharding over processes under ``accelerate launch``."""

from __future__ import annotations

import copy
import json
import os
import re

import numpy as np
import pytest
import torch

from helpers import accelerate_launch, sentences, write_jsonl
from tuneguard.attacks import run_attacks
from tuneguard.errors import TuneguardError
from tuneguard.metrics import evaluate
from tuneguard.models import LoadedModel, tiny_model
from tuneguard.scoring import ScoringEngine
from tuneguard.scoring.engine import BATCH_TOLERANCE, _reduce

# Lengths from 1 to 4 clauses, so batches pad.
TEXTS = [t for n in (1, 4, 2, 3) for t in sentences(6, seed=n, clauses=n)]


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return tiny_model("gpt2")


def calls(model: torch.nn.Module) -> list[tuple[int, int]]:
    """(rows, width) of every model call from now on."""
    seen: list[tuple[int, int]] = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)),
                                    with_kwargs=True)
    return seen


def own(loaded: LoadedModel) -> LoadedModel:
    """A copy of the model (hooks and patches stay on the copy)."""
    return LoadedModel(model=copy.deepcopy(loaded.model), tokenizer=loaded.tokenizer, ref=loaded.ref)


def assert_close(a, b, atol: float = BATCH_TOLERANCE) -> None:
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.token_ids, y.token_ids)
        for field in ("logprobs", "mu", "sigma", "max_logprob"):
            np.testing.assert_allclose(getattr(x, field), getattr(y, field), rtol=0, atol=atol)


def test_token_budget_fills_batches_and_keeps_the_order(loaded):
    model = own(loaded)
    seen = calls(model.model)
    engine = ScoringEngine(model, batch_tokens=120, cache=False, progress=False)
    got = engine.score(TEXTS)
    lengths = sorted((len(engine.tokenize(t)) for t in TEXTS), reverse=True)
    assert all(rows * width <= 120 or rows == 1 for rows, width in seen)
    assert sum(rows for rows, _ in seen) == len(TEXTS) == engine.forward_passes
    assert [w for _, w in seen] == sorted((w for _, w in seen), reverse=True)  # longest first
    assert len(seen) < len(TEXTS) and max(rows for rows, _ in seen) > 1  # really batched, several per call
    # Each batch is filled: the next text would not have fit.
    start = 0
    for rows, width in seen[:-1]:
        assert (rows + 1) * lengths[start] > 120 and width == lengths[start]
        start += rows
    for text, scores in zip(TEXTS, got):  # in the caller's order
        np.testing.assert_array_equal(scores.token_ids, engine.tokenize(text)[1:])


def test_a_text_longer_than_the_budget_gets_a_batch_of_its_own(loaded):
    model = own(loaded)
    seen = calls(model.model)
    long = TEXTS[6]
    ScoringEngine(model, batch_tokens=4, cache=False, progress=False).score([long, TEXTS[0]])
    assert [rows for rows, _ in seen] == [1, 1]


def test_batch_independence_within_the_documented_tolerance(loaded):
    """Batch 1, batch 8 and a token budget give each text the same scores within BATCH_TOLERANCE, and the same AUCs."""
    runs = [ScoringEngine(loaded, cache=False, progress=False, **kw).score(TEXTS)
            for kw in ({"batch_size": 1}, {"batch_size": 8}, {"batch_tokens": 100}, {"batch_tokens": 10**6})]
    labels = np.array([1, 0] * (len(TEXTS) // 2))
    aucs = set()
    for run in runs:
        assert_close(run, runs[0])
        np.testing.assert_array_equal(run[0].argmax, runs[0][0].argmax)
        aucs.add(evaluate(labels, np.array([s.ll for s in run]), n_boot=0)["auc"])
    assert len(aucs) == 1
    # Padding changes the matrix shapes, so the last digits may move, but far inside the tolerance.
    worst = max(np.abs(a.logprobs - b.logprobs).max() for a, b in zip(runs[0], runs[1]))
    assert worst < BATCH_TOLERANCE / 100


def test_token_budget_and_fixed_batches_agree(loaded):
    fixed = ScoringEngine(loaded, batch_size=4, cache=False, progress=False).score(TEXTS)
    budget = ScoringEngine(loaded, batch_tokens=150, cache=False, progress=False).score(TEXTS)
    assert_close(budget, fixed)


def oom_above(model: torch.nn.Module, rows: int) -> list[int]:
    """Make ``model`` raise CUDA's out-of-memory error for calls of more than ``rows`` texts; return the rows of each
    call that went through."""
    real = model.forward
    passed: list[int] = []

    def forward(*args, **kwargs):
        if kwargs["input_ids"].shape[0] > rows:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        passed.append(kwargs["input_ids"].shape[0])
        return real(*args, **kwargs)
    model.forward = forward
    return passed


def test_out_of_memory_mid_run_halves_the_token_budget_and_keeps_what_was_scored(loaded, caplog):
    model = own(loaded)
    longest = max(len(model.tokenizer(t)["input_ids"]) for t in TEXTS)
    # The first batches (4 of the longest texts) fit; a later one, of more but shorter texts, does not.
    passed = oom_above(model.model, 4)
    engine = ScoringEngine(model, batch_tokens=4 * longest, cache=False, progress=False)
    got = engine.score(TEXTS)
    assert passed[0] == 4 and max(passed) <= 4
    assert sum(passed) == len(TEXTS) == engine.forward_passes  # every text forwarded once: none scored twice
    assert engine.batch_tokens < 4 * longest
    assert "ran out of GPU memory" in caplog.text
    assert_close(got, ScoringEngine(loaded, batch_size=1, cache=False, progress=False).score(TEXTS))


def test_out_of_memory_halves_a_fixed_batch_size(loaded):
    model = own(loaded)
    passed = oom_above(model.model, 2)
    engine = ScoringEngine(model, batch_size=8, cache=False, progress=False)
    got = engine.score(TEXTS)
    assert engine.batch_size == 2 and set(passed) == {2} and sum(passed) == len(TEXTS)
    assert_close(got, ScoringEngine(loaded, batch_size=1, cache=False, progress=False).score(TEXTS))


def test_one_text_that_does_not_fit_alone_is_refused(loaded):
    model = own(loaded)
    oom_above(model.model, 0)
    with pytest.raises(TuneguardError, match="alone runs out of GPU memory.*--score-max-length"):
        ScoringEngine(model, cache=False, progress=False).score(TEXTS[:2])


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"batch_tokens": 0}])
def test_a_batch_budget_below_one_is_refused_before_any_load(kwargs):
    with pytest.raises(TuneguardError, match="must be at least 1"):
        run_attacks("/nonexistent/model", TEXTS[:4], TEXTS[4:8], attacks=["loss"], **kwargs)


def test_cli_refuses_a_zero_token_budget(capsys):
    from tuneguard.cli import main

    with pytest.raises(SystemExit):
        main(["attack", "--target", "tiny-gpt2", "--members", "m", "--nonmembers", "n", "--out", "o",
              "--score-batch-tokens", "0"])
    assert "--score-batch-tokens: must be >= 1, got 0" in capsys.readouterr().err


def test_float32_and_bfloat16_engines_do_not_share_cache_entries(loaded):
    bf16 = LoadedModel(model=copy.deepcopy(loaded.model).to(torch.bfloat16), tokenizer=loaded.tokenizer,
                       ref=loaded.ref)
    # As a loader that fingerprints the checkpoint (not the cast weights) would give it: the same fingerprint.
    bf16.__dict__["fingerprint"] = loaded.fingerprint
    full = ScoringEngine(loaded, progress=False).score(TEXTS[:4])
    engine = ScoringEngine(bf16, progress=False)
    half = engine.score(TEXTS[:4])
    assert engine.forward_passes == 4  # not served from the float32 entries
    assert not np.allclose(half[0].logprobs, full[0].logprobs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(half[0].logprobs, full[0].logprobs, rtol=0, atol=0.1)
    assert half[0].logprobs.dtype == np.float64
    again = ScoringEngine(loaded, progress=False)
    again.score(TEXTS[:4])
    assert again.forward_passes == 0  # the float32 entries are still there for float32


def test_bfloat16_logits_are_reduced_in_float32_or_wider(loaded):
    bf16 = LoadedModel(model=copy.deepcopy(loaded.model).to(torch.bfloat16), tokenizer=loaded.tokenizer,
                       ref=loaded.ref)
    engine = ScoringEngine(bf16, cache=False, progress=False)
    scores = engine.score([TEXTS[6]])[0]
    ids = engine.tokenize(TEXTS[6])
    with torch.no_grad():
        logits = bf16.model(input_ids=torch.tensor([ids])).logits[0, :-1]
    assert logits.dtype == torch.bfloat16
    want = torch.log_softmax(logits.double(), dim=-1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    np.testing.assert_allclose(scores.logprobs, want.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_reduction_matches_float64_on_a_real_size_vocabulary(scale):
    """Flat, ordinary and peaked distributions over GPT-2's 50,257 tokens: within 2e-6 of float64 (measured 1e-6:
    far below the float32 forward pass's own rounding)."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50257, generator=gen) * scale
    targets = torch.randint(50257, (64,), generator=gen)
    lp, mu, sigma, top, top_lp = _reduce(logits, targets)
    logp = torch.log_softmax(logits.double(), dim=-1)
    p = logp.exp()
    want_mu = (p * logp).sum(-1)
    want = (logp.gather(-1, targets[:, None])[:, 0], want_mu, (p * (logp - want_mu[:, None]).square()).sum(-1).sqrt())
    for got, ref in zip((lp, mu, sigma), want):
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=0, atol=2e-6)
    np.testing.assert_array_equal(top.numpy(), logits.argmax(-1).numpy())
    np.testing.assert_allclose(top_lp.numpy(), logp.max(-1).values.numpy(), rtol=0, atol=2e-6)


def test_two_processes_under_accelerate_launch_equal_one(tmp_path):
    members, nonmembers = TEXTS[::2], TEXTS[1::2]
    for name, texts in (("m", members), ("n", nonmembers)):
        write_jsonl(tmp_path / f"{name}.jsonl", texts)
    attacks = "loss,zlib,min-k++,recall"
    proc = accelerate_launch("attack", "--target", "tiny-gpt2", "--members", str(tmp_path / "m.jsonl"),
                             "--nonmembers", str(tmp_path / "n.jsonl"), "--attacks", attacks, "--shots", "2",
                             "--bootstrap", "0", "--score-batch-size", "3", "--out", str(tmp_path / "out"))
    assert proc.stdout.count("results: ") == 1  # one process reports and writes
    # 22 texts (24 less 2 shots) in 8 batches of 3 dealt in turn: the main process forwards 4 batches, 12 texts.
    assert re.search(r"target \(tiny-gpt2\): 100%[^\n]*\| 12/12 ", proc.stderr), proc.stderr[-2000:]
    two = json.loads((tmp_path / "out" / "results.json").read_text())
    one = run_attacks(tiny_model("gpt2"), members, nonmembers, attacks=attacks.split(","), n_shots=2, n_boot=0,
                      batch_size=3, cache=False, progress=False)
    for name, result in one.attacks.items():
        np.testing.assert_array_equal(np.array(two["attacks"][name]["scores"]), result.scores)  # bit for bit
    # Texts forwarded over both processes, as one process forwards them.
    assert two["cost"]["forward_passes"] == one.cost["forward_passes"]


def test_processes_that_find_different_scores_cached_still_score_every_text(tmp_path, monkeypatch):
    """One process can find in the shared disk cache what another stored a moment ago; here each process gets a
    cache of its own and the second one's already holds some texts, so their todo lists differ from the start."""
    members, nonmembers = TEXTS[::2], TEXTS[1::2]
    for name, texts in (("m", members), ("n", nonmembers)):
        write_jsonl(tmp_path / f"{name}.jsonl", texts)
    cache = os.environ["TUNEGUARD_CACHE"]
    monkeypatch.setenv("TUNEGUARD_CACHE", f"{cache}-1")
    run_attacks(tiny_model("gpt2"), members[:5], nonmembers[:5], attacks=["loss"], n_shots=0, n_boot=0,
                cache=True, progress=False)
    monkeypatch.setenv("TUNEGUARD_CACHE", cache)
    script = tmp_path / "cache_per_rank.py"
    script.write_text("import os, sys\nif os.environ['RANK'] != '0':\n"
                      "    os.environ['TUNEGUARD_CACHE'] += '-' + os.environ['RANK']\n"
                      "from tuneguard.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    accelerate_launch("attack", "--target", "tiny-gpt2", "--members", str(tmp_path / "m.jsonl"), "--nonmembers",
                      str(tmp_path / "n.jsonl"), "--attacks", "loss", "--bootstrap", "0",
                      "--score-batch-size", "3", "--out", str(tmp_path / "out"), script=str(script))
    two = json.loads((tmp_path / "out" / "results.json").read_text())
    one = run_attacks(tiny_model("gpt2"), members, nonmembers, attacks=["loss"], n_shots=0, n_boot=0, batch_size=3,
                      cache=False, progress=False)
    np.testing.assert_array_equal(np.array(two["attacks"]["loss"]["scores"]), one.attacks["loss"].scores)
