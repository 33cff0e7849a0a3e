"""Weights on disk as safetensors: loading never unpickles code."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from musicbench.files import default_file_mode


def save_module(module: torch.nn.Module, path: Path, metadata: dict[str, Any]) -> None:
    """Write ``module``'s state dict to ``path`` atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"musicbench": json.dumps(metadata, sort_keys=True)})
        os.chmod(tmp, default_file_mode())  # mkstemp's 0600 -> the umask's (musicbench.files)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
