"""Weights on disk as safetensors: loading never unpickles code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from musicbench.files import atomic_write_bytes


def save_module(module: torch.nn.Module, path: Path, metadata: dict[str, Any]) -> None:
    """Write ``module``'s state dict to ``path`` atomically (temp file, then rename); a full
    disk is a :class:`~musicbench.errors.StorageFullError` naming ``path``. Serialized in
    memory first: written by Python, a full disk is an ``OSError`` that says so (safetensors'
    own writer reports it as a ``SafetensorError`` wrapping the OS error)."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    data = save(state, metadata={"musicbench": json.dumps(metadata, sort_keys=True)})
    atomic_write_bytes(path, data)


def load_module(module: torch.nn.Module, path: Path, device: torch.device) -> dict[str, Any]:
    """Load ``path`` into ``module`` (strict) and return the metadata saved with it."""
    state = load_file(str(path), device=str(device))
    module.load_state_dict(state, strict=True)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get("musicbench", "{}"))


def state_digest(module: torch.nn.Module) -> str:
    """A hash of ``module``'s state dict (names, dtypes, shapes and values), independent of
    device: two modules with equal weights and buffers have equal digests."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
