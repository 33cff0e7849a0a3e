"""``gacela``: GACELA-style context-encoder WGAN-GP inpainter with a latent code.

Marafioti, Majdak, Holighaus, Perraudin, "GACELA: A Generative Adversarial Context Encoder for
Long Audio Inpainting of Music", IEEE JSTSP 2020 (arXiv 2005.05032), scaled to 16 kHz clips and
minutes of CPU training (networks in :mod:`.gacela_nets`, views in :mod:`.spectral`):

- STFT ``n_fft`` 512 / ``hop`` 128 (Hann; GACELA: truncated Gaussian, 1024/256 at 22.05 kHz),
  256 bins kept, log-magnitude with a ``range_db`` 50 dB range scaled to [-1, 1] relative to
  the loudest context value of each example; a 64-band mel view of the context.
- ``gap_frames`` G frames are generated from ``context_frames`` C frames either side. Frame
  ``j`` of the grid is "unknown" when its window touches a masked sample, so G frames cover a
  gap of up to ``(G - n_fft / hop + 1) * hop`` samples: 36 frames, 4224 samples (264 ms).
- Generator: two context encoders, latent z ~ U(-1, 1)^latent_dim, linear -> transposed
  convolutions -> two residual blocks -> tanh. Critics: one per entry of
  ``stft_critic_context`` / ``mel_critic_context`` (context frames each side of the gap in its
  window; GACELA: five windows of 64 * 2^i frames), averaged in time to ``critic_frames``.
- WGAN-GP (``gp_weight`` 10), Adam betas (0.5, 0.9), as GACELA; ``critic_steps`` critic
  updates per generator update.

**Deviations** that make minutes of CPU training useful (each one a parameter; ``l1_weight =
diversity_weight = prior_frames = 0`` and ``learning_rate = 1e-4`` give GACELA's recipe):
GACELA's generator loss is purely adversarial; ours adds ``l1_weight`` times the L1 distance
of the scaled log-magnitude to the true gap, and ``diversity_weight`` times a mode-seeking
term (MSGAN) that keeps the generator from ignoring z (which the L1 term teaches it, and which
MAIA searches over); the decoder's output is added, before the tanh, to a context-edge prior
(mean of the ``prior_frames`` context frames next to the gap on each side, interpolated across
it); ``learning_rate`` is 4e-4 instead of 1e-4.

Inpainting (:meth:`GacelaInpainter.inpaint`): every gap is placed on its own frame grid, the
window of the last known frame before the gap ending exactly at the gap's first sample.
``U`` unknown frames with ``U <= G`` are generated as one G-frame chunk centred on them (the
extra frames are partly known; only masked samples are ever replaced). Longer gaps are covered
by consecutive G-frame chunks left to right (the last one ending on the last unknown frame);
each chunk's left context is the spectrogram before it (generated chunks included), its right
context the true context after the whole gap. Several gaps in a row are filled left to right
(a filled gap is valid audio for the next); masked samples not yet filled, and everything
beyond the clip's edges, count as silence in the context.

Phase (GACELA uses PGHI, which is not differentiable): the unknown frames' phase starts from a
phase-vocoder continuation of the last known frame (each bin advancing by its instantaneous
frequency between the last two known frames), then ``gl_iterations`` Griffin-Lim iterations
with the known samples held fixed. The phase is computed without gradient; the waveform is the
overlap-add of the generated magnitudes with that phase, so the fill is differentiable in z and
in the audio (through the context encoders) by way of the magnitudes. A raised-cosine offset
correction over ``edge_ramp`` samples inside each edge of the gap makes the fill continuous
with the sample next to it (a crossfade cannot be used: the samples outside the gap must stay
bit-identical).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from musicbench.api import Context, Dataset, Inpainter, TrainedOnFirstUse, check_number, check_seed
from musicbench_plugins._limits import MAX_LEARNING_RATE, MAX_SIZE, MAX_STEPS, MAX_WEIGHT
from musicbench_plugins.inpainters.gacela_nets import Critic, Generator
from musicbench_plugins.inpainters.gaps import check_inputs, composite, gap_runs
from musicbench_plugins.inpainters.spectral import (
    SpectralView,
    continue_phase,
    griffin_lim_known,
)

INFERENCE_ONLY = frozenset({"gl_iterations", "edge_ramp"})  # not part of the checkpoint key


@dataclass(frozen=True)
class GacelaParams:
    """Views, architecture, training recipe and reconstruction. Every field but the
    reconstruction ones (``INFERENCE_ONLY``) is part of the checkpoint key."""

    train_dataset: str = "m21-styles"
    train_dataset_params: dict[str, Any] = field(default_factory=dict)
    n_fft: int = 512
    hop: int = 128
    n_mels: int = 64
    range_db: float = 50.0
    gap_frames: int = 36  # G: generated frames (multiple of 4)
    context_frames: int = 64  # C: context frames each side (0.51 s)
    latent_dim: int = 64
    width: int = 8  # channels of the first conv; the rest scale with it
    stft_critic_context: tuple[int, ...] = (8, 32)
    mel_critic_context: tuple[int, ...] = (64,)
    critic_frames: int = 32
    steps: int = 400  # generator updates
    batch_size: int = 16  # 8 segments, each with two latents
    critic_steps: int = 2
    learning_rate: float = 4e-4  # GACELA: 1e-4 (too slow for minutes of training)
    gp_weight: float = 10.0
    l1_weight: float = 10.0  # 0 = GACELA's purely adversarial generator loss
    prior_frames: int = 8  # context frames averaged for the decoder's prior (0: none)
    diversity_weight: float = 1.0  # weight of the mode-seeking term (keeps z in use)
    latent_spread: float = 0.1  # the spread it asks for (scaled log-magnitude per unit of z)
    edge_prob: float = 0.1  # per side: silence the outer part of the context (clip edges)
    gl_iterations: int = 32
    edge_ramp: int = 128  # samples of offset correction inside each gap edge
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_fft", "hop", "n_mels", "gap_frames", "context_frames", "latent_dim",
                     "width", "critic_frames", "steps", "batch_size", "critic_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_fft % self.hop or self.n_fft // self.hop < 2:
            raise ValueError(f"n_fft ({self.n_fft}) must be a multiple (>= 2) of hop ({self.hop})")
        if (self.n_fft // 2) % 2**Generator.N_UP:
            raise ValueError(f"n_fft // 2 must be divisible by {2 ** Generator.N_UP}")
        if self.gap_frames % 4:
            raise ValueError(f"gap_frames must be a multiple of 4, got {self.gap_frames}")
        if self.context_frames < self.n_fft // self.hop:
            raise ValueError(f"context_frames must be >= n_fft / hop = {self.n_fft // self.hop}")
        if not 0 <= self.prior_frames <= self.context_frames:
            raise ValueError(f"prior_frames must lie in [0, context_frames], got "
                             f"{self.prior_frames}")
        contexts = self.stft_critic_context + self.mel_critic_context
        if not contexts:
            raise ValueError("at least one critic: stft_critic_context or mel_critic_context")
        if any(not 0 <= c <= self.context_frames for c in contexts):
            raise ValueError(f"critic contexts must lie in [0, context_frames], got {contexts}")
        if not self.range_db > 0:
            raise ValueError(f"range_db must be > 0, got {self.range_db}")
        if self.batch_size % 2:
            raise ValueError(f"batch_size must be even (rows come in pairs), got "
                             f"{self.batch_size}")
        for name in ("learning_rate", "gp_weight", "l1_weight", "diversity_weight",
                     "latent_spread", "edge_prob", "gl_iterations", "edge_ramp"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.edge_prob > 1:
            raise ValueError(f"edge_prob must be <= 1, got {self.edge_prob}")
        for name in ("n_fft", "hop", "n_mels", "gap_frames", "context_frames", "latent_dim",
                     "width", "critic_frames", "batch_size", "prior_frames", "edge_ramp"):
            check_number(name, getattr(self, name), at_least=0, at_most=MAX_SIZE, integer=True)
        for name in ("steps", "critic_steps", "gl_iterations"):
            check_number(name, getattr(self, name), at_least=0, at_most=MAX_STEPS, integer=True)
        check_number("range_db", self.range_db, above=0, at_most=200)
        check_number("learning_rate", self.learning_rate, above=0, at_most=MAX_LEARNING_RATE)
        for name in ("gp_weight", "l1_weight", "diversity_weight", "latent_spread"):
            check_number(name, getattr(self, name), at_least=0, at_most=MAX_WEIGHT)
        check_seed("seed", self.seed)


class GacelaInpainter(TrainedOnFirstUse, Inpainter):
    """GACELA-style inpainter, trained on first use (or by ``musicbench train gacela``).

    Shape: ``audio[B, T]``, ``mask bool[B, T]``, ``z[B, latent_dim]`` in [-1, 1] ->
    ``audio[B, T]``.
    """

    version = "1"
    Params = GacelaParams
    checkpoint_prefix = "gacela"
    checkpoint_folder = "inpainters"

    def __init__(self, params: GacelaParams | None = None):
        super().__init__(params)
        p = self.params
        self.view = SpectralView(p.n_fft, p.hop, p.n_mels, p.range_db, self.sample_rate)

    @property
    def latent_dim(self) -> int:  # type: ignore[override]
        return self.params.latent_dim

    latent_range = (-1.0, 1.0)  # the uniform prior of sample_latent

    @property
    def gap_seconds(self) -> float:  # type: ignore[override]
        """The longest gap one generated block covers (module docstring): 264 ms by default."""
        p = self.params
        return (p.gap_frames - p.n_fft // p.hop + 1) * p.hop / self.sample_rate

    # -- building, loading, training -----------------------------------------------------------

    def _make_generator(self) -> Generator:
        p = self.params
        return Generator(p.n_fft // 2, p.gap_frames, p.n_mels, p.context_frames,
                         p.latent_dim, p.width)

    def _make_critics(self) -> nn.ModuleList:
        p = self.params
        critics = [Critic(p.n_fft // 2, p.critic_frames, p.width) for _ in p.stft_critic_context]
        critics += [Critic(p.n_mels, p.critic_frames, p.width) for _ in p.mel_critic_context]
        return nn.ModuleList(critics)

    def make_net(self, ds: Dataset) -> Generator:
        return self._make_generator()

    def key_params(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self.params).items() if k not in INFERENCE_ONLY}

    def freeze(self, net: Generator) -> None:
        net.eval().requires_grad_(False)  # inpaint needs gradients in z and audio only
        self.view = self.view.to(next(net.parameters()).device)
        self.net = net

    def fit(self, ctx: Context) -> dict[str, Any]:
        """Train on the train split of ``train_dataset``, save the generator, freeze it, and
        return a summary (losses, valid L1 of the scaled log-magnitude, seconds)."""
        p = self.params
        ds = self.training_dataset(ctx)
        device = ctx.device
        bank = torch.stack([e.audio for e in ds.examples("train")])  # [N, T] on the CPU
        seg_len = self.view.samples(2 * p.context_frames + p.gap_frames)
        if bank.shape[1] < seg_len:
            raise ValueError(f"gacela needs clips of >= {seg_len} samples to train; "
                             f"'{ds.name}' has {bank.shape[1]}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(p.seed)
            net, critics = self._make_generator().to(device), self._make_critics().to(device)
        self.view.to(device)  # moves the window and filterbank buffers in place
        opt_g = torch.optim.Adam(net.parameters(), lr=p.learning_rate, betas=(0.5, 0.9))
        opt_d = torch.optim.Adam(critics.parameters(), lr=p.learning_rate, betas=(0.5, 0.9))
        gen = torch.Generator().manual_seed(p.seed)
        t0 = time.perf_counter()
        history: list[tuple[float, float, float, float]] = []
        with ctx.progress("training gacela on " + ds.name, total=p.steps) as task:
            for step in range(p.steps):
                net.train()
                for _ in range(p.critic_steps):
                    batch = self._batch(bank, seg_len, gen, device)
                    z = _uniform(p.batch_size, p.latent_dim, gen, device)
                    with torch.no_grad():
                        fake = net(batch["left"], batch["right"], z, batch["prior"])
                    d_loss = self._critic_loss(critics, batch, fake, gen)
                    opt_d.zero_grad(set_to_none=True)
                    d_loss.backward()
                    opt_d.step()
                critics.requires_grad_(False)
                fake = net(batch["left"], batch["right"], z, batch["prior"])
                windows = self._windows(batch, fake)
                adv = -torch.stack([c(w).mean() for c, w in zip(critics, windows["fake"],
                                                                  strict=True)]).mean()
                l1 = (fake - batch["gap"]).abs().mean()
                spread = _latent_spread(fake, z)
                g_loss = adv + p.l1_weight * l1
                if p.diversity_weight > 0:  # MSGAN's 1 / spread, silent once spread is reached
                    g_loss = g_loss + p.diversity_weight * p.latent_spread / (
                        spread.clamp(max=p.latent_spread) + 1e-5)
                opt_g.zero_grad(set_to_none=True)
                g_loss.backward()
                opt_g.step()
                critics.requires_grad_(True)
                history.append((float(d_loss.detach()), float(adv.detach()), float(l1.detach()),
                                float(spread.detach())))
                task.advance()
                if (step + 1) % 50 == 0 or step + 1 == p.steps:
                    recent = history[-50:]
                    task.update(description=f"training gacela: step {step + 1}/{p.steps}, "
                                f"L1 {sum(h[2] for h in recent) / len(recent):.3f}, latent "
                                f"spread {sum(h[3] for h in recent) / len(recent):.3f}")
        net.eval()
        recent = history[-50:]
        summary = {
            "dataset": ds.name, "dataset_fingerprint": ds.fingerprint(),
            "critic_loss": round(sum(h[0] for h in recent) / len(recent), 4),
            "generator_adversarial": round(sum(h[1] for h in recent) / len(recent), 4),
            "train_l1": round(sum(h[2] for h in recent) / len(recent), 4),
            "latent_spread": round(sum(h[3] for h in recent) / len(recent), 4),
            "valid_l1": round(self._valid_l1(net, ds, seg_len, device), 4),
            "train_seconds": round(time.perf_counter() - t0, 1),
            "params": asdict(p),
        }
        return self.save_trained(ctx, ds, net, summary)

    def _batch(self, bank: torch.Tensor, seg_len: int, gen: torch.Generator,
               device: torch.device) -> dict[str, torch.Tensor]:
        """Random segments of the training clips (context | gap | context), with the outer
        part of a context silenced with probability ``edge_prob`` per side, as views. Rows
        come in identical pairs (0, 1), (2, 3), ... for the latent-spread term."""
        p = self.params
        b = p.batch_size // 2  # pairs: every segment twice, for two latents
        idx = torch.randint(0, bank.shape[0], (b,), generator=gen)
        off = torch.randint(0, bank.shape[1] - seg_len + 1, (b,), generator=gen)
        seg = bank[idx[:, None], off[:, None] + torch.arange(seg_len)]
        s, e = self._gap_span()
        pos = torch.arange(seg_len)[None]
        cut_left = (torch.rand(b, generator=gen) * s).long()
        cut_right = e + (torch.rand(b, generator=gen) * (seg_len - e)).long()
        silence_left = ((torch.rand(b, generator=gen) < p.edge_prob)[:, None]
                        & (pos < cut_left[:, None]))
        silence_right = ((torch.rand(b, generator=gen) < p.edge_prob)[:, None]
                         & (pos >= cut_right[:, None]))
        seg = seg.masked_fill(silence_left | silence_right, 0.0).repeat_interleave(2, dim=0)
        return self._views(seg.to(device))

    def _gap_span(self) -> tuple[int, int]:
        """Samples ``[s, e)`` of a training segment that only the gap frames touch."""
        p = self.params
        return ((p.context_frames - 1) * p.hop + p.n_fft,
                (p.context_frames + p.gap_frames) * p.hop)

    def _views(self, seg: torch.Tensor) -> dict[str, torch.Tensor]:
        """``seg[B, N]`` of 2C + G frames -> scaled STFT and mel views ``[B, rows, 2C + G]``,
        encoder inputs ``left``/``right`` ``[B, 1, n_mels, C]`` and the true ``gap``."""
        c, g = self.params.context_frames, self.params.gap_frames
        view = self.view
        mag = view.stft(seg).abs()[:, : view.bins]
        db = view.db(mag)
        ref = view.reference(torch.cat([db[..., :c], db[..., c + g :]], dim=-1))
        mel_db = view.db(view.mel(mag))
        mel_ref = view.reference(torch.cat([mel_db[..., :c], mel_db[..., c + g :]], dim=-1))
        stft, mel = view.scale(db, ref), view.scale(mel_db, mel_ref)
        return {"stft": stft, "mel": mel, "ref": ref, "mel_ref": mel_ref,
                "left": mel[:, None, :, :c], "right": mel[:, None, :, c + g :].flip(-1),
                "prior": self._prior(stft[..., :c], stft[..., c + g :]),
                "gap": stft[..., c : c + g]}

    def _prior(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """``prior[B, bins, G]``: the mean of the ``prior_frames`` context frames next to the
        gap on each side (scaled STFT ``left``/``right`` ``[B, bins, C]``), interpolated
        linearly across the gap; zeros when ``prior_frames`` is 0."""
        p = self.params
        n = p.prior_frames
        if n == 0:
            return torch.zeros(*left.shape[:2], p.gap_frames, device=left.device)
        w = (torch.arange(p.gap_frames, device=left.device) + 0.5) / p.gap_frames
        start, end = left[..., -n:].mean(-1, keepdim=True), right[..., :n].mean(-1, keepdim=True)
        return start * (1 - w) + end * w

    def _windows(self, batch: dict[str, torch.Tensor],
                 fake: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Each critic's window ``[B, 1, rows, G + 2c]``, real and with the generated gap."""
        p = self.params
        c, g = p.context_frames, p.gap_frames
        view = self.view
        fake_mel = view.scale(view.db(view.mel(view.unscale_magnitude(fake, batch["ref"]))),
                              batch["mel_ref"])
        full = {"stft": (batch["stft"], fake), "mel": (batch["mel"], fake_mel)}
        out: dict[str, list[torch.Tensor]] = {"real": [], "fake": []}
        specs = [("stft", k) for k in p.stft_critic_context]
        specs += [("mel", k) for k in p.mel_critic_context]
        for kind, k in specs:
            real, gen_gap = full[kind]
            window = real[..., c - k : c + g + k]
            out["real"].append(window[:, None])
            out["fake"].append(torch.cat([window[..., :k], gen_gap, window[..., k + g :]],
                                         dim=-1)[:, None])
        return out

    def _critic_loss(self, critics: nn.ModuleList, batch: dict[str, torch.Tensor],
                     fake: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """WGAN-GP critic loss, averaged over the critics."""
        windows = self._windows(batch, fake)
        losses = []
        for critic, real, gen_w in zip(critics, windows["real"], windows["fake"], strict=True):
            alpha = torch.rand(real.shape[0], 1, 1, 1, generator=gen).to(real.device)
            mix = (alpha * real + (1 - alpha) * gen_w).requires_grad_(True)
            (grad,) = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)
            penalty = (grad.flatten(1).norm(dim=1) - 1).square().mean()
            losses.append(critic(gen_w).mean() - critic(real).mean()
                          + self.params.gp_weight * penalty)
        return torch.stack(losses).mean()

    @torch.no_grad()
    def _valid_l1(self, net: Generator, ds: Dataset, seg_len: int,
                  device: torch.device) -> float:
        """Mean L1 of the scaled log-magnitude of the gap on the valid split's clips (one
        segment from the middle of each of up to 64 clips, z = 0)."""
        examples = list(ds.examples("valid"))[:64]
        if not examples:
            return math.nan
        audio = torch.stack([e.audio for e in examples])
        if audio.shape[1] < seg_len:
            return math.nan
        start = (audio.shape[1] - seg_len) // 2
        batch = self._views(audio[:, start : start + seg_len].to(device))
        z = torch.zeros(audio.shape[0], self.params.latent_dim, device=device)
        return float((net(batch["left"], batch["right"], z, batch["prior"]) - batch["gap"])
                     .abs().mean())

    # -- inpainting -------------------------------------------------------------------------------

    def sample_latent(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return _uniform(batch, self.params.latent_dim, generator, generator.device)

    def inpaint(self, audio: torch.Tensor, mask: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        check_inputs(audio, mask, z, self.latent_dim)
        if self.net is None:
            raise RuntimeError("gacela is not loaded; call load(ctx) first")
        gaps = [gap_runs(mask[b]) for b in range(audio.shape[0])]
        work, invalid = audio, mask.clone()
        for r in range(max((len(g) for g in gaps), default=0)):
            # Round r fills the r-th gap of every row, batched by unknown-frame count.
            groups: dict[int, list[tuple[int, int, int]]] = {}
            for b, row_gaps in enumerate(gaps):
                if len(row_gaps) > r:
                    s, e = row_gaps[r]
                    groups.setdefault(self._unknown_frames(e - s), []).append((b, s, e))
            filled = [self._fill(work, invalid, jobs, n_unknown, z)
                      for n_unknown, jobs in groups.items()]
            b_idx, c_idx, v = (torch.cat(parts) for parts in zip(*filled, strict=True))
            placed = torch.zeros_like(work).index_put((b_idx, c_idx), v)
            now = torch.zeros_like(mask).index_put((b_idx, c_idx),
                                                   torch.ones_like(b_idx, dtype=torch.bool))
            work = torch.where(now, placed, work)
            invalid = invalid & ~now
        return composite(audio, work, mask)

    def _unknown_frames(self, length: int) -> int:
        """Frames whose window touches a gap of ``length`` samples starting right after a
        frame boundary of the gap's grid."""
        p = self.params
        return -(-length // p.hop) + p.n_fft // p.hop - 1

    def _fill(self, work: torch.Tensor, invalid: torch.Tensor, jobs: list[tuple[int, int, int]],
              n_unknown: int, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fill the gaps ``jobs = [(row, start, end)]`` (same unknown-frame count) of ``work``;
        returns ``(rows, columns, values)`` of the filled samples."""
        p = self.params
        view, net = self.view, self.net
        assert net is not None
        hop, n_fft, c, g = p.hop, p.n_fft, p.context_frames, p.gap_frames
        k = n_fft // hop
        dev = work.device
        rows = torch.tensor([j[0] for j in jobs], device=dev)
        starts = torch.tensor([j[1] for j in jobs], device=dev)
        lengths = torch.tensor([j[2] - j[1] for j in jobs], device=dev)
        # Chunks in frames of the gap grid (unknown frames are 0 .. n_unknown - 1).
        if n_unknown <= g:
            chunks = [-((g - n_unknown) // 2)]
        else:
            chunks = [i * g for i in range(-(-n_unknown // g) - 1)] + [n_unknown - g]
        lo = chunks[0] - c
        hi = max(n_unknown, chunks[-1] + g) + c
        # The segment under frames [lo, hi): invalid samples and the clip's outside are silent.
        first = starts - n_fft + hop * (lo + 1)  # first sample of frame lo's window
        pos = first[:, None] + torch.arange(view.samples(hi - lo), device=dev)
        inside = (pos >= 0) & (pos < work.shape[1])
        pos_c = pos.clamp(0, work.shape[1] - 1)
        usable = inside & ~invalid[rows].gather(1, pos_c)
        seg = work[rows].gather(1, pos_c) * usable
        spec = view.stft(seg)
        mag = spec.abs()[:, : view.bins]
        db, mel_db = view.db(mag), view.db(view.mel(mag))
        ref = view.reference(torch.cat([db[..., :c], db[..., -c:]], dim=-1))
        mel_ref = view.reference(torch.cat([mel_db[..., :c], mel_db[..., -c:]], dim=-1))
        stft, mel = view.scale(db, ref), view.scale(mel_db, mel_ref)
        zs = z[rows]
        for start in chunks:
            a = start - lo
            right = max(n_unknown, start + g) - lo
            prior = self._prior(stft[..., a - c : a], stft[..., right : right + c])
            out = net(mel[:, None, :, a - c : a], mel[:, None, :, right : right + c].flip(-1), zs,
                      prior)
            out_mel = view.scale(view.db(view.mel(view.unscale_magnitude(out, ref))), mel_ref)
            stft = torch.cat([stft[..., :a], out, stft[..., a + g :]], dim=-1)
            mel = torch.cat([mel[..., :a], out_mel, mel[..., a + g :]], dim=-1)
        u0 = -lo  # column of unknown frame 0
        gen_mag = view.unscale_magnitude(stft[..., u0 : u0 + n_unknown], ref)
        gen_mag = torch.cat([gen_mag, torch.zeros_like(gen_mag[:, :1])], dim=1)  # Nyquist bin
        left, right = spec[..., u0 - k : u0], spec[..., u0 + n_unknown : u0 + n_unknown + k]
        # The region under frames [-k, n_unknown + k); the gap starts n_fft - hop + k * hop in.
        r0 = (u0 - k) * hop
        known = seg[:, r0 : r0 + view.samples(n_unknown + 2 * k)]
        g0 = n_fft - hop + k * hop
        at = torch.arange(known.shape[1], device=dev)[None]
        free = (at >= g0) & (at < g0 + lengths[:, None])
        phase = continue_phase(spec[..., u0 - 2 : u0], n_unknown, hop, n_fft)
        phase = griffin_lim_known(view, known.detach(), free, left.detach(), right.detach(),
                                  gen_mag.detach(), phase, p.gl_iterations)
        y = view.overlap_add(torch.cat([left, torch.polar(gen_mag, phase), right], dim=-1))
        y = y + self._edge_correction(y, known, usable[:, r0 : r0 + known.shape[1]], g0, lengths)
        cols = (first + r0)[:, None] + at
        return rows[:, None].expand_as(free)[free], cols[free], y[free]

    def _edge_correction(self, y: torch.Tensor, known: torch.Tensor, usable: torch.Tensor,
                         g0: int, lengths: torch.Tensor) -> torch.Tensor:
        """``[n, N]``: raised-cosine ramps inside each gap edge that carry the offset between
        the known sample next to the edge and the resynthesis there, so the fill joins it
        without a step. No ramp where that sample is masked or outside the clip."""
        n, width = y.shape
        ramp_len = min(self.params.edge_ramp, int(lengths.min()) // 2)
        if ramp_len == 0:
            return torch.zeros_like(y)
        t = (torch.arange(ramp_len, device=y.device, dtype=y.dtype) + 0.5) / ramp_len
        down = 0.5 * (1 + torch.cos(math.pi * t))  # 1 -> 0 going into the gap
        rows = torch.arange(n, device=y.device)[:, None]
        end = g0 + lengths  # first known sample after the gap
        left = (known[:, g0 - 1] - y[:, g0 - 1]) * usable[:, g0 - 1]
        right_at = end.clamp(max=width - 1)
        r0 = rows[:, 0]
        right = (known[r0, right_at] - y[r0, right_at]) * usable[r0, right_at]
        cols_left = g0 + torch.arange(ramp_len, device=y.device)[None].expand(n, -1)
        cols_right = end[:, None] - 1 - torch.arange(ramp_len, device=y.device)[None]
        corr = torch.zeros_like(y).index_put((rows.expand(-1, ramp_len), cols_left),
                                             left[:, None] * down)
        return corr.index_put((rows.expand(-1, ramp_len), cols_right), right[:, None] * down,
                              accumulate=True)


def _latent_spread(fake: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mode-seeking ratio (Mao, Lee, Tseng, Ma, Yang, "Mode Seeking Generative Adversarial
    Networks for Diverse Image Synthesis", CVPR 2019): mean |G(z1) - G(z2)| / mean |z1 - z2|
    over the row pairs (0, 1), (2, 3), ... that share a context."""
    out = (fake[0::2] - fake[1::2]).abs().flatten(1).mean(1)
    return (out / (z[0::2] - z[1::2]).abs().mean(1)).mean()


def _uniform(batch: int, dim: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """``[batch, dim]`` uniform in [-1, 1) drawn from ``gen`` (on its device), on ``device``."""
    return (2 * torch.rand(batch, dim, generator=gen, device=gen.device) - 1).to(device)
