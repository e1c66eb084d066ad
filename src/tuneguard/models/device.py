"""Where models run: one resolver for ``--device`` / ``--dtype``, the settings every model load uses, and the check
that a model fits the memory it is asked into, before its weights load.

The command line resolves its options once (:func:`tuneguard.commands.settings_from_args`) and every load inside the
command (target, reference, SPV-MIA's reference, paraphrasers, neighbour generators) takes them from
``current_settings()``. The Python API defaults to the CPU in float32 (same seed, same numbers);
``with use_device(resolve_settings("auto")):`` or ``load_model(ref, device="auto")`` opts in to the GPU. Importing
this module loads no torch. Training's mixed-precision set-up is :mod:`tuneguard.train.precision`.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Iterator

from tuneguard.errors import TuneguardError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DTYPE_NAMES = ("float32", "bfloat16", "float16")
DTYPE_CHOICES = ("auto", *DTYPE_NAMES)
# Accelerate's big-model placements (https://huggingface.co/docs/accelerate/usage_guides/big_modeling).
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
DEVICE_HELP = "auto (a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:N or mps"


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def _cpu() -> torch.device:
    import torch

    return torch.device("cpu")


def _float32() -> torch.dtype:
    import torch

    return torch.float32


@dataclass(frozen=True)
class DeviceSettings:
    """Where and in what precision models load and run, and how training saves memory."""

    device: torch.device = field(default_factory=_cpu)
    dtype: torch.dtype = field(default_factory=_float32)
    device_map: str | None = None  # an Accelerate placement over every GPU (and the CPU): see DEVICE_MAPS
    gradient_checkpointing: bool = False

    def to_json(self) -> dict:
        """The plain form recorded in results and reports."""
        out = {"device": str(self.device), "dtype": dtype_name(self.dtype)}
        if self.device_map:
            out["device_map"] = self.device_map
        if self.gradient_checkpointing:
            out["gradient_checkpointing"] = True
        return out

    def pretrained_kwargs(self) -> dict:
        """``from_pretrained`` keyword arguments that load the weights straight into place in ``dtype`` (no float32
        copy on the CPU first). The CPU gets no device map, so CPU loading is exactly what it always was."""
        kwargs: dict = {"dtype": self.dtype}
        if self.device_map:
            kwargs["device_map"] = self.device_map
        elif self.device.type != "cpu":
            kwargs["device_map"] = str(self.device)
        return kwargs


_CURRENT: ContextVar[DeviceSettings | None] = ContextVar("tuneguard_device", default=None)


def current_settings() -> DeviceSettings:
    """The settings model loads use now: those of the innermost ``use_device``, else the CPU in float32."""
    return _CURRENT.get() or DeviceSettings()


@contextmanager
def use_device(settings: DeviceSettings) -> Iterator[DeviceSettings]:
    """Make ``settings`` the default of every model load inside the block."""
    token = _CURRENT.set(settings)
    try:
        yield settings
    finally:
        _CURRENT.reset(token)


def _cuda_device(index: int | None) -> torch.device:
    import torch

    if not torch.cuda.is_available():
        raise TuneguardError("device cuda: no CUDA GPU is available to torch (torch.cuda.is_available() is False; a "
                             "CPU-only torch build?): use --device cpu or --device auto")
    count = torch.cuda.device_count()
    if index is None:  # this process's GPU: under `accelerate launch` each process has its own
        index = int(os.environ.get("LOCAL_RANK", "0"))
    if not 0 <= index < count:
        raise TuneguardError(f"device cuda:{index}: this machine has {count} CUDA GPU(s) (cuda:0 to "
                             f"cuda:{count - 1})")
    return torch.device("cuda", index)


def _parse_device(device: str | torch.device) -> torch.device:
    import torch

    text = str(device).strip().lower()
    if text == "auto":
        return _cuda_device(None) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not torch.backends.mps.is_available():
            raise TuneguardError("device mps: Apple's Metal backend is not available here: use --device cpu")
        return torch.device("mps")
    if text == "cuda" or text.startswith("cuda:"):
        index = text.removeprefix("cuda").removeprefix(":")
        if index and not index.isdigit():
            raise TuneguardError(f"device {device!r}: expected cuda:N with N a GPU number, e.g. cuda:0")
        return _cuda_device(int(index) if index else None)
    raise TuneguardError(f"device {device!r}: use {DEVICE_HELP}")


def _runs_in(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether torch computes a layer and a log-softmax in ``dtype`` on ``device`` (what scoring needs)."""
    import torch

    try:
        x = torch.ones(2, 8, dtype=dtype, device=device)
        torch.log_softmax(torch.nn.functional.linear(x, torch.ones(4, 8, dtype=dtype, device=device)), -1)
    except (RuntimeError, TypeError) as exc:
        log.info("%s on %s: %s", dtype_name(dtype), device, exc)
        return False
    return True


