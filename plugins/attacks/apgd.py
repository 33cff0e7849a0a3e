"""Auto-PGD (APGD): PGD with momentum and a step size that adapts itself at checkpoints.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (Algorithm 1; with Square Attack, the attacks of
AutoAttack). Untargeted, on the waveform, L-inf (signed steps) or L2 (normalised steps):

- start at a random point of the ball (L-inf: uniform noise rescaled so its peak is ``eps``;
  L2: a random direction of length ``eps``), step size ``η⁽⁰⁾ = 2·eps``;
- ``z = P(x⁽ᵏ⁾ + η·s(∇f(x⁽ᵏ⁾)))`` with ``s`` = sign (L-inf) or ``g / ‖g‖₂`` (L2), then
  ``x⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + α(z − x⁽ᵏ⁾) + (1 − α)(x⁽ᵏ⁾ − x⁽ᵏ⁻¹⁾))``, ``α = 0.75`` (the first
  step has no momentum); P projects onto the ball and onto [-1, 1];
- checkpoints ``w_j = ⌈p_j·N⌉``, ``p_0 = 0``, ``p_1 = 0.22``,
  ``p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)`` (:func:`checkpoints`). At a checkpoint
  a clip halves its step and restarts from its best point so far (highest loss) when
  (1) fewer than ``ρ·(w_j − w_{j−1})`` of the steps since the last checkpoint raised the loss
  (``ρ = 0.75``; the paper's strict "<"), or (2) its step was not halved at the last
  checkpoint and its best loss has not improved since (:func:`halve_at_checkpoint`);
- ``loss = "ce"``: the victim's cross-entropy (for retrieval, over work similarities divided
  by the victim's temperature); ``loss = "dlr"``: the Difference of Logits Ratio
  ``−(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12)`` (:func:`dlr_loss`), with ``z`` the
  victim's scores (logits, or per-work similarities ``[B, n_works]`` for retrieval: DLR is
  invariant to their shift and scale, as it is to the logits');
- ``restarts`` random starts, each run only on the clips no earlier start fooled;
- ``loss = "dlr-targeted"``: AutoAttack's APGD-T (Croce & Hein 2020, §3.3 and eq. 7). One
  counted pass on the clean clips ranks the other classes by their clean scores; the attack
  then runs once per target, for the top ``min(target_classes, K − 1)`` of them in that order
  (``target_classes = 9``, AutoAttack's), each run (with its ``restarts``) only on the clips
  no earlier target fooled, raising the targeted DLR
  ``−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12)`` (:func:`targeted_dlr_loss`). Success
  is untargeted, as in AutoAttack: a clip stops once the model is wrong, whichever class
  wins. For retrieval the classes are the works of the reference set, as for DLR.

**DLR needs at least three classes** (``z_π3``), **targeted DLR four** (``z_π4``). A
victim with fewer (a two-label classifier, a reference set of two works) makes the attack
raise
:class:`TooFewClassesError`, naming the model and its class count, before any query: the
cell fails with that message. There is no silent fallback to CE: an ``apgd-dlr`` column that
was really CE would make the per-sample worst case of an ensemble look more diverse than it
is. Such a model should be given ``loss = "ce"`` or left out of the DLR entry's models.

**Per-sample early stop.** Every evaluated iterate's own forward pass yields the margin, so
a clip stops the moment an iterate fools the model (that iterate is returned) and takes no
part in later steps or restarts; clips the model already gets wrong stop after one query. A
clip never fooled returns the highest-loss point of all its restarts.

**Cost.** A restart evaluates ``x⁽⁰⁾ .. x⁽ᴺ⁾``: ``N = steps`` gradient calls and one last
forward pass without gradient (so the best point and the success of the final iterate are
known before the next restart). ``steps`` counts gradient steps per clip over all restarts
(and, targeted, over all targets: a clip no target fools takes ``restarts · steps`` steps per
target, plus one clean query in all). A clip never fooled by any target returns the point of
highest targeted DLR over all its runs.

**EOT.** The Victim averages randomized defenses (EOT) and applies BPDA; the attack does not
know. With CE it averages the loss over draws; with DLR, DLR is taken of the draw-averaged
scores (AutoAttack's EOT averages the loss's gradients instead; with one draw they agree).
Either way the early stop uses the Victim's margin, which under EOT is the largest over the
draws: a clip stops only when the model is wrong on every draw it was shown.

Readings and defaults (:class:`APGDParams`): ``steps = 50``, half of AutoAttack's 100. On
32 clean-correct m21-styles clips of style-cnn (2 shared CPU cores, ~20 ms per gradient step
per clip) at eps 0.0003, where about half the clips resist: PGD 20/50 steps fooled 15/17,
APGD-CE 20/50/100 steps 15/19/20, APGD-DLR 13/20/20, at 0.24/0.71/1.29 s per clip for CE.
100 steps added at most one clip for 1.8 times the cost, and the clips a defense protects run
every step (times [run] eot_samples under a randomized defense), so 50 is what a CPU
leaderboard can afford; the schedule scales with ``steps``, so a GPU run can set 100. At the
benchmark's eps 0.002 APGD-CE (50) fooled 31/32, APGD-DLR 30/32, PGD (20) 30/32. The paper's
constants (0.22, 0.03, 0.06, ρ, α, η⁽⁰⁾ = 2·eps) are parameters with its values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from musicbench.api import (
    Attack,
    AttackResult,
    Bound,
    MusicbenchError,
    Victim,
    check_number,
    check_snr_db,
    project_l2,
    snr_radius,
)
from musicbench_plugins._limits import MAX_L2_EPS, MAX_LINF_EPS, MAX_SIZE, MAX_STEPS

DLR_EPS = 1e-12
"""The paper's guard in DLR's denominator."""


MIN_CLASSES = {"dlr": 3, "dlr-targeted": 4}
"""Classes each DLR loss needs: ``z_π3`` (DLR), ``z_π3`` and ``z_π4`` (targeted DLR)."""


class TooFewClassesError(MusicbenchError):
    """APGD with a DLR loss was asked to attack a model with fewer classes than it needs
    (3 for ``"dlr"``, 4 for ``"dlr-targeted"``)."""


@dataclass(frozen=True)
class APGDParams:
    """``eps``: the radius in ``norm`` (0.002 is the benchmark's L-inf radius;
    docs/architecture.md, 'Threat models'); ``snr_db`` set replaces it with a per-clip radius
    giving at least that SNR. ``steps``:
    iterations per restart, N of the paper. ``restarts``: random starts. ``loss``: ``"ce"`` or
    ``"dlr"`` (needs >= 3 classes) or ``"dlr-targeted"`` (APGD-T, needs >= 4).
    ``target_classes``: targets APGD-T tries per clip (at most K − 1). ``momentum``: α.
    ``rho``: ρ of condition 1.
    ``initial_step``: η⁽⁰⁾ as a multiple of the radius. ``first_checkpoint``, ``shrink``,
    ``min_interval``: the checkpoint schedule as fractions of ``steps`` (the paper's 0.22,
    0.03, 0.06)."""

    eps: float = 0.002
    norm: Literal["linf", "l2"] = "linf"
    snr_db: float | None = None
    steps: int = 50
    restarts: int = 1
    loss: Literal["ce", "dlr", "dlr-targeted"] = "ce"
    target_classes: int = 9
    momentum: float = 0.75
    rho: float = 0.75
    initial_step: float = 2.0
    first_checkpoint: float = 0.22
    shrink: float = 0.03
    min_interval: float = 0.06

    def __post_init__(self) -> None:
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {self.norm!r}")
        check_snr_db(self.snr_db)
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.restarts < 1:
            raise ValueError(f"restarts must be >= 1, got {self.restarts}")
        if self.loss not in ("ce", "dlr", "dlr-targeted"):
            raise ValueError(f"loss must be 'ce', 'dlr' or 'dlr-targeted', got {self.loss!r}")
        if self.target_classes < 1:
            raise ValueError(f"target_classes must be >= 1, got {self.target_classes}")
        if not 0 < self.momentum <= 1:
            raise ValueError(f"momentum (alpha) must be in (0, 1], got {self.momentum}")
        if not 0 < self.rho <= 1:
            raise ValueError(f"rho must be in (0, 1], got {self.rho}")
        if not self.initial_step > 0:
            raise ValueError(f"initial_step must be > 0, got {self.initial_step}")
        if not 0 < self.first_checkpoint <= 1:
            raise ValueError(f"first_checkpoint must be in (0, 1], got {self.first_checkpoint}")
        if not self.shrink >= 0:
            raise ValueError(f"shrink must be >= 0, got {self.shrink}")
        if not 0 < self.min_interval <= 1:
            raise ValueError(f"min_interval must be in (0, 1], got {self.min_interval}")
        check_number("eps", self.eps, above=0,
                     at_most=MAX_LINF_EPS if self.norm == "linf" else MAX_L2_EPS)
        check_number("steps", self.steps, at_least=1, at_most=MAX_STEPS, integer=True)
        check_number("restarts", self.restarts, at_least=1, at_most=MAX_STEPS, integer=True)
        check_number("target_classes", self.target_classes, at_least=1, at_most=MAX_SIZE,
                     integer=True)
        check_number("initial_step", self.initial_step, above=0, at_most=100)
        check_number("shrink", self.shrink, at_least=0, at_most=1)


def checkpoints(steps: int, first: float = 0.22, shrink: float = 0.03,
                min_interval: float = 0.06) -> list[int]:
    """The iterations ``w_1 < w_2 < ... <= steps`` at which APGD may halve its step:
    ``w_j = ⌈p_j·steps⌉`` with ``p_0 = 0``, ``p_1 = first``,
    ``p_{j+1} = p_j + max(p_j − p_{j−1} − shrink, min_interval)`` (Croce & Hein 2020, §3.2).
    Duplicates (short runs) are dropped; ``w_0 = 0`` is not a checkpoint."""
    points: list[int] = []
    prev, cur = 0.0, first
    while cur <= 1.0 + 1e-9:
        w = math.ceil(round(cur * steps, 9))  # round: 0.22 * 50 must give 11, not 12
        if w >= 1 and (not points or w > points[-1]):
            points.append(w)
        prev, cur = cur, cur + max(cur - prev - shrink, min_interval)
    return points


def halve_at_checkpoint(
    increases: torch.Tensor,
    interval: int,
    rho: float,
    halved_last: torch.Tensor,
    best: torch.Tensor,
    best_last: torch.Tensor,
) -> torch.Tensor:
    """``bool[B]``: which clips halve their step (and restart from their best point) at a
    checkpoint.

    :param increases: ``long[B]``, how many of the ``interval`` steps since the last
        checkpoint raised the loss (``f(x⁽ⁱ⁺¹⁾) > f(x⁽ⁱ⁾)``).
    :param halved_last: ``bool[B]``, whether the step was halved at the last checkpoint.
    :param best: ``[B]``, the best loss now; ``best_last``: at the last checkpoint.

    Condition 1: ``increases < rho * interval``. Condition 2: the step was not halved last
    time and the best loss has not improved since.
    """
    stalled = increases.to(best.dtype) < rho * interval
    unchanged = ~halved_last & (best <= best_last)
    return stalled | unchanged


def dlr_loss(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``scores[B, K]`` (K >= 3), ``target[B]`` -> ``[B]``: the Difference of Logits Ratio,
    ``−(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12)`` with ``z_π1 >= z_π2 >= ...`` the sorted
    scores (Croce & Hein 2020, eq. 6). Raised by an untargeted attack; > 0 once fooled."""
    k = scores.shape[-1]
    if k < 3:
        raise TooFewClassesError(f"DLR needs at least 3 classes (z_π3); scores have {k}")
    top = scores.topk(3, dim=-1).values
    return -_margin(scores, target) / (top[..., 0] - top[..., 2] + DLR_EPS)


