"""Test helpers shared by several test modules (a helper one module alone uses stays in it): template texts,
hand-made token scores, a fake scoring engine, tiny models saved or built in code, synthetic adapters, a fake chat
server, test paraphrasers and embedders, call spies.

Heavy libraries (transformers, tokenizers) are imported inside the helpers that need them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import subprocess
import sys
import threading
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, Callable

import numpy as np

from tuneguard.attacks import ATTACKS
from tuneguard.attacks.base import AttackContext
from tuneguard.paraphrase import InstructedParams, Paraphraser
from tuneguard.paraphrase.base import attempt_seed
from tuneguard.params import param
from tuneguard.scoring import TokenScores
from tuneguard.train import TrainConfig

NOUNS = "cat dog bird river garden doctor patient engine market window teacher city forest ocean letter".split()
VERBS = "sees follows paints repairs visits measures answers carries protects finds".split()
ADJS = "small bright quiet old green careful heavy distant strange gentle".split()


def load_script(path: str) -> ModuleType:
    """The repository's script ``<path>.py`` (e.g. "bench/leak_bench") imported as a module under its file's name
    (registered in sys.modules: dataclasses look it up)."""
    name = Path(path).name
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / f"{path}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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


# -- call spies ------------------------------------------------------------------------------------------------------

def spy(monkeypatch, owner: Any, name: str) -> list[tuple]:
    """Record the positional arguments of every call of ``owner.name`` (a module's function or a class's method)
    and still make the call: ``len(calls)`` counts them."""
    calls: list[tuple] = []
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)
    monkeypatch.setattr(owner, name, wrapper)
    return calls


# -- files and models on disk ------------------------------------------------------------------------------------

def write_jsonl(path: Path, texts, **fields) -> str:
    """``texts`` as a JSONL file of ``{"text": ...}`` rows (plus ``fields`` in each row); returns its path."""
    path.write_text("".join(json.dumps({"text": t, **fields}) + "\n" for t in texts), encoding="utf-8")
    return str(path)


def save_model_dir(path: Path, loaded=None, tokenizer=None) -> Path:
    """A local model directory (safetensors weights and tokenizer) of ``loaded`` (default: the tiny Llama), with
    its own tokenizer or ``tokenizer``."""
    from tuneguard.models import tiny_model

    loaded = loaded or tiny_model("llama")
    loaded.model.save_pretrained(path, safe_serialization=True)
    (tokenizer or loaded.tokenizer).save_pretrained(path)
    return path


def with_bos(loaded):
    """The same model with a tokenizer that prepends a BOS token (GPT-2's <|endoftext|>), as Llama tokenizers do."""
    import copy

    from tokenizers.processors import TemplateProcessing

    from tuneguard.models import LoadedModel

    tok = copy.deepcopy(loaded.tokenizer)
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)])
    return LoadedModel(model=loaded.model, tokenizer=tok, ref=loaded.ref + "+bos")


def tiny_t5(texts: list[str]):
    """A 1-layer random T5 and a Unigram T5 tokenizer over ``texts``' words plus letters, with 20 sentinels
    (built offline: no hub)."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    words = sorted({w for t in texts for w in t.split()} | {"foo", "bar", "baz", "qux"})
    letters = sorted({c for t in texts for c in t if not c.isspace()})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -5.0) for w in words]
    vocab += [(c, -10.0) for c in letters] + [(f"<extra_id_{i}>", 0.0) for i in range(19, -1, -1)]
    tok = T5Tokenizer(vocab=vocab, extra_ids=20)
    config = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
                      decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    return T5ForConditionalGeneration(config).eval(), tok


# Texts long enough for DetectGPT's span masking (test_neighbours, test_neighbours_t5, test_contract).
NEIGHBOUR_TEXTS = [
    "Programmed cell death is the regulated death of cells within an organism and it shapes tissues during "
    "development of many plants and animals in ways that biologists still study closely today in the laboratory",
    "The lace plant produces perforations in its leaves through programmed cell death and the leaves of the plant "
    "consist of a latticework of longitudinal and transverse veins enclosing small areoles near the margin",
    "We measured blood pressure in two hundred adults before and after a twelve week exercise programme and found a "
    "small but consistent reduction in systolic pressure among those who trained at least three times each week",
]


@dataclass
class NewerTrainConfig(TrainConfig):
    """TrainConfig as a later version declares it: one more option, whose default keeps what runs did before it."""

    new_option: float = param(0.5, "an option added after the run was saved", ge=0)


# -- synthetic LoRA adapters -------------------------------------------------------------------------------------

BOOST = {"down_proj": 4.0}  # what makes a synthetic adapter "poisoned"


def synthetic_adapter(path: Path, modules: dict, *, layers: int, r: int = 4, alpha: int = 8, seed: int = 0, **kw):
    """A synthetic LoRA adapter for the tiny Llama's name (``modules``: module name -> (out, in) shape)."""
    from tuneguard.adapters.synthetic import write_synthetic_adapter

    return write_synthetic_adapter(path, modules=modules, layers=layers, r=r, alpha=alpha, seed=seed,
                                   base_model="tiny-llama", **kw)


