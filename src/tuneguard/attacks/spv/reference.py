"""SPV-MIA step 2: the reference model, fine-tuned from the target's base with the target's own PEFT set-up."""

from __future__ import annotations

import json
from pathlib import Path

from tuneguard.attacks.run_record import run_record
from tuneguard.errors import TuneguardError
from tuneguard.models import LoadedModel, load_model, reference_of
from tuneguard.train import METHODS, TrainConfig, finetune
from tuneguard.train.methods import method_of_adapter


def target_setup(target: LoadedModel) -> dict:
    """The target's fine-tuning set-up as ``TrainConfig`` fields: method and what its adapter records (for LoRA,
    r / alpha / dropout / modules / layers; for prefix tuning, the virtual tokens).

    Read from the tuneguard run record (``run.json``) next to the target's adapter or model, else from the adapter's
    ``adapter_config.json`` (the method whose declared ``peft_type`` it records, and that method's
    :meth:`~tuneguard.train.methods.TrainMethod.train_options`); a target with neither is taken as fully fine-tuned.
    """
    record = run_record(target)
    if record is not None:
        config = record.config
        keys = ("method", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "lora_layers",
                "num_virtual_tokens")
        return {k: config[k] for k in keys if k in config}
    where = Path(target.meta.get("adapter") or target.ref)
    if (where / "adapter_config.json").is_file():
        cfg = json.loads((where / "adapter_config.json").read_text(encoding="utf-8"))
        method = method_of_adapter(cfg)
        if method is None:
            raise TuneguardError(f"the target adapter's method {cfg.get('peft_type')} has no tuneguard trainer; "
                                 "choose --param spv-mia.reference=base or give a reference model")
        return {"method": method, **METHODS.get(method).train_options(cfg)}
    return {"method": "full"}


def train_reference(target: LoadedModel, texts: list[str], out_dir: str | Path, *, base: str | None = None,
                    epochs: int = 2, lr: float = 5e-5, max_length: int = 128, batch_size: int = 8, seed: int = 0,
                    progress: bool = True) -> LoadedModel:
    """Fine-tune the target's base model on ``texts`` with the target's set-up (official: 2 epochs, lr 5e-5).

    Resumable and cached in ``out_dir`` by ``tuneguard.train.finetune``.
    """
    base = reference_of(target, base)
    if not base:
        raise TuneguardError(f"cannot tell which base model {target.ref} was fine-tuned from: name it with "
                             "--param spv-mia.base=MODEL")
    config = TrainConfig(**target_setup(target), epochs=epochs, lr=lr, max_length=max_length,
                         batch_size=batch_size, seed=seed)
    return finetune(load_model(base), texts, out_dir, config, progress=progress).model