def _parse_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    import torch

    name = dtype_name(dtype) if isinstance(dtype, torch.dtype) else str(dtype).strip().lower()
    if name == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    if name not in DTYPE_NAMES:
        raise TuneguardError(f"dtype {dtype!r}: use one of {', '.join(DTYPE_CHOICES)}")
    chosen = getattr(torch, name)
    if chosen is torch.float16 and device.type == "cpu":
        # Refused, not warned: on the CPU float16 is slower than float32, and training in it without loss scaling
        # underflows (its gradients vanish), so no run would want it.
        raise TuneguardError("dtype float16 on the CPU: slower than float32 there, and training in it underflows; "
                             "use float32, or bfloat16")
    if chosen is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TuneguardError(f"dtype bfloat16: the GPU {torch.cuda.get_device_name(device)} does not compute "
                             "bfloat16; use float16 or float32")
    if chosen is not torch.float32 and device.type != "cuda" and not _runs_in(chosen, device):
        raise TuneguardError(f"dtype {name}: torch cannot compute {name} on {device} here; use float32")
    return chosen


def resolve_device(device: str | torch.device = "auto",
                   dtype: str | torch.dtype = "auto") -> tuple[torch.device, torch.dtype]:
    """The device and dtype that ``device`` (auto, cpu, cuda, cuda:N, mps) and ``dtype`` (auto, float32, bfloat16,
    float16) name here; ``auto``: a CUDA GPU in bfloat16 when there is one, else the CPU in float32. Refuses, in one
    line, a device this machine lacks and a dtype it cannot compute there (float16 on the CPU included)."""
    resolved = _parse_device(device)
    return resolved, _parse_dtype(dtype, resolved)


def resolve_settings(device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                     device_map: str | None = None, gradient_checkpointing: bool | None = None) -> DeviceSettings:
    """``current_settings()`` with what is given replaced (``device`` and ``dtype`` as in ``resolve_device``; a
    device given without a dtype takes ``auto``'s: bfloat16 on a GPU that computes it, else float32)."""
    base = current_settings()
    if device_map is not None and device_map not in DEVICE_MAPS:
        raise TuneguardError(f"device map {device_map!r}: use one of {', '.join(DEVICE_MAPS)}")
    if device is None and dtype is None:
        resolved = base.device, base.dtype
    else:
        resolved = resolve_device(base.device if device is None else device,
                                  dtype if dtype is not None else "auto" if device is not None else base.dtype)
    if device_map and resolved[0].type != "cuda":
        raise TuneguardError(f"device map {device_map!r} spreads a model over CUDA GPUs and there is none here "
                             f"(device {resolved[0]}): leave the device map out")
    return replace(base, device=resolved[0], dtype=resolved[1],
                   device_map=base.device_map if device_map is None else device_map,
                   gradient_checkpointing=base.gradient_checkpointing if gradient_checkpointing is None
                   else gradient_checkpointing)


def free_memory(settings: DeviceSettings) -> tuple[int, str]:
    """Bytes free where ``settings`` load a model, and a name for that place. A device map may fill every GPU and
    then the CPU's memory; the CPU (and Apple's unified memory) count what the OS reports as available."""
    import psutil  # an Accelerate dependency
    import torch

    ram = psutil.virtual_memory().available
    if settings.device_map:
        gpus = sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
        return gpus + ram, f"{torch.cuda.device_count()} GPU(s) and the CPU"
    if settings.device.type == "cuda":
        return torch.cuda.mem_get_info(settings.device)[0], str(settings.device)
    return ram, "the CPU" if settings.device.type == "cpu" else str(settings.device)


def check_fits(ref: str, n_parameters: int, settings: DeviceSettings) -> None:
    """Refuse to load a model whose weights alone exceed the free memory where they would go."""
    need = n_parameters * settings.dtype.itemsize
    free, where = free_memory(settings)
    if need > free:
        gib = 1024 ** 3
        hint = "--dtype bfloat16, " if settings.dtype.itemsize == 4 else ""
        if settings.device.type == "cuda" and not settings.device_map:
            hint += "--device-map auto (every GPU, then the CPU), "
        count = f"{n_parameters / 1e9:.2f}B" if n_parameters >= 1e9 else f"{n_parameters / 1e6:.1f}M"
        raise TuneguardError(f"{ref} has {count} parameters, {need / gib:.1f} GiB in "
                             f"{dtype_name(settings.dtype)}, more than the {free / gib:.1f} GiB free on {where}: use "
                             f"{hint}or a machine with more memory")