def synthetic_cohort(root: Path, make: Callable[..., Path], **kw) -> tuple[list[Path], list[Path]]:
    """Three clean adapters (seeds 0-2) and two poisoned ones (seeds 100-101, boosted down_proj) under ``root``,
    each made by ``make(path, seed=..., **kw)``."""
    clean = [make(root / f"clean{i}", seed=i, **kw) for i in range(3)]
    poisoned = [make(root / f"poison{i}", seed=100 + i, boost=BOOST, **kw) for i in range(2)]
    return clean, poisoned


def weights_calibration(clean, poisoned=None, *, alpha: int = 8):
    """A ``weights`` detector calibration of rank-4 tiny-llama adapters from clean (and poisoned) adapter paths."""
    from tuneguard.adapters import DETECTORS, calibrate, read_adapter

    det = DETECTORS.make("weights")
    scores = lambda paths: [det.score(read_adapter(p)) for p in paths]  # noqa: E731
    return calibrate(det, scores(clean), scores(poisoned) if poisoned is not None else None,
                     base_model="tiny-llama", rank=4, lora_alpha=alpha, use_rslora=False, task=None)


# -- DP audits -----------------------------------------------------------------------------------------------------

def randomized_response(epsilon: float, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """epsilon-DP randomised response on the inclusion bits: the score is the bit, flipped w.p. 1/(1+e^eps)."""
    rng = np.random.default_rng(seed)
    included = rng.random(m) < 0.5
    flipped = rng.random(m) < 1 / (1 + math.exp(epsilon))
    return (included ^ flipped).astype(float), included


# -- paraphrasers, embedders, SOFT ----------------------------------------------------------------------------------

class BagEmbedder:
    """Cheap deterministic embedder: hashed bag of words (word order does not matter)."""

    name = "bag"

    def encode(self, texts):
        from tuneguard.paraphrase.gate import words

        out = np.zeros((len(texts), 128))
        for i, text in enumerate(texts):
            for w in words(text):
                out[i, zlib.crc32(w.encode()) % 128] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


@dataclass
class ReverseParams(InstructedParams):
    copy_until: int = param(0, "attempts below this return the text unchanged", ge=0)


class ReverseParaphraser(Paraphraser):
    """Reverses the word order: same bag of words (similarity 1 under BagEmbedder), no shared word run > 1.

    ``copy_until`` makes attempts below it return the text unchanged (to exercise the gate's retries); every call
    is logged in ``calls`` as (text, seed).
    """

    name = "reverse"
    Params = ReverseParams

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("progress", False)
        super().__init__(**kwargs)
        self.calls: list[tuple[str, int]] = []

    def settings(self) -> dict:
        return {"copy_until": self.params.copy_until}

    def rewrite_batch(self, texts, prompts, seeds):
        out = []
        for text, seed in zip(texts, seeds):
            self.calls.append((text, seed))
            attempt = next(k for k in range(100) if attempt_seed(self.params.seed, text, k) == seed)
            out.append(text if attempt < self.params.copy_until else reverse_words(text))
        return out


def reverse_words(text: str) -> str:
    return " ".join(reversed(text.split()))


SOFT_TRAIN = TrainConfig(epochs=1, batch_size=4, max_length=32, lr=1e-3)
SOFT_TEXTS = [f"record {i} says the {w} committee met on day {i} to discuss {w} plans" for i, w in
              enumerate(["budget", "school", "river", "market", "health", "road", "library", "forest", "harbour",
                         "park"])]


def soft_config(paraphraser=None, gate=None, **options):
    """SOFT with the word-order-reversing paraphraser and the bag-of-words gate (no model to load)."""
    from tuneguard.defenses.soft import SoftConfig
    from tuneguard.paraphrase import GateConfig

    return SoftConfig(paraphraser=paraphraser or ReverseParaphraser(), gate=gate or GateConfig(),
                      embedder=BagEmbedder(), **options)


class FakeChat:
    """A chat-completions server on 127.0.0.1 whose answers are scripted, in order, then 200s: (status, body) pairs,
    or a function that writes the whole raw response itself (to break HTTP in ways http.server would not). A 200
    with no body answers the prompt's last line in capitals, after a preamble line. Used as a context manager."""

    def __init__(self, script: list[tuple[int, dict | str | bytes] | Callable] | None = None) -> None:
        self.script = list(script or [])
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                step = fake.script.pop(0) if fake.script else (200, None)
                if callable(step):
                    try:
                        step(self.wfile)
                    except OSError:  # the client gave up on a trickled answer
                        pass
                    return
                status, reply = step
                if reply is None:
                    prompt = body["messages"][-1]["content"]
                    reply = {"choices": [{"message": {"role": "assistant",
                                                      "content": "Here is the rewritten text:\n"
                                                                 + prompt.rsplit("\n", 1)[-1].upper()}}]}
                data = reply if isinstance(reply, bytes) else (reply if isinstance(reply, str)
                                                               else json.dumps(reply)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeChat":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