def targeted_dlr_loss(scores: torch.Tensor, target: torch.Tensor, aim: torch.Tensor
                      ) -> torch.Tensor:
    """``scores[B, K]`` (K >= 4), true ``target[B]``, target class ``aim[B]`` -> ``[B]``: the
    targeted DLR, ``−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12)`` (Croce & Hein 2020,
    eq. 7). Raised by a targeted attack; > 0 once ``z_t`` passes ``z_y`` (the clip is then
    misclassified, though not necessarily as ``t``)."""
    k = scores.shape[-1]
    if k < 4:
        raise TooFewClassesError(
            f"targeted DLR needs at least 4 classes (z_π4); scores have {k}")
    top = scores.topk(4, dim=-1).values
    true = scores.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    other = scores.gather(-1, aim.unsqueeze(-1)).squeeze(-1)
    return -(true - other) / (top[..., 0] - (top[..., 2] + top[..., 3]) / 2 + DLR_EPS)


def ranked_targets(scores: torch.Tensor, target: torch.Tensor, count: int) -> torch.Tensor:
    """``scores[B, K]`` (the clean clips'), ``target[B]`` -> ``long[B, min(count, K − 1)]``:
    the classes other than the true one, highest score first (AutoAttack's order of targets;
    ties go to the lower index)."""
    others = scores.scatter(-1, target.unsqueeze(-1), float("-inf"))
    n = min(count, scores.shape[-1] - 1)
    return others.argsort(dim=-1, descending=True, stable=True)[:, :n]


