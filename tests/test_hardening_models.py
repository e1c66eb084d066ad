"""Issue 24, models / training / data / scores: a mismatched tokenizer, a full disk while saving, an unreachable hub
for data, an unknown model type, reused cached scores, and the modes of what finetune writes."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path

import pytest
import torch

from helpers import save_model_dir, write_jsonl
from tuneguard.cli import main
from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_directory, read_json
from tuneguard.models import load_model, tiny_model

TEXTS = [f"Patient {i} reports mild symptoms after the {w} dose of the study drug." for i, w in
         enumerate(["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"])]


def data_file(path: Path) -> Path:
    write_jsonl(path, TEXTS)
    return path


def finetune_error(capsys, *args: str) -> str:
    """The error line of a `tuneguard finetune` that must fail with one (exit 2: an unexpected error would have
    propagated out of ``main`` with its traceback); progress bars may come before or after it."""
    assert main(["finetune", *args]) == 2
    err = capsys.readouterr().err
    lines = [line for line in re.split(r"[\r\n]", err) if line.startswith("tuneguard: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def leftovers(out: Path) -> list[str]:
    """Everything under ``out`` (hidden temporary files and directories included)."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []


# -- 3: a tokenizer of another model --------------------------------------------------------------------------------

def test_a_small_bert_tokenizer_beside_gpt2_weights_is_refused_before_training(tmp_path, capsys):
    """A BERT tokenizer marks no text with bos/eos and its ids all fit the embedding: only the model's own end of
    text (50256), which it cannot name, gives it away."""
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(995))]
    bert = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)})
    assert len(bert) == 1000
    model = save_model_dir(tmp_path / "model", tiny_model("gpt2"), bert)
    out = tmp_path / "run"
    err = finetune_error(capsys, "--model", str(model), "--data", str(data_file(tmp_path / "d.jsonl")),
                         "--epochs", "1", "--out", str(out))
    assert err.endswith(f"the model {model} marks text with token id 50256 but its tokenizer has only 1000 tokens: "
                        "the tokenizer is from another model; use the model's own tokenizer")
    assert leftovers(out) == []


# -- 4: a full disk while saving ------------------------------------------------------------------------------------

def _safetensors_full() -> Exception:
    from safetensors import SafetensorError

    return SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("error", [lambda: OSError(errno.ENOSPC, "No space left on device"), _safetensors_full],
                         ids=["oserror", "safetensors"])
