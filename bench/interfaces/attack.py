"""Attack interface. ``__call__`` is final: it checks the contract so an attack cannot skip it."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal, final

from musicbench.errors import AttackContractError
from musicbench.interfaces.component import Component

if TYPE_CHECKING:
    import torch

    from musicbench.interfaces.context import Context
    from musicbench.interfaces.victim_protocol import VictimLike as Victim

Threat = Literal["white-box", "black-box"]

BOUND_RTOL = 1e-5
"""Relative slack on a norm bound (float32 rounding of a projected perturbation)."""


@dataclass(frozen=True)
class Bound:
    """A perturbation budget: ``norm(adv - clean) <= eps`` per sample, or, with ``snr_db``, a
    per-clip radius that guarantees at least that SNR (:func:`snr_radius`; ``eps`` is then
    ignored)."""

    norm: Literal["linf", "l2"]
    eps: float
    snr_db: float | None = None

    def limits(self, clean: torch.Tensor) -> torch.Tensor:
        """``[B]`` radii for ``clean[B, T]`` (float32, on its device)."""
        import torch

        if self.snr_db is None:
            return torch.full((clean.shape[0],), self.eps, device=clean.device)
        return snr_radius(clean, self.snr_db, self.norm).squeeze(1)


def snr_radius(audio: torch.Tensor, snr_db: float, norm: Literal["linf", "l2"]) -> torch.Tensor:
    """Per-clip radius ``[B, 1]`` (audio's dtype and device) for ``audio[B, T]`` such that every
    perturbation inside the ``norm`` ball has an SNR of at least ``snr_db`` dB.

    L2: ``‖x_i‖₂ · 10^(-snr/20)``, exactly the SNR bound. L-inf: ``rms(x_i) · 10^(-snr/20)``,
    the amplitude at which a full-scale square perturbation has that SNR; any other
    perturbation in the ball is quieter since ``‖δ‖₂ <= sqrt(T)·‖δ‖∞``. A silent clip gets 0.
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    energy = audio.detach().flatten(1).norm(dim=1, keepdim=True)  # ‖x_i‖₂, [B, 1]
    if norm == "linf":
        energy = energy / audio.shape[-1] ** 0.5  # rms
    return energy * 10.0 ** (-snr_db / 20.0)


ThreatKind = Literal["norm", "snr", "region", "unbounded"]


@dataclass(frozen=True)
class ThreatModel:
    """What an attack is allowed to change (docs/architecture.md, 'Threat models'): the unit within which worst
    cases are taken and attacks compared. Pooling threat models is meaningless (an unbounded
    attack always wins), so the leaderboard never does.

    - ``norm``: ``‖δ‖ <= eps`` in ``norm`` (``linf`` or ``l2``);
    - ``snr``: a per-clip radius in ``norm`` that guarantees at least ``snr_db`` dB SNR;
    - ``region``: unbounded inside inpainted regions of at most ``region_seconds`` in total
      (MAIA), judged by FAD/LSD/SNR;
    - ``unbounded``: no bound (e.g. C&W without ``eps``).
    """

    kind: ThreatKind
    norm: Literal["linf", "l2"] | None = None
    eps: float | None = None
    snr_db: float | None = None
    region_seconds: float | None = None

    @staticmethod
    def of_bound(bound: Bound | None) -> ThreatModel:
        if bound is None:
            return ThreatModel("unbounded")
        if bound.snr_db is not None:
            return ThreatModel("snr", norm=bound.norm, snr_db=float(bound.snr_db))
        return ThreatModel("norm", norm=bound.norm, eps=float(bound.eps))

    @staticmethod
    def region(seconds: float) -> ThreatModel:
        return ThreatModel("region", region_seconds=round(float(seconds), 6))

    @property
    def label(self) -> str:
        """Short name for tables: ``L∞ ε=0.002``, ``L2 SNR≥40 dB``, ``region ≤0.53 s``."""
        norm = {"linf": "L∞", "l2": "L2"}.get(self.norm or "", "")
        if self.kind == "norm":
            return f"{norm} ε={self.eps:g}"
        if self.kind == "snr":
            return f"{norm} SNR≥{self.snr_db:g} dB"
        if self.kind == "region":
            return f"region ≤{self.region_seconds:g} s"
        return "unbounded"

    def sort_key(self) -> tuple:
        """The default (L∞, ε = 0.002) first, then norm balls by norm and radius, SNR budgets
        from the tightest, regions from the smallest, unbounded last."""
        default = self == DEFAULT_THREAT_MODEL
        order = {"norm": 0, "snr": 1, "region": 2, "unbounded": 3}[self.kind]
        size = (self.eps if self.kind == "norm" else
                -(self.snr_db or 0.0) if self.kind == "snr" else self.region_seconds or 0.0)
        return (not default, order, self.norm or "", size)

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "norm": self.norm, "eps": self.eps, "snr_db": self.snr_db,
                "region_seconds": self.region_seconds, "label": self.label}

    @staticmethod
    def from_dict(data: dict[str, object]) -> ThreatModel:
        return ThreatModel(**{k: v for k, v in data.items() if k != "label"})  # type: ignore