def _margin(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[B]``: true score minus the best other (> 0 while the model is right)."""
    idx = target.unsqueeze(-1)
    true = scores.gather(-1, idx).squeeze(-1)
    return true - scores.scatter(-1, idx, float("-inf")).amax(-1)


def class_count(victim: Victim) -> int | None:
    """Classes the victim's scores have: its labels (classification) or works (retrieval);
    None when it cannot tell before scoring."""
    if victim.task == "retrieval":
        refs = victim.references
        return refs.n_works if refs is not None else None
    return len(victim.labels) if victim.labels else None


def _model_name(victim: Victim) -> str:
    try:
        return str(victim.model.name)
    except MusicbenchError:
        return "?"


class APGD(Attack):
    """Auto-PGD with CE or DLR loss, random restarts and per-sample early stop.

    Shape: audio ``[B, T]`` in [-1, 1], target ``[B]`` -> adv ``[B, T]``; ``steps[B]`` counts
    each clip's gradient steps over all restarts.
    """

    threat = "white-box"
    version = "2"
    Params = APGDParams

    def bound(self) -> Bound:
        return Bound(self.params.norm, self.params.eps, snr_db=self.params.snr_db)

    def _check_classes(self, victim: Victim) -> None:
        need = MIN_CLASSES.get(self.params.loss)
        if need is None:
            return
        k = class_count(victim)
        if k is not None and k < need:
            what = "works in its reference set" if victim.task == "retrieval" else "classes"
            why = ("DLR divides by z_π1 − z_π3" if need == 3 else
                   "targeted DLR divides by z_π1 − (z_π3 + z_π4)/2")
            raise TooFewClassesError(
                f"attack '{self.name}' (apgd, loss='{self.params.loss}') needs a model with at "
                f"least {need} classes ({why}), but model '{_model_name(victim)}' has "
                f"{k} {what}; use loss = \"ce\" for it, or leave it out of this attack's models")

    def _evaluate(self, victim: Victim, x: torch.Tensor, target: torch.Tensor,
                  index: torch.Tensor, grad: bool, aim: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(loss[b], margin[b], grad[b, T] or None)`` at ``x[b, T]`` from one counted pass;
        ``aim[b]``: the target classes of the targeted DLR."""
        with torch.enable_grad() if grad else torch.no_grad():
            xg = x.detach().requires_grad_(grad)
            if self.params.loss == "ce":
                loss, margin = victim.loss_and_margin(xg, target, index=index)
            else:
                scores, margin = victim.scores_and_margin(xg, target, index=index)
                loss = (dlr_loss(scores, target) if aim is None
                        else targeted_dlr_loss(scores, target, aim))
            g = torch.autograd.grad(loss.sum(), xg)[0] if grad else None
        return loss.detach(), margin.detach(), g

    def run(
        self,
        victim: Victim,
        audio: torch.Tensor,
        target: torch.Tensor,
        *,
        generator: torch.Generator,
    ) -> AttackResult:
        p = self.params
        self._check_classes(victim)
        batch = audio.shape[0]
        dev = audio.device
        if p.snr_db is not None:
            eps = snr_radius(audio, p.snr_db, p.norm)  # [B, 1]
        else:
            eps = torch.full((batch, 1), p.eps, dtype=audio.dtype, device=dev)
        adv = audio.clone()
        done = torch.zeros(batch, dtype=torch.bool, device=dev)
        steps = torch.zeros(batch, dtype=torch.long, device=dev)
        overall = torch.full((batch,), float("-inf"), dtype=audio.dtype, device=dev)
        aims: list[torch.Tensor | None] = [None]
        if p.loss == "dlr-targeted":
            # One counted clean pass ranks the targets; clips already wrong stop there.
            everyone = torch.arange(batch, device=dev)
            with torch.no_grad():
                scores, margin = victim.scores_and_margin(audio, target, index=everyone)
            done |= margin <= 0
            ranked = ranked_targets(scores, target, p.target_classes)
            aims = list(ranked.unbind(1))
        for aim in aims:
            for _ in range(p.restarts):
                active = (~done).nonzero().squeeze(1)
                if active.numel() == 0:
                    break
                self._restart(victim, audio, target, eps, active, generator, adv, done,
                              steps, overall, aim)
        return AttackResult(adv=adv, success=done, queries=victim.queries.clone(), steps=steps)

    def _start(self, audio: torch.Tensor, eps: torch.Tensor, generator: torch.Generator
               ) -> torch.Tensor:
        """A random point of the ball around ``audio[B, T]``, clipped to [-1, 1]."""
        if self.params.norm == "linf":
            t = 2 * torch.rand(audio.shape, generator=generator, device=audio.device,
                               dtype=audio.dtype) - 1
            t = t / t.abs().amax(1, keepdim=True).clamp_min(1e-12)
        else:
            t = torch.randn(audio.shape, generator=generator, device=audio.device,
                            dtype=audio.dtype)
            t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return (audio + eps * t).clamp(-1, 1)

    def _project(self, x: torch.Tensor, clean: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        if self.params.norm == "linf":
            return torch.minimum(torch.maximum(x, clean - eps), clean + eps).clamp(-1, 1)
        return (clean + project_l2(x - clean, eps)).clamp(-1, 1)

    def _direction(self, g: torch.Tensor) -> torch.Tensor:
        if self.params.norm == "linf":
            return g.sign()
        return g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def _restart(self, victim: Victim, audio: torch.Tensor, target: torch.Tensor,
                 eps: torch.Tensor, active: torch.Tensor, generator: torch.Generator,
                 adv: torch.Tensor, done: torch.Tensor, steps: torch.Tensor,
                 overall: torch.Tensor, aim: torch.Tensor | None = None) -> None:
        """One random start of APGD on clips ``active``, writing ``adv``, ``done``, ``steps``
        and ``overall`` (the best loss over restarts and targets of clips not yet fooled) in
        place; ``aim[B]``: every clip's target class (targeted DLR), else None."""
        p = self.params
        start = self._start(audio, eps, generator)[active]  # noise for the whole batch
        clean, y, eps = audio[active], target[active], eps[active]
        aim = aim[active] if aim is not None else None
        x, x_prev = start, start
        eta = p.initial_step * eps  # [b, 1]
        schedule = checkpoints(p.steps, p.first_checkpoint, p.shrink, p.min_interval)
        last_point = 0
        f_prev = f_best = best_last = None
        x_best = grad_best = grad = None
        increases = torch.zeros(active.numel(), dtype=torch.long, device=audio.device)
        halved_last = torch.zeros(active.numel(), dtype=torch.bool, device=audio.device)
        for k in range(p.steps + 1):
            final = k == p.steps
            f, margin, g = self._evaluate(victim, x, y, active, grad=not final, aim=aim)
            hit = margin <= 0
            if bool(hit.any()):  # fooled: keep this iterate, drop the clip from the rest
                adv[active[hit]] = x[hit]
                done[active[hit]] = True
                keep = ~hit
                active, clean, y, eps, eta = active[keep], clean[keep], y[keep], eps[keep], \
                    eta[keep]
                aim = aim[keep] if aim is not None else None
                x, x_prev, f = x[keep], x_prev[keep], f[keep]
                g = g[keep] if g is not None else None
                increases, halved_last = increases[keep], halved_last[keep]
                if f_best is not None:
                    f_prev, f_best, best_last = f_prev[keep], f_best[keep], best_last[keep]
                    x_best, grad_best = x_best[keep], grad_best[keep]
                if active.numel() == 0:
                    return
            if f_best is None:  # k == 0
                f_best, best_last, x_best = f.clone(), f.clone(), x.clone()
                grad_best = g.clone() if g is not None else torch.zeros_like(x)
            else:
                increases += (f > f_prev).long()
                better = f > f_best
                f_best = torch.where(better, f, f_best)
                x_best = torch.where(better.unsqueeze(1), x, x_best)
                if g is not None:
                    grad_best = torch.where(better.unsqueeze(1), g, grad_best)
            f_prev, grad = f, g
            if final:
                break
            if k in schedule and k > 0:
                halve = halve_at_checkpoint(increases, k - last_point, p.rho, halved_last,
                                            f_best, best_last)
                eta = torch.where(halve.unsqueeze(1), eta / 2, eta)
                x = torch.where(halve.unsqueeze(1), x_best, x)
                grad = torch.where(halve.unsqueeze(1), grad_best, grad)
                f_prev = torch.where(halve, f_best, f_prev)
                halved_last, best_last = halve, f_best.clone()
                increases = torch.zeros_like(increases)
                last_point = k
            with torch.no_grad():
                z = self._project(x + eta * self._direction(grad), clean, eps)
                a = 1.0 if k == 0 else p.momentum
                x_next = self._project(x + a * (z - x) + (1 - a) * (x - x_prev), clean, eps)
                x_prev, x = x, x_next
            steps[active] += 1
        # Not fooled by this start: keep its best point if it beats the earlier starts'.
        better = f_best > overall[active]
        overall[active[better]] = f_best[better]
        adv[active[better]] = x_best[better]
