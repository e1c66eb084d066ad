"""Device and dtype: one resolver, refusals before any work, the settings every load uses, mixed-precision training,
gradient checkpointing, and where results record them. CUDA is simulated (monkeypatched availability) or skipped."""

from __future__ import annotations

import pytest
import torch

import tuneguard.models.device as device_mod
import tuneguard.models.loading as loading
from helpers import save_model_dir
from tuneguard.cli import main
from tuneguard.errors import TuneguardError
from tuneguard.models import load_model
from tuneguard.models.device import (DeviceSettings, check_fits, resolve_device, resolve_settings, use_device)
from tuneguard.train import TrainConfig, finetune

TEXTS = [f"device text number {i} about the weather on day {i}" for i in range(8)]


@pytest.fixture
def gpus(monkeypatch):
    """Pretend torch sees CUDA GPUs (``gpus(n, bf16=...)``); nothing is put on them."""
    def fake(n: int = 2, *, bf16: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Old GPU")
    return fake


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_auto_is_the_cpu_in_float32_without_a_gpu(no_gpu):
    assert resolve_device("auto", "auto") == (torch.device("cpu"), torch.float32)
    assert resolve_device("cpu", "float32") == (torch.device("cpu"), torch.float32)


def test_auto_is_a_gpu_in_bfloat16_when_there_is_one(gpus, monkeypatch):
    gpus(2)
    assert resolve_device("auto", "auto") == (torch.device("cuda", 0), torch.bfloat16)
    monkeypatch.setenv("LOCAL_RANK", "1")  # under `accelerate launch`: this process's GPU
    assert resolve_device("cuda", "auto") == (torch.device("cuda", 1), torch.bfloat16)
    assert resolve_device("cuda:0", "float16") == (torch.device("cuda", 0), torch.float16)
    assert resolve_settings("cuda:0").dtype is torch.bfloat16  # a device without a dtype: auto's


def test_a_gpu_without_bfloat16_gets_float32_by_default_and_refuses_bfloat16(gpus):
    gpus(1, bf16=False)
    assert resolve_device("auto", "auto")[1] is torch.float32
    with pytest.raises(TuneguardError, match="Old GPU does not compute bfloat16"):
        resolve_device("cuda", "bfloat16")


@pytest.mark.parametrize("device, dtype, message", [
    ("cuda", "auto", "no CUDA GPU is available"),
    ("cuda:0", "auto", "no CUDA GPU is available"),
    ("mps", "auto", "Metal backend is not available"),
    ("tpu", "auto", "use auto .*cpu, cuda, cuda:N or mps"),
    ("cuda:x", "auto", "expected cuda:N"),
    ("cpu", "float16", "float16 on the CPU"),
    ("cpu", "int8", "dtype 'int8': use one of auto, float32, bfloat16, float16"),
])
def test_bad_device_or_dtype_is_one_line(no_gpu, device, dtype, message):
    with pytest.raises(TuneguardError, match=message) as info:
        resolve_device(device, dtype)
    assert "\n" not in str(info.value)


def test_a_gpu_number_this_machine_lacks(gpus):
    gpus(2)
    with pytest.raises(TuneguardError, match=r"cuda:3: this machine has 2 CUDA GPU\(s\) \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:3")


def test_bfloat16_on_the_cpu_only_where_torch_computes_it(no_gpu, monkeypatch):
    assert resolve_device("cpu", "bfloat16")[1] is torch.bfloat16  # torch computes it on this CPU
    monkeypatch.setattr(device_mod, "_runs_in", lambda dtype, device: False)
    with pytest.raises(TuneguardError, match="torch cannot compute bfloat16 on cpu"):
        resolve_device("cpu", "bfloat16")


def test_a_device_map_needs_gpus(no_gpu):
    with pytest.raises(TuneguardError, match="device map 'auto' spreads a model over CUDA GPUs"):
        resolve_settings("auto", "auto", "auto")


def test_the_cli_refuses_a_missing_gpu_before_any_work(no_gpu, tmp_path, capsys, monkeypatch):
    import tuneguard.attacks

    def no_work(*args, **kwargs):
        raise AssertionError("the command ran before its device was checked")
    monkeypatch.setattr(tuneguard.attacks, "run_attacks", no_work)
    for option in (["--device", "cuda"], ["--dtype", "float16"]):
        code = main(["attack", "--target", "tiny-gpt2", "--members", "m.jsonl", "--nonmembers", "n.jsonl",
                     "--out", str(tmp_path / "out"), *option])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith("tuneguard: error: ")


def test_every_model_loading_command_takes_the_device_options():
    from tuneguard.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    takes = {name for name, p in sub.choices.items() if any("--device" in a.option_strings for a in p._actions)}
    backdoor = next(a for a in sub.choices["backdoor"]._actions if a.dest == "backdoor_command").choices
    steps = {s for s, p in backdoor.items() if any("--dtype" in a.option_strings for a in p._actions)}
    assert takes == {"finetune", "attack", "audit", "demo", "scan", "audit-dp"}  # `run`: the experiment file's
    assert steps == {"train", "evaluate", "calibrate", "population"}
    soft = next(a for a in sub.choices["defend"]._actions if a.dest == "defence").choices["soft"]
    assert any("--gradient-checkpointing" in a.option_strings for a in soft._actions)


def test_loads_take_the_current_settings(no_gpu):
    assert load_model("tiny-gpt2").placement() == {"device": "cpu", "dtype": "float32"}
    with use_device(resolve_settings("cpu", "bfloat16")):
        loaded = load_model("tiny-llama")
        assert loaded.dtype is torch.bfloat16 and loaded.placement()["dtype"] == "bfloat16"
    assert load_model("tiny-gpt2", dtype="bfloat16").dtype is torch.bfloat16
    assert load_model("tiny-gpt2").dtype is torch.float32  # the API's default is unchanged outside the block


class _Stop(Exception):
    pass


@pytest.mark.parametrize("settings, expected", [
    (DeviceSettings(), {"dtype": torch.float32}),  # the CPU: no device map, loading as it always was
    (DeviceSettings(torch.device("cuda", 1), torch.bfloat16), {"dtype": torch.bfloat16, "device_map": "cuda:1"}),
    (DeviceSettings(torch.device("cuda", 0), torch.bfloat16, device_map="auto"),
     {"dtype": torch.bfloat16, "device_map": "auto"}),
])
def test_weights_load_straight_into_place_in_their_dtype(tmp_path, monkeypatch, settings, expected):
    from transformers import AutoModelForCausalLM

    seen = {}

    def spy(source, **kwargs):
        seen.update(kwargs)
        raise _Stop
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    monkeypatch.setattr(loading, "check_fits", lambda *a: None)  # no GPU to ask for free memory
    with pytest.raises(_Stop):
        loading._load(str(save_model_dir(tmp_path)), adapter=None, base=None, task="causal-lm", num_labels=2,
                      settings=settings)
    assert seen == {**expected, "use_safetensors": True}


def test_a_model_too_big_for_the_free_memory_is_refused_before_its_weights_load(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    def no_load(*args, **kwargs):
        raise AssertionError("the weights loaded before the memory check")
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_load)
    monkeypatch.setattr(device_mod, "free_memory", lambda settings: (1000, "the CPU"))
    with pytest.raises(TuneguardError, match=r"has \d+\.\dM parameters, 0.0 GiB in float32, more than the 0.0 GiB "
                                             r"free on the CPU: use --dtype bfloat16, or a machine"):
        load_model(save_model_dir(tmp_path))


def test_check_fits_counts_the_dtype_and_names_the_fix(monkeypatch):
    gib = 1024 ** 3
    monkeypatch.setattr(device_mod, "free_memory", lambda settings: (20 * gib, "cuda:0"))
    gpu = DeviceSettings(torch.device("cuda", 0), torch.bfloat16)
    check_fits("llama-8b", 8_030_000_000, gpu)  # 15 GiB in bfloat16 fits in 20
    with pytest.raises(TuneguardError, match=r"llama-8b has 8.03B parameters, 29.9 GiB in float32, more than the "
                                             r"20.0 GiB free on cuda:0: use --dtype bfloat16, --device-map auto"):
        check_fits("llama-8b", 8_030_000_000, DeviceSettings(torch.device("cuda", 0), torch.float32))


def _trained(tmp_path, name, settings=None, **config):
    with use_device(settings or DeviceSettings()):
        return finetune("tiny-gpt2", TEXTS, tmp_path / name,
                        TrainConfig(epochs=1, batch_size=4, lr=1e-2, **config), progress=False)


def test_bfloat16_trains_in_mixed_precision_and_float32_runs_stay_exact(tmp_path):
    from accelerate.state import AcceleratorState

    before = _trained(tmp_path, "fp32-a")
    bf16 = _trained(tmp_path, "bf16", resolve_settings("cpu", "bfloat16"))
    assert AcceleratorState().mixed_precision == "bf16"
    lora = {n: p.dtype for n, p in bf16.model.model.named_parameters() if "lora_" in n}
    assert lora and set(lora.values()) == {torch.float32}  # the trained weights stay float32
    assert bf16.model.dtype is torch.bfloat16 and all(map(torch.isfinite, map(torch.tensor, bf16.record.loss_curve)))
    after = _trained(tmp_path, "fp32-b")  # a fresh Accelerate state: not the bf16 one, and no refusal
    assert AcceleratorState().mixed_precision == "no"
    assert after.record.loss_curve == before.record.loss_curve


def test_gradient_checkpointing_saves_memory_not_results(tmp_path):
    plain = _trained(tmp_path, "plain", method="full")
    ckpt = _trained(tmp_path, "ckpt", resolve_settings(gradient_checkpointing=True), method="full")
    assert ckpt.model.model.is_gradient_checkpointing and not plain.model.model.is_gradient_checkpointing
    assert torch.allclose(torch.tensor(ckpt.record.loss_curve), torch.tensor(plain.record.loss_curve), rtol=1e-5)


def test_results_record_the_device_and_dtype(tmp_path):
    from tuneguard.attacks import run_attacks

    members, nonmembers = TEXTS[:4], TEXTS[4:]
    result = run_attacks(load_model("tiny-gpt2", dtype="bfloat16"), members, nonmembers, attacks="loss",
                         n_boot=10, cache=False, progress=False)
    assert result.settings["device"] == "cpu" and result.settings["dtype"] == "bfloat16"


def test_an_experiment_file_sets_the_device_and_is_checked_at_load(tmp_path, no_gpu):
    from test_experiment import EXPERIMENT, experiment

    from tuneguard.experiment import settings_of

    exp = experiment(tmp_path, EXPERIMENT.replace('out = "out"', 'out = "out"\ndtype = "bfloat16"'))
    assert exp.device.dtype is torch.bfloat16 and settings_of(exp)["dtype"] == "bfloat16"
    with pytest.raises(TuneguardError, match=r"exp.toml: device cuda: no CUDA GPU is available"):
        experiment(tmp_path, EXPERIMENT.replace('out = "out"', 'out = "out"\ndevice = "cuda"'))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_auto_loads_and_trains_in_bfloat16(tmp_path):
    settings = resolve_settings("auto", "auto")
    with use_device(settings):
        loaded = load_model("tiny-llama")
    assert loaded.device.type == "cuda" and loaded.dtype is torch.bfloat16
    run = _trained(tmp_path, "gpu", settings)
    assert run.model.device.type == "cuda" and all(map(torch.isfinite, map(torch.tensor, run.record.loss_curve)))
