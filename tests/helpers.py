"""Test helpers shared by several test modules: template texts, hand-made token scores, a fake scoring engine."""

from __future__ import annotations

import random
import subprocess
import sys
from types import SimpleNamespace

import numpy as np

from tuneguard.attacks import ATTACKS
from tuneguard.attacks.base import AttackContext
from tuneguard.scoring import TokenScores

NOUNS = "cat dog bird river garden doctor patient engine market window teacher city forest ocean letter".split()
VERBS = "sees follows paints repairs visits measures answers carries protects finds".split()
ADJS = "small bright quiet old green careful heavy distant strange gentle".split()


def sentences(n: int, seed: int, *, clauses: int = 3) -> list[str]:
    """``n`` distinct texts from one template distribution (members and non-members alike)."""
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        out[" ".join(f"The {rng.choice(ADJS)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(ADJS)} "
                     f"{rng.choice(NOUNS)}." for _ in range(clauses))] = None
    return list(out)


def accelerate_launch(*args: str, script: str | None = None) -> subprocess.CompletedProcess:
    """``tuneguard <args>`` (or ``script <args>``) in two CPU processes under ``accelerate launch``; fails the test
    with the child's traceback when it exits non-zero.

    ``--multi_gpu`` with no GPU runs torchrun with the gloo backend on the CPU (``--cpu`` would start one process).
    The error quotes stderr from a child's traceback on (else from the start): its last lines are torchrun's summary.
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *([script] if script else ["-m", "tuneguard.cli"]), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    if proc.returncode != 0:
        child = proc.stderr.find("[rank")  # a child's traceback, before the launcher's own
        tail = proc.stderr[max(child, 0):][:6000]
        raise AssertionError(f"accelerate launch exited {proc.returncode}:\n{tail}")
    return proc


def ts(lp, mu=None, sigma=None, ids=None, argmax=None, max_lp=None) -> TokenScores:
    """Token scores by hand; by default the model's top-1 is the true token itself, with log-prob ``lp``."""
    lp = np.asarray(lp, dtype=float)
    ids = np.asarray(ids if ids is not None else range(len(lp)), dtype=np.int64)
    return TokenScores(ids, lp, np.asarray(mu if mu is not None else np.zeros_like(lp), dtype=float),
                       np.asarray(sigma if sigma is not None else np.ones_like(lp), dtype=float),
                       np.asarray(argmax if argmax is not None else ids, dtype=np.int64),
                       np.asarray(max_lp if max_lp is not None else lp, dtype=float))


class FakeEngine:
    """Stands in for ScoringEngine: fixed TokenScores per text; a text's tokens are its whitespace-separated ints."""

    def __init__(self, table: dict[str, TokenScores], vocab: int = 10) -> None:
        self.table = table
        self.loaded = SimpleNamespace(tokenizer=range(vocab))
        self.name = "fake"
        self.calls: list[list[str]] = []

    def score(self, texts, prefixes=None, *, desc=""):
        self.calls.append(list(texts))
        return [self.table[t] for t in texts]

    def ll(self, texts, **kwargs):
        return np.array([s.ll for s in self.score(texts, **kwargs)])

    def tokenize(self, text):
        return [int(w) for w in text.split()]


def context(table, texts, labels=None, **kwargs) -> AttackContext:
    labels = np.array(labels if labels is not None else [1, 0] * (len(texts) // 2))
    return AttackContext(texts=list(texts), labels=labels, target=FakeEngine(table), progress=False, **kwargs)


def run(name: str, ctx: AttackContext, **params):
    return ATTACKS.make(name, **params).run(ctx)
