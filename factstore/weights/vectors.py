"""Key and value vectors as stored: float32 little-endian bytes, with shape and sha256."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from factstore.errors import FactStoreError


def to_bytes(t: torch.Tensor) -> tuple[bytes, tuple[int, ...]]:
    arr = t.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False)
    return arr.tobytes(), tuple(arr.shape)


def from_bytes(data: bytes, shape: tuple[int, ...], sha256: str | None = None) -> torch.Tensor:
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise FactStoreError("a stored vector does not match its sha256; the database row is corrupted")
    arr = np.frombuffer(data, dtype="<f4").reshape(shape).astype(np.float32)
    return torch.from_numpy(arr.copy())
