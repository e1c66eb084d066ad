"""Synthetic PEFT LoRA adapter directories (random weights of a real model's shapes), for tests and benchmarks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from tuneguard.files import atomic_directory

# SmolLM2-135M: 30 layers, width 576, MLP 1536, 3 KV heads of 64 -> k/v project to 192.
SMOLLM2_MODULES = {
    "self_attn.q_proj": (576, 576), "self_attn.k_proj": (576, 192), "self_attn.v_proj": (576, 192),
    "self_attn.o_proj": (576, 576), "mlp.gate_proj": (576, 1536), "mlp.up_proj": (576, 1536),
    "mlp.down_proj": (1536, 576),
}
SMOLLM2_LAYERS = 30


def write_synthetic_adapter(out_dir: str | os.PathLike, *, r: int = 16, alpha: int = 16, seed: int = 0,
                            modules: dict[str, tuple[int, int]] = SMOLLM2_MODULES, layers: int = SMOLLM2_LAYERS,
                            b_std: float = 0.01, boost: dict[str, float] | None = None,
                            base_model: str = "smollm2-135m", dtype: str = "float32",
                            modules_to_save: dict[str, np.ndarray] | None = None) -> Path:
    """Write a LoRA adapter with Gaussian A (Kaiming-like) and B (``b_std``); ``boost`` multiplies the B of every
    module whose path ends with a key (a crude stand-in for a backdoor concentrated in some modules).
    ``modules_to_save``: full tensors by their base-model name (``lm_head.weight`` -> ``lm_head``), saved as PEFT
    saves a modules_to_save copy."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(layers):
        for name, (d_in, d_out) in modules.items():
            prefix = f"base_model.model.model.layers.{layer}.{name}"
            a = rng.standard_normal((r, d_in), dtype=np.float32) / np.sqrt(d_in)
            b = rng.standard_normal((d_out, r), dtype=np.float32) * b_std
            b *= max((v for k, v in (boost or {}).items() if name.endswith(k)), default=1.0)
            tensors[f"{prefix}.lora_A.weight"] = a.astype(dtype)
            tensors[f"{prefix}.lora_B.weight"] = b.astype(dtype)
    saved = modules_to_save or {}
    tensors |= {f"base_model.model.{name}": np.asarray(value).astype(dtype) for name, value in saved.items()}
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
        "target_modules": sorted({n.rsplit(".", 1)[-1] for n in modules}), "use_rslora": False, "use_dora": False,
        "rank_pattern": {}, "alpha_pattern": {},
        "modules_to_save": sorted({n.rsplit(".", 2)[-2] for n in saved}) or None, "base_model_name_or_path": base_model,
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
    }
    with atomic_directory(out_dir) as tmp:
        save_file(tensors, str(tmp / "adapter_model.safetensors"))
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return Path(out_dir)
