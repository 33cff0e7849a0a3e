"""Inpainting quality of the built-in inpainters on held-out clips, no attack: one gap in the
middle of each clip, filled by ``gacela``, ``baseline`` and a trivial reference (zeros), then
compared with the original clip.

Figures per method: LSD (``musicbench.metrics.lsd``, whole clip: the leaderboard's definition),
LSD of the gap's neighbourhood only (the gap +- 1024 samples, same LSD definition: the
whole-clip figure is diluted by the unchanged frames), SNR of the gap in dB, FAD between the
filled and the original clips (``musicbench.fad`` on the run's default encoder, musicnn frame
features, as the runner computes it), and inpainting seconds per clip. Run:

    python benchmarks/inpainter_quality.py [--clips 100] [--gap-seconds 0.256] [--seed 0] [--oracle]

The gacela checkpoint with default parameters is trained on first use (``musicbench train
gacela`` does it ahead). Clips are the first ``--clips`` of m21-styles' test split; gacela's
and baseline's latents are drawn from their priors with ``--seed`` (baseline's z = 0, its best
match, is reported too).
"""

from __future__ import annotations

import argparse
import time

import torch

from musicbench.cache import cache_dir
from musicbench.fad import fad
from musicbench.metrics import lsd, snr_db
from musicbench.plugins import get_plugins
from musicbench.workspace import Workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--gap-seconds", type=float, default=0.256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--encoder", default="musicnn")
    parser.add_argument("--oracle", action="store_true",
                        help="also: gacela's phase reconstruction given the true magnitudes")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the machine is shared; one thread avoids contention stalls
    device = torch.device(args.device)
    ws = Workspace(get_plugins(), cache_dir=cache_dir(), device=device)
    ds = ws.dataset("m21-styles", {})
    clean = torch.stack([e.audio for e in list(ds.examples("test"))[: args.clips]]).to(device)
    n, t = clean.shape
    gap = round(args.gap_seconds * ds.sample_rate)
    s = (t - gap) // 2
    mask = torch.zeros_like(clean, dtype=torch.bool)
    mask[:, s : s + gap] = True
    near = slice(max(0, s - 1024), min(t, s + gap + 1024))

    encoder = ws.encoder(args.encoder)

    def frames(audio: torch.Tensor):
        with torch.no_grad():
            return torch.cat([encoder.embed(audio[i : i + 16]).flatten(0, 1).cpu().double()
                              for i in range(0, audio.shape[0], 16)]).numpy()

    clean_frames = frames(clean)
    methods = {"zeros (reference)": None, "baseline (z = 0, best match)": ("baseline", "zero"),
               "baseline (z from prior)": ("baseline", "prior"),
               "gacela (z from prior)": ("gacela", "prior")}
    print(f"{n} clips of m21-styles/test, one {gap}-sample gap ({gap / ds.sample_rate:.3f} s) "
          f"at sample {s}; FAD encoder {args.encoder}")
    print("| method | LSD (clip) | LSD (gap +- 1024) | SNR gap (dB) | FAD | s/clip |")
    print("|---|---|---|---|---|---|")
    for label, spec in methods.items():
        t0 = time.perf_counter()
        if spec is None:
            filled = clean.masked_fill(mask, 0.0)
        else:
            name, latent = spec
            inpainter = ws.inpainter(name)
            gen = torch.Generator(device=device).manual_seed(args.seed)
            z = inpainter.sample_latent(n, gen)
            if latent == "zero":
                z = torch.zeros_like(z)
            with torch.no_grad():
                filled = torch.cat([inpainter.inpaint(clean[i : i + 16], mask[i : i + 16],
                                                      z[i : i + 16])
                                    for i in range(0, n, 16)])
        seconds = (time.perf_counter() - t0) / n
        assert torch.equal(filled[~mask], clean[~mask])
        lsd_clip = float(lsd(clean, filled).mean())
        lsd_gap = float(lsd(clean[:, near], filled[:, near]).mean())
        snr = float(snr_db(clean[mask].view(n, gap), filled[mask].view(n, gap)).mean())
        result = fad(clean_frames, frames(filled))
        fad_text = f"{result.value:.3f}" + (f" ({result.reason})" if result.reason else "")
        print(f"| {label} | {lsd_clip:.3f} | {lsd_gap:.3f} | {snr:.2f} | {fad_text} | "
              f"{seconds:.3f} |", flush=True)
    if args.oracle:
        oracle_phase(clean, s, gap, near)


def oracle_phase(clean: torch.Tensor, start: int, gap: int, near: slice) -> None:
    """LSD (gap +- 1024) of gacela's resynthesis when the generator is replaced by the true
    magnitudes of the unknown frames: what the phase reconstruction alone costs, by number
    of Griffin-Lim iterations (the same steps as ``GacelaInpainter._fill``)."""
    import math

    from musicbench_plugins.inpainters.gacela import GacelaParams
    from musicbench_plugins.inpainters.spectral import (
        SpectralView,
        continue_phase,
        griffin_lim_known,
    )

    p = GacelaParams()
    view = SpectralView(p.n_fft, p.hop, p.n_mels, p.range_db)
    hop, n_fft, k = p.hop, p.n_fft, p.n_fft // p.hop
    n_unknown = -(-gap // hop) + k - 1
    lo = -k - 2
    first = start - n_fft + hop * (lo + 1)
    seg = clean[:, first : first + view.samples(n_unknown + k - lo)].cpu()
    spec = view.stft(seg)
    u0 = -lo
    mag = spec.abs()[..., u0 : u0 + n_unknown]
    left, right = spec[..., u0 - k : u0], spec[..., u0 + n_unknown : u0 + n_unknown + k]
    r0 = (u0 - k) * hop
    g0 = n_fft - hop + k * hop
    known = seg[:, r0 : r0 + view.samples(n_unknown + 2 * k)]
    at = torch.arange(known.shape[1])[None]
    free = (at >= g0) & (at < g0 + gap)
    known = known.masked_fill(free, 0.0)
    print("\nphase reconstruction with the true magnitudes (LSD of the gap +- 1024):")
    for init in ("continuation", "random"):
        for iterations in (0, 16, 32, 64):
            if init == "continuation":
                phase = continue_phase(spec[..., u0 - 2 : u0], n_unknown, hop, n_fft)
            else:
                phase = 2 * math.pi * torch.rand(mag.shape, generator=torch.Generator()
                                                 .manual_seed(0))
            phase = griffin_lim_known(view, known, free, left, right, mag, phase, iterations)
            y = view.overlap_add(torch.cat([left, torch.polar(mag, phase), right], dim=-1))
            filled = clean.cpu().clone()
            filled[:, start : start + gap] = y[:, g0 : g0 + gap].clamp(-1, 1)
            value = float(lsd(clean.cpu()[:, near], filled[:, near]).mean())
            print(f"  {init} initial phase, {iterations} iterations: {value:.3f}")


if __name__ == "__main__":
    main()
