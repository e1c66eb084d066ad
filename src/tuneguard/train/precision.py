"""Training's mixed-precision set-up: the Accelerator for where and in what dtype the model was loaded, and the
model's trainable weights readied for it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuneguard.models.device import dtype_name

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator


def mixed_precision(dtype: torch.dtype) -> str:
    """Accelerate's ``mixed_precision`` for training a model loaded in ``dtype``."""
    return {"bfloat16": "bf16", "float16": "fp16"}.get(dtype_name(dtype), "no")


def training_accelerator(device: torch.device, dtype: torch.dtype, **kwargs: object) -> Accelerator:
    """An ``accelerate.Accelerator`` that trains on ``device`` (where the model was loaded), in bf16 / fp16 mixed
    precision when the model is in bfloat16 / float16. Accelerate keeps one state per process, fixed by its first
    Accelerator: a single process that trained on another device or in another precision before gets a fresh one
    (else the new precision is refused, or a CPU state silently trains a GPU model on the CPU)."""
    import torch
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState

    cpu, mixed = device.type == "cpu", mixed_precision(dtype)
    if AcceleratorState._shared_state and PartialState().num_processes == 1:
        state = AcceleratorState()
        if state.mixed_precision != mixed or (state.device.type == "cpu") != cpu:
            AcceleratorState._reset_state(reset_partial_state=True)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # a single process trains on "cuda", the current GPU
    return Accelerator(cpu=cpu, mixed_precision=mixed, **kwargs)


def prepare_precision(net: torch.nn.Module, *, gradient_checkpointing: bool = False) -> None:
    """Ready a model for mixed-precision training: its trainable weights in float32 (AdamW's small updates vanish
    in bfloat16; autocast computes in low precision all the same), and, when asked, activations recomputed in the
    backward pass instead of kept (non-reentrant, so a frozen embedding needs no input gradients)."""
    import torch

    for p in net.parameters():
        if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16):
            p.data = p.data.float()
    if gradient_checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