DEFAULT_THREAT_MODEL = ThreatModel("norm", norm="linf", eps=0.002)
"""The benchmark's headline threat model (docs/architecture.md, 'Threat models')."""


@dataclass
class AttackResult:
    """What an attack returns, one row per input clip.

    Shapes: ``adv[B, T]`` float32 in [-1, 1]; ``success``, ``queries``, ``steps`` ``[B]``.
    ``success`` and ``queries`` are overwritten by the harness (re-scored and counted by the
    Victim); ``steps`` is the attack's own iteration count per sample. ``notes``: what a
    reader of the cell must know about this batch (a clip the attack refused to use, and
    why), one line each; the harness adds them to the cell's flags.
    """

    adv: torch.Tensor
    success: torch.Tensor
    queries: torch.Tensor
    steps: torch.Tensor
    notes: list[str] = field(default_factory=list)


class Attack(Component, abc.ABC):
    """An untargeted evasion attack on a :class:`~musicbench.victim.Victim`.

    Implementations override :meth:`run`. They must stop early per sample once it is
    successful, take randomness only from ``generator``, and never return autograd state.
    White-box attacks may use gradients through the victim; black-box attacks get a Victim
    that refuses them.
    """

    threat: ClassVar[Threat] = "white-box"
    # A transfer attack crafts on a model of its own and never calls the victim: zero queries
    # is its contract (the harness raises if it queried), where every other attack must count
    # at least the one query that tells it whether a clip is already wrong.
    transfer: ClassVar[bool] = False

    def prepare(self, ctx: Context) -> None:
        """Load what the attack needs besides the victim (an inpainter, say) before the first
        batch; ``ctx.inpainter(name, params)`` resolves inpainters. Default: nothing."""

    def bound(self) -> Bound | None:
        """The norm bound this attack promises to respect, or None (region/unbounded attacks)."""
        return None

    def threat_model(self) -> ThreatModel:
        """The threat model the attack's cells are grouped under. Default: from :meth:`bound`
        (``unbounded`` without one); attacks that change only parts of the clip override it
        (MAIA: ``ThreatModel.region``). Called after :meth:`prepare`."""
        return ThreatModel.of_bound(self.bound())

    @abc.abstractmethod
    def run(
        self,
        victim: Victim,
        audio: torch.Tensor,
        target: torch.Tensor,
        *,
        generator: torch.Generator,
    ) -> AttackResult:
        """Attack ``audio[B, T]`` whose true labels (or work indices) are ``target[B]``."""

    @final
    def __call__(
        self,
        victim: Victim,
        audio: torch.Tensor,
        target: torch.Tensor,
        *,
        generator: torch.Generator,
        clip_ids: Sequence[str] | None = None,
    ) -> AttackResult:
        """Run the attack, then check its output and re-score success with the victim.
        ``clip_ids``: the dataset ids of the rows (the harness passes them; the victim
        exposes them to the attack as ``victim.clip_ids``)."""
        import torch

        if audio.dim() != 2:
            raise ValueError(f"attacks take audio[B, T]; got shape {tuple(audio.shape)}")
        victim._begin_batch(audio.shape[0], clip_ids)
        result = self.run(victim, audio, target, generator=generator)
        adv = result.adv
        if adv.shape != audio.shape or adv.dtype != audio.dtype or adv.device != audio.device:
            raise AttackContractError(
                f"attack '{self.name}' returned {tuple(adv.shape)} {adv.dtype} on {adv.device}; "
                f"expected {tuple(audio.shape)} {audio.dtype} on {audio.device}"
            )
        if adv.requires_grad or adv.grad_fn is not None:
            raise AttackContractError(f"attack '{self.name}' returned audio with autograd state")
        if not torch.isfinite(adv).all():
            raise AttackContractError(f"attack '{self.name}' returned non-finite samples")
        peak = adv.abs().max().item() if adv.numel() else 0.0
        if peak > 1.0:
            raise AttackContractError(
                f"attack '{self.name}' returned samples outside [-1, 1] (peak {peak:.6f})"
            )
        bound = self.bound()
        if bound is not None:
            delta = (adv - audio).flatten(1)
            size = delta.abs().amax(1) if bound.norm == "linf" else delta.norm(dim=1)
            limit = bound.limits(audio).to(size.dtype)
            over = size > limit * (1 + BOUND_RTOL) + 1e-7
            if bool(over.any()):
                i = int(over.nonzero()[0])
                what = (f"eps {limit[i].item():.6g}" if bound.snr_db is None else
                        f"radius {limit[i].item():.6g} of its {bound.snr_db:g} dB SNR budget")
                raise AttackContractError(
                    f"attack '{self.name}' exceeded its {bound.norm} bound on clip {i}: "
                    f"{size[i].item():.6g} > {what}"
                )
        queries = victim.queries.clone()
        if self.transfer and bool((queries > 0).any()):
            raise AttackContractError(
                f"attack '{self.name}' is a transfer attack but queried the victim "
                f"({int(queries.sum())} queries)")
        success = victim._judge().success(adv, target)
        return AttackResult(adv=adv, success=success, queries=queries, steps=result.steps,
                            notes=list(result.notes))
