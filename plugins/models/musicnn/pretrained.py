"""Pretrained musicnn weights: converted once from the TF checkpoints, then safetensors.

The first load reads ``<MTT|MSD>_musicnn`` out of the ``musicnn==0.1.0`` wheel
(:mod:`.wheel`), decodes the TF checkpoint without TensorFlow (:mod:`.tf_checkpoint`), maps
every variable onto :class:`.network.MusicnnNet` (:func:`.network.state_dict_from_tf`) and
writes ``<cache dir>/models/musicnn-<mtt|msd>-<hash>.safetensors``. Later loads read only that
file. The hash covers the port's conversion version and the pinned checkpoint hashes.

Tag vocabularies are those of ``musicnn/configuration.py`` (checked against the wheel at
conversion). Models: J. Pons and X. Serra, "musicnn: pre-trained convolutional neural networks
for music audio tagging", ISMIR 2019 LBD.
"""

from __future__ import annotations

import ast
import hashlib
import json
import time
from pathlib import Path
from typing import Literal

import torch

from musicbench.checkpoints import load_module, save_module
from musicbench.interfaces import Context
from musicbench_plugins.models.musicnn import wheel
from musicbench_plugins.models.musicnn.network import (
    MusicnnNet,
    state_dict_from_tf,
    tf_names_needed,
)
from musicbench_plugins.models.musicnn.tf_checkpoint import read_tensors

Variant = Literal["mtt", "msd"]

# Bump when the conversion (mapping, layout) changes: it is part of the cache file name.
CONVERSION_VERSION = "1"

MTT_TAGS: tuple[str, ...] = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast",
    "piano", "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male",
    "singing", "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman",
    "male vocal", "no vocal", "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice",
    "new age", "dance", "male voice", "female vocal", "beats", "harp", "cello", "no voice",
    "weird", "country", "metal", "female voice", "choral",
)
MSD_TAGS: tuple[str, ...] = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
    "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists",
    "classic rock", "soul", "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill",
    "instrumental", "punk", "oldies", "blues", "hard rock", "ambient", "acoustic",
    "experimental", "female vocalist", "guitar", "Hip-Hop", "70s", "party", "country",
    "easy listening", "sexy", "catchy", "funk", "electro", "heavy metal", "Progressive rock",
    "60s", "rnb", "indie pop", "sad", "House", "happy",
)
VOCABULARY: dict[str, tuple[str, ...]] = {"mtt": MTT_TAGS, "msd": MSD_TAGS}

# Genre (and style) tags of each vocabulary: the default classification subsets. Instruments,
# voices, moods, tempi, loudness and decades are left out; "classic" (an MTT near-duplicate
# of "classical") too.
MTT_GENRES: tuple[str, ...] = (
    "classical", "techno", "electronic", "rock", "ambient", "indian", "opera", "pop",
    "new age", "dance", "country", "metal",
)
MSD_GENRES: tuple[str, ...] = (
    "rock", "pop", "alternative", "indie", "electronic", "dance", "alternative rock", "jazz",
    "metal", "chillout", "classic rock", "soul", "indie rock", "electronica", "folk", "punk",
    "blues", "hard rock", "ambient", "experimental", "Hip-Hop", "country", "easy listening",
    "funk", "electro", "heavy metal", "Progressive rock", "rnb", "indie pop", "House",
)


def checkpoint_path(cache_dir: Path, variant: Variant) -> Path:
    """Where the converted weights of ``variant`` live (no I/O)."""
    prefix = f"{variant.upper()}_musicnn/"
    pinned = {k: v for k, v in wheel.CHECKPOINT_SHA256.items() if k.startswith(prefix)}
    blob = json.dumps([CONVERSION_VERSION, variant, pinned], sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return cache_dir / "models" / f"musicnn-{variant}-{key}.safetensors"


def _wheel_vocabulary(files: wheel.MusicnnFiles, variant: Variant) -> tuple[str, ...]:
    """The ``<MTT|MSD>_LABELS`` list of the wheel's configuration.py (parsed, not executed)."""
    tree = ast.parse(files.read("configuration.py"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == f"{variant.upper()}_LABELS" for t in node.targets
        ):
            return tuple(ast.literal_eval(node.value))
    raise wheel.MusicnnWheelError(f"{files}: no {variant.upper()}_LABELS in configuration.py")


def convert(files: wheel.MusicnnFiles, variant: Variant, path: Path) -> dict:
    """Read ``variant``'s TF checkpoint from ``files``, map it onto a :class:`MusicnnNet` and
    save it to ``path``; returns the metadata stored with it."""
    t0 = time.perf_counter()
    if _wheel_vocabulary(files, variant) != VOCABULARY[variant]:
        raise wheel.MusicnnWheelError(f"{files}: the {variant} tag list differs from ours")
    index, data = files.checkpoint(variant.upper())  # type: ignore[arg-type]
    tensors = read_tensors(index, [data])  # all of them: unmapped names must fail loudly
    net = MusicnnNet()
    net.load_state_dict(state_dict_from_tf(tensors, net), strict=True)
    meta = {
        "source": f"{wheel.REQUIREMENT} ({files.kind}), musicnn/{variant.upper()}_musicnn",
        "checkpoint_sha256": {k: v for k, v in wheel.CHECKPOINT_SHA256.items()
                              if k.startswith(variant.upper())},
        "conversion_version": CONVERSION_VERSION,
        "tf_variables": len(tf_names_needed()),
        "tags": list(VOCABULARY[variant]),
        "licence": "ISC, (c) Music Technology Group, Universitat Pompeu Fabra 2019",
        "convert_seconds": round(time.perf_counter() - t0, 3),
    }
    save_module(net, path, meta)
    return meta


def load_pretrained(ctx: Context, variant: Variant) -> tuple[MusicnnNet, dict]:
    """The frozen pretrained network on ``ctx.device`` and its metadata, converting the
    checkpoint from the musicnn wheel on first use."""
    if variant not in VOCABULARY:
        raise ValueError(f"musicnn variant must be 'mtt' or 'msd', got {variant!r}")
    path = checkpoint_path(Path(ctx.cache_dir), variant)
    if not path.exists():
        files = wheel.locate(Path(ctx.cache_dir))
        with ctx.progress(f"converting musicnn-{variant} from {files.path.name}") as task:
            convert(files, variant, path)
            task.advance()
    net = MusicnnNet()
    meta = load_module(net, path, torch.device("cpu"))
    net = net.to(ctx.device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, meta
