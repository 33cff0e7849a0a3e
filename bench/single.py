"""Attack one audio file: ``musicbench attack IN --model M --attack A [--defense D] -o OUT``.

The file is read at any rate and channel count the loaders accept, attacked at the model's
rate exactly as a cell would attack it (the harness's adaptive evaluation of a preprocessing
defense, success judged by the harness over draws), and written back at the input's rate: the
perturbation (at the model's rate) is resampled to the input's rate and added to the original
(mono-mixed) signal, so the output keeps the input's bandwidth, and resampling being linear,
the model sees its clean input plus the perturbation. The written file is then read back and
judged again, since writing (clipping, the file's sample format) may undo an attack.

The label attacked is the undefended model's top-1 on the clean file (there is no ground truth
for a single file): an untargeted attack succeeds when the prediction leaves it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from musicbench.audio import BadAudioError, _resample, load_audio, stat_input
from musicbench.config import ComponentSpec, RunSettings
from musicbench.defense_checks import measure
from musicbench.errors import ConfigError
from musicbench.files import check_writable_file
from musicbench.leaderboard import WEAK, marked
from musicbench.metrics import lsd, snr_db
from musicbench.planner import evaluation
from musicbench.victim import Scorer, Victim
from musicbench.workspace import Workspace

# The shortest clip a run attacks: the file datasets refuse ``clip_seconds`` below 0.1 s
# (plugins/datasets/folder.py, check_audio_params) and skip files shorter than their clip
# (``too short``); a file given to ``musicbench attack`` is held to the same floor.
MIN_CLIP_SECONDS = 0.1


class BadSourceError(ConfigError):
    """The file given to ``musicbench attack`` cannot be attacked (missing, not a regular file,
    not audio, too short); nothing was loaded or written. Exit 2."""


@dataclass(frozen=True)
class SingleResult:
    """What ``musicbench attack`` prints: the labels by name, the harness's verdicts, the
    perceptual cost at the model's rate and whether the written file still fools the model."""

    clean_label: str
    clean_prediction: str
    adv_prediction: str
    success: bool
    wrong_fraction: float
    lsd: float
    snr_db: float
    queries: int
    adaptive: str
    written: Path
    written_success: bool
    input_rate: int
    model_rate: int
    draws: int
    # what the harness measured of the defense and found of the attack, each with its
    # severity mark (musicbench.leaderboard.severity), as a run's cells would carry them
    flags: tuple[str, ...] = ()


def attack_file(ws: Workspace, source: Path, out: Path, *, model: str, attack: str,
                defense: str = "none", model_params: dict[str, Any] | None = None,
                attack_params: dict[str, Any] | None = None,
                defense_params: dict[str, Any] | None = None, seed: int = 0) -> SingleResult:
    """Attack ``source`` and write the adversarial file to ``out`` (format from its suffix).

    Everything the user chose is checked before any model is loaded or dataset rendered
    (:class:`~musicbench.errors.ConfigError`, exit 2): the output path and format, the
    components' names, parameters and kinds, and the source file."""
    import soundfile as sf

    check_audio_output(out)
    unloaded = ws.make("model", model, model_params or {})  # parameters checked, no weights
    if unloaded.task != "classification":
        raise ConfigError(f"model '{unloaded.name}' is a {unloaded.task} model: a single file "
                          "has no reference set to be retrieved against; attack it in a run",
                          key="model")
    rate = unloaded.sample_rate
    if ws.make("defense", defense, defense_params or {}).kind != "preprocessor":
        raise ConfigError(f"defense '{defense}' is trained for a base model on a dataset; "
                          "evaluate it in a run", key="defense")
    made_attack = ws.make("attack", attack, attack_params or {})
    x = read_source(source, rate)[None]  # [1, T]
    info = sf.info(str(source))
    input_rate = int(info.samplerate)
    target = ws.model(model, model_params or {})
    made = ws.defense(defense, defense_params or {}, rate)
    x = x.to(ws.device)
    made_attack.prepare(ws.ctx)
    white = made_attack.threat == "white-box"
    # how a run with the default [run] settings would attack and judge this defense
    behaviour = measure(made, rate, ws.device, x)
    how = evaluation(RunSettings(), ComponentSpec("defense", defense, {}, "defenses"),
                     ComponentSpec("attack", attack, {}, "attacks"), made_attack.threat,
                     behaviour)
    if how is None:  # only a non-adaptive entry is ever left unplanned; this one is adaptive
        raise RuntimeError("no evaluation planned for an adaptive attack")
    eot, draws, bpda = how["eot_samples"], how["eval_draws"], how["bpda"]
    adaptive = "+".join(n for n, on in (("eot", eot > 1), ("bpda", bpda)) if on) or "none"

    def generator(stream: int) -> torch.Generator:
        device = torch.empty(0, device=ws.device).device
        return torch.Generator(device=device).manual_seed(seed * 4 + stream)

    with torch.no_grad():
        y = Scorer(target).predict(x)
    judge = Scorer(target, defense=made, generator=generator(1))
    clean = judge.judge(x, y, draws)
    labels = list(target.labels)
    victim = Victim(target, defense=made, allow_gradients=white, eot_samples=eot, bpda=bpda,
                    budget=getattr(made_attack.params, "budget", None) if not white else None,
                    generator=generator(2))
    result = made_attack(victim, x, y, generator=generator(3))
    verdict = judge.judge(result.adv, y, draws)
    delta = (result.adv - x)[0].detach().cpu().double().numpy()
    original = _native_mono(source, info)
    up = _resample(delta, rate, input_rate)[: original.shape[0]]
    up = np.pad(up, (0, original.shape[0] - up.shape[0]))
    written = np.clip(original + up, -1.0, 1.0).astype(np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(out), written, input_rate, subtype="FLOAT" if out.suffix.lower() == ".wav"
             else None)
    back = load_audio(out, rate).to(ws.device)[None]
    back = back[..., : x.shape[-1]] if back.shape[-1] >= x.shape[-1] else torch.nn.functional.pad(
        back, (0, x.shape[-1] - back.shape[-1]))
    reread = judge.judge(back, y, draws)
    fooled = bool(verdict.fooled[0]) and not bool(clean.fooled[0])
    flags = list(behaviour.mismatches())
    if made_attack.threat_model().kind == "unbounded" and not fooled:
        flags.append(f"{WEAK} attack failed: an unbounded attack can fool any clip, so this "
                     "is its own failure, not robustness")
    return SingleResult(
        clean_label=labels[int(y[0])],
        clean_prediction=labels[int(clean.prediction[0])],
        adv_prediction=labels[int(verdict.prediction[0])],
        success=fooled,
        wrong_fraction=float(verdict.wrong_fraction[0]),
        lsd=float(lsd(x.cpu(), result.adv.cpu())[0]),
        snr_db=float(snr_db(x.cpu(), result.adv.cpu())[0]),
        queries=int(result.queries[0]), adaptive=adaptive, written=out,
        written_success=bool(reread.fooled[0]), input_rate=input_rate, model_rate=rate,
        draws=draws, flags=tuple(flags))