def test_a_full_disk_while_saving_the_adapter_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch, error):
    import peft.peft_model

    def half_written(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{")  # the disk fills up partway
        raise error()

    monkeypatch.setattr(peft.peft_model, "safe_save_file", half_written)
    out = tmp_path / "run"
    err = finetune_error(capsys, "--model", "tiny-gpt2", "--data", str(data_file(tmp_path / "d.jsonl")),
                         "--method", "lora", "--epochs", "1", "--out", str(out))
    assert f"no space left on device writing {out}: free some space or choose another --out" in err
    assert leftovers(out) == []  # no adapter, no run record, no temporary directory


def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    def half_written(obj, f, *args, **kwargs):
        """torch.save on a disk that fills up partway (as measured on a full tmpfs)."""
        if not hasattr(f, "write"):  # torch's own file writer: the OSError is lost
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        f.write(b"PK\x03\x04")
        try:  # a Python file: torch raises its own error, with the OSError as its context
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # noqa: B904

    monkeypatch.setattr(torch, "save", half_written)
    out = tmp_path / "run"
    err = finetune_error(capsys, "--model", "tiny-gpt2", "--data", str(data_file(tmp_path / "d.jsonl")),
                         "--method", "lora", "--epochs", "2", "--out", str(out))
    assert f"no space left on device writing {out / 'checkpoint'}: free some space or choose another --out" in err
    assert leftovers(out) == []  # no checkpoint, no temporary directory


# -- 6: data from an unreachable hub --------------------------------------------------------------------------------

def test_hf_data_without_the_hub_fails_at_once_without_asking_datasets(tmp_path, capsys, monkeypatch):
    import datasets
    import huggingface_hub.constants

    import tuneguard.models.loading as loading

    calls = []

    def load_dataset(name, split):
        calls.append(name)
        return datasets.Dataset.from_list([{"text": t} for t in TEXTS])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(loading, "hub_unreachable", lambda: "https://huggingface.co does not answer (ConnectError)")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    err = finetune_error(capsys, "--model", "tiny-gpt2", "--data", "hf:org/name", "--out", str(tmp_path / "run"))
    assert err.endswith("could not load dataset 'org/name': https://huggingface.co does not answer (ConnectError); "
                        "connect to the network, use a local data file, or set HF_HUB_OFFLINE=1 to read a copy from "
                        "the local datasets cache")
    assert calls == []
    # HF_HUB_OFFLINE, the user's switch: datasets reads its local cache (at once, without the retries).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    from tuneguard.data import load_texts

    assert load_texts("hf:org/name") == TEXTS and calls == ["org/name"]


# -- 7: an unknown model type ---------------------------------------------------------------------------------------

def test_an_unknown_model_type_is_one_complete_line(tmp_path):
    import transformers

    config = save_model_dir(tmp_path, tiny_model("gpt2")) / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_type": "gpt9000"}))
    with pytest.raises(TuneguardError) as info:
        load_model(tmp_path)
    assert str(info.value) == (
        f"{config} names model_type 'gpt9000', which transformers {transformers.__version__} does not know: upgrade "
        f"transformers (pip install -U transformers) if the model is newer, else correct model_type in {config}")


# -- 9: scores reused from the cache --------------------------------------------------------------------------------

def test_scores_read_from_the_cache_are_named_in_results_and_reports(tmp_path, capsys):
    from tuneguard.attacks import run_attacks
    from tuneguard.commands.attack import print_report
    from tuneguard.report import write_mia_report

    target = tiny_model("gpt2")
    members, nonmembers = TEXTS[:4], TEXTS[4:]
    run = dict(attacks="loss", n_boot=0, progress=False)
    fresh = run_attacks(target, members, nonmembers, **run)
    assert "score_cache" not in fresh.settings  # nothing came from the cache: nothing to say
    # A run on a partly warm cache: 5 of its 7 texts were scored above.
    result = run_attacks(target, [*members[:3], "A new member text about the trial."],
                         [*nonmembers[:2], "A new non-member text about the cohort."], **run)
    assert result.settings["score_cache"] == {"target": {"from_cache": 5, "computed": 2}}
    paths = write_mia_report(tmp_path / "mia", result)
    assert read_json(paths["json"])["settings"]["score_cache"] == {"target": {"from_cache": 5, "computed": 2}}
    line = "score cache: 5 of the 7 target scores were read from the score cache, not computed in this run"
    assert line in paths["html"].read_text(encoding="utf-8")
    capsys.readouterr()
    print_report(result, paths)
    assert line in capsys.readouterr().out


# -- 10: one mode for every output ----------------------------------------------------------------------------------

def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _umask_modes() -> tuple[int, int]:
    """The modes open() and mkdir() give a new file and directory under this process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask, 0o777 & ~umask


def test_finetune_outputs_all_get_the_umask_mode(tmp_path, capsys):
    file_mode, _ = _umask_modes()
    out = tmp_path / "run"
    assert main(["finetune", "--model", "tiny-gpt2", "--data", str(data_file(tmp_path / "d.jsonl")),
                 "--method", "lora", "--epochs", "1", "--out", str(out)]) == 0
    modes = {p.name: _mode(p) for p in out.iterdir()}
    assert {"adapter_model.safetensors", "run.json"} <= set(modes)
    assert set(modes.values()) == {file_mode}, modes


def test_an_atomic_directory_gets_the_umask_modes_whoever_wrote_it(tmp_path):
    from safetensors.torch import save_file  # writes through a 0600 temporary file of its own

    file_mode, dir_mode = _umask_modes()
    with atomic_directory(tmp_path / "out") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp / "w.safetensors"))
        (tmp / "sub").mkdir(mode=0o700)
    assert _mode(tmp_path / "out") == _mode(tmp_path / "out" / "sub") == dir_mode
    assert _mode(tmp_path / "out" / "w.safetensors") == file_mode
