"""Safetensors files read without torch: the header's tensor names, dtypes and shapes, and the tensors as numpy arrays.

The file is opened with ``safetensors.safe_open(framework="numpy")``: its Rust parser refuses a header over 100 MB
before reading it, and validates the header (a JSON object of known dtypes), the offsets (inside the file, contiguous,
not overlapping, covering the file) and that every shape fits its bytes. numpy has no bfloat16, so those tensors' bits
are read from the validated offsets and widened to float32.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneguard.errors import TuneguardError

# safetensors dtypes tuneguard reads (as before the switch to safe_open); FLOATS can hold NaN/inf.
READABLE = ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL")
FLOATS = ("F64", "F32", "F16", "BF16")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@contextmanager
def _safe_open(path: Path) -> Iterator[Any]:
    """``safe_open`` with its errors turned into one line naming the file."""
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(str(path), framework="numpy")
    except SafetensorError as exc:
        why = str(exc).removeprefix("Error while deserializing header: ").splitlines()[0][:200]
        raise TuneguardError(f"{path} is not a valid safetensors file ({why}); re-save the adapter with "
                             "safetensors") from None
    except OSError as exc:
        raise TuneguardError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle as f:
        yield f


def read_safetensors_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Every tensor's name, dtype and shape in a safetensors file, once safetensors has validated it (no data read)."""
    with _safe_open(Path(path)) as f:
        return {k: TensorInfo(k, s.get_dtype(), tuple(s.get_shape())) for k in f.keys() for s in [f.get_slice(k)]}


def load_tensors(path: str | os.PathLike, names: list[str] | None = None, *,
                 header: dict[str, TensorInfo] | None = None) -> dict[str, np.ndarray]:
    """Read tensors (all, or ``names``) from a safetensors file as numpy arrays (BF16 widened to float32); pass
    ``header`` when it was already read. A dtype tuneguard cannot read is refused with the tensor named."""
    return dict(iter_tensors(path, names, header=header))


def iter_tensors(path: str | os.PathLike, names: list[str] | None = None, *,
                 header: dict[str, TensorInfo] | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """``load_tensors`` one tensor at a time, so that only one is in memory."""
    path = Path(path)
    header = header if header is not None else read_safetensors_header(path)
    offsets: dict | None = None
    with _safe_open(path) as f:
        for name in list(header) if names is None else names:
            info = header[name]
            if info.dtype not in READABLE:
                raise TuneguardError(f"{path}: tensor {name} has dtype {info.dtype}, which tuneguard cannot read; "
                                     "save the adapter in float32, float16 or bfloat16")
            if info.dtype != "BF16":
                yield name, f.get_tensor(name)
                continue
            offsets = offsets if offsets is not None else _data_offsets(path)
            yield name, _read_bf16(path, offsets[name], info.shape)


def _data_offsets(path: Path) -> dict:
    """Absolute (start, end) byte offsets of every tensor. Only called once safe_open has validated the file, so its
    header is trusted here."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    return {k: (8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1]) for k, v in header.items()
            if k != "__metadata__"}


def _read_bf16(path: Path, span: tuple[int, int], shape: tuple[int, ...]) -> np.ndarray:
    """A BF16 tensor as float32 (numpy has no bfloat16): its 16-bit patterns are the top halves of float32 ones."""
    with open(path, "rb") as fh:
        fh.seek(span[0])
        bits = np.frombuffer(fh.read(span[1] - span[0]), dtype="<u2").reshape(shape)
    return (bits.astype(np.uint32) << 16).view(np.float32)