def check_audio_output(out: Path) -> Path:
    """Refuse (:class:`~musicbench.errors.ConfigError`) an output the attack could not be
    written to: not a regular file or new (:func:`~musicbench.files.check_writable_file`), or a
    suffix naming no format soundfile writes (``x.xyz``, a folder's name)."""
    import soundfile as sf

    if out.is_dir():  # check_writable_file's remedy (stdout) does not apply to audio
        raise ConfigError(f"cannot write the adversarial file to {out}: it is a folder; name "
                          f"the file to write in it, e.g. {out / 'adversarial.wav'}",
                          key="output")
    check_writable_file(out, "the adversarial file")
    formats = sorted(f for f in sf.available_formats() if sf.default_subtype(f))
    if out.suffix[1:].upper() not in formats:
        raise ConfigError(f"cannot write the adversarial file {out}: its suffix "
                          f"'{out.suffix}' names no audio format soundfile writes; end it "
                          f"with one of {', '.join('.' + f.lower() for f in formats)}",
                          key="output")
    return out


def read_source(source: Path, rate: int) -> torch.Tensor:
    """``source`` as ``Tensor[T]`` at ``rate`` Hz, held to a run's rules for its input files:
    a regular file (checked before opening: a FIFO or a device could block the read forever),
    audio, at least :data:`MIN_CLIP_SECONDS` long. Raises :class:`BadSourceError` (exit 2)."""
    try:
        stat_input(source)
        return load_audio(source, rate, min_seconds=MIN_CLIP_SECONDS)
    except BadAudioError as exc:
        raise BadSourceError(f"cannot attack {exc}; name an audio file at least "
                             f"{MIN_CLIP_SECONDS:g} s long") from None


def _native_mono(source: Path, info: Any) -> np.ndarray:
    """The input at its own rate, mixed to mono like the loaders do (float64)."""
    return load_audio(source, int(info.samplerate)).double().numpy()


def describe(r: SingleResult) -> str:
    """The lines ``musicbench attack`` prints."""
    snr = "inf" if math.isinf(r.snr_db) else f"{r.snr_db:.1f}"
    return "\n".join([
        f"clean: model says '{r.clean_prediction}' (attacked label: '{r.clean_label}', the "
        "undefended model's top-1)",
        f"adversarial: model says '{r.adv_prediction}' — "
        + ("fooled" if r.success else "not fooled")
        + (f" (wrong on {100 * r.wrong_fraction:.0f}% of {r.draws} draws of the randomized "
           "defense)" if r.draws > 1 else ""),
        f"LSD {r.lsd:.3f}, SNR {snr} dB (at the model's {r.model_rate} Hz), {r.queries} "
        f"queries; defense attacked with: {r.adaptive}",
        f"wrote {r.written} at {r.input_rate} Hz: read back, it "
        + ("still fools the model" if r.written_success else "no longer fools the model"),
    ] + [f"flag: {marked(f)}" for f in r.flags])
