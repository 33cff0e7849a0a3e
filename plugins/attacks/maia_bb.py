"""MAIA, black-box: occlusion finds the regions the model relies on, CMA-ES searches the
inpainter's latent space for fills that fool it, from scores alone.

Liu, Zhang, Sang, Li, Li, "An Inpainting-Based Approach for Music Adversarial Attacks",
ISMIR 2025 (arXiv 2509.04980), as docs/maia.md reads it:

1. One query on the clean clip (its loss is the occlusion baseline; a clip the model already
   gets wrong stops here).
2. Occlusion (:mod:`.occlusion`): 0.5 s chunks zeroed with a Tukey(0.1) taper, the best
   refined down to the gap length; the best ``regions`` segments, most important first.
3. Region by region, CMA-ES (pycma, ask/tell) over the inpainter's latent z for that region,
   with the earlier regions' kept fills in place (regions accumulate). Fitness = the Victim's
   margin (true score minus the best other; from scores only), minimised. Every generation of
   every clip still running is scored in ONE Victim call. A clip stops as soon as a candidate
   has margin <= 0 (that candidate is returned). After a region's share of the budget, its
   best fill is kept if it lowered the margin below what the clip had before the region.
4. Budget: ``budget`` queries per clip in total, the clean query and localisation included;
   what is left after localisation is shared equally by the clip's valid regions still to
   come (a region that stops early leaves its rest to the next). A generation runs only if
   all of it fits, so the budget is never exceeded. Against a randomized defense every row
   costs ``victim.queries_per_row`` queries (the harness's EOT draws, each counted).

Readings of what the paper leaves open (population size, sigma, bounds, fitness): z is searched
in the inpainter's latent box (its ``latent_range``, :func:`.maia_masks.latent_bounds`),
normalised to [0, 1]^D with pycma's bound handling (a 1-D latent gets a second, unused
coordinate: pycma does not run in one dimension); x0 is a draw from the inpainter's prior;
``sigma0`` is in units of the box width; ``population`` None is pycma's default
4 + floor(3 ln D). pycma's seed comes from the generator passed in, one per clip and region.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from musicbench.api import check_number
from musicbench.interfaces import AttackResult
from musicbench.victim import Victim
from musicbench_plugins._limits import MAX_QUERIES, MAX_SECONDS, MAX_SIZE
from musicbench_plugins.attacks.maia_masks import MaskKind, RegionFiller, latent_bounds
from musicbench_plugins.attacks.maia_wb import InpainterAttack
from musicbench_plugins.attacks.occlusion import occlusion_cost, occlusion_regions


@dataclass(frozen=True)
class MAIABBParams:
    """``gap_seconds`` None: the inpainter's own gap; ``population`` None: pycma's default."""

    inpainter: str = "gacela"
    inpainter_params: dict[str, Any] = field(default_factory=dict)
    budget: int = 1000
    population: int | None = None
    sigma0: float = 0.3
    restarts: bool = True  # a search that converges with budget left restarts from the prior
    regions: int = 2
    gap_seconds: float | None = None
    chunk_seconds: float = 0.5
    taper: float = 0.1
    mask: MaskKind = "time"
    n_fft: int = 1024

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise ValueError(f"budget must be >= 1, got {self.budget}")
        if self.population is not None and self.population < 2:
            raise ValueError(f"population must be >= 2, got {self.population}")
        if not 0 < self.sigma0 <= 1:
            raise ValueError(f"sigma0 must be in (0, 1] (units of the latent box), "
                             f"got {self.sigma0}")
        if self.regions < 1:
            raise ValueError(f"regions must be >= 1, got {self.regions}")
        if self.gap_seconds is not None and not self.gap_seconds > 0:
            raise ValueError(f"gap_seconds must be > 0, got {self.gap_seconds}")
        if not self.chunk_seconds > 0:
            raise ValueError(f"chunk_seconds must be > 0, got {self.chunk_seconds}")
        if not 0 <= self.taper <= 1:
            raise ValueError(f"taper must be in [0, 1], got {self.taper}")
        if self.n_fft < 16 or self.n_fft % 4:
            raise ValueError(f"n_fft must be a multiple of 4 and >= 16, got {self.n_fft}")
        check_number("budget", self.budget, at_least=1, at_most=MAX_QUERIES, integer=True)
        if self.population is not None:
            check_number("population", self.population, at_least=2, at_most=MAX_SIZE, integer=True)
        check_number("regions", self.regions, at_least=1, at_most=1000, integer=True)
        if self.gap_seconds is not None:
            check_number("gap_seconds", self.gap_seconds, above=0, at_most=MAX_SECONDS)
        check_number("chunk_seconds", self.chunk_seconds, above=0, at_most=MAX_SECONDS)
        check_number("n_fft", self.n_fft, at_least=16, at_most=MAX_SIZE, integer=True)


class MAIABB(InpainterAttack):
    """MAIA black-box (occlusion regions, CMA-ES over the inpainter's latent, query budget).

    Shape: audio ``[B, T]`` in [-1, 1], target ``[B]`` -> adv ``[B, T]``, changed only inside
    the regions. Forward queries only; at most ``budget`` per clip.
    """

    threat = "black-box"
    version = "1"
    Params = MAIABBParams
    @torch.no_grad()
    def run(self, victim: Victim, audio: torch.Tensor, target: torch.Tensor, *,
            generator: torch.Generator) -> AttackResult:
        import cma  # heavy import, only when the attack runs

        p = self.params
        inpainter = self._loaded(victim)
        batch, samples = audio.shape
        device = audio.device
        adv = audio.clone()
        steps = torch.zeros(batch, dtype=torch.long, device=device)
        everyone = torch.arange(batch, device=device)
        base_loss, margin = victim.loss_and_margin(audio, target, index=everyone)
        active = everyone[margin > 0]  # already-wrong clips cost only that query
        if active.numel() == 0:
            return self._result(victim, adv, margin <= 0, steps)
        gap = self._gap(inpainter, samples)
        chunk = max(1, round(p.chunk_seconds * victim.sample_rate))
        dim = inpainter.latent_dim
        pop = p.population or 4 + int(3 * math.log(max(dim, 1)))
        cost = victim.queries_per_row  # draws per row against a randomized defense
        needed = (1 + occlusion_cost(samples, gap, p.regions, chunk) + pop) * cost
        if needed > p.budget:
            raise ValueError(f"budget {p.budget} is too small: localisation and one generation "
                             f"of {pop} need {needed} queries per clip")
        regions = occlusion_regions(victim, audio[active], target[active], base_loss[active],
                                    gap=gap, regions=p.regions, chunk=chunk, taper=p.taper,
                                    index=active)
        filler = RegionFiller(inpainter, p.mask, p.n_fft)
        lo, hi = latent_bounds(inpainter)
        x, y = audio[active], target[active]
        base = x.clone()  # the clip with the kept fills of earlier regions
        base_margin = margin[active].clone()
        success = torch.zeros(active.numel(), dtype=torch.bool, device=device)
        for k in range(regions.count):
            todo = (~success & regions.valid[:, k]).nonzero().squeeze(1).tolist()
            if not todo:
                continue
            start = victim.queries[active].clone()
            still = regions.valid[:, k:].sum(1).clamp(min=1)  # regions left to share it
            allowance = start + (p.budget - start) // still
            searches = {i: self._cma(cma, inpainter, generator, dim, pop) for i in todo}
            best_z = {i: None for i in todo}
            best_margin = {i: float("inf") for i in todo}
            while True:
                used = victim.queries[active]
                for i in todo:  # converged or stalled with budget left: restart from the prior
                    if (p.restarts and not success[i] and searches[i].stop()
                            and int(used[i]) + pop * cost <= int(allowance[i])):
                        searches[i] = self._cma(cma, inpainter, generator, dim, pop)
                running = [i for i in todo if not success[i] and not searches[i].stop()
                           and int(used[i]) + pop * cost <= int(allowance[i])]
                if not running:
                    break
                asked = {i: searches[i].ask() for i in running}
                u = torch.tensor([[list(c)[:dim] for c in asked[i]] for i in running],
                                 dtype=audio.dtype, device=device)  # [n, pop, D]
                z = (lo + (hi - lo) * u.clamp(0, 1)).reshape(-1, dim)
                rows = torch.tensor(running, device=device).repeat_interleave(pop)
                cand = filler.fill(base[rows], regions.select(rows), k, z)
                m = victim.margin(cand, y[rows], index=active[rows]).reshape(len(running), pop)
                for j, i in enumerate(running):
                    fitness = m[j].tolist()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        searches[i].tell(asked[i], fitness)
                    steps[active[i]] += 1
                    jbest = min(range(pop), key=fitness.__getitem__)
                    if fitness[jbest] < best_margin[i]:
                        best_margin[i] = fitness[jbest]
                        best_z[i] = z[j * pop + jbest]
                    if fitness[jbest] <= 0:  # fooled: keep this very candidate
                        success[i] = True
                        adv[active[i]] = cand[j * pop + jbest]
            for i in todo:  # keep the region's best fill where it helped
                if best_z[i] is None or success[i] or not best_margin[i] < base_margin[i]:
                    continue
                one = torch.tensor([i], device=device)
                base[i] = filler.fill(base[one], regions.select(one), k, best_z[i][None])[0]
                base_margin[i] = best_margin[i]
        rest = ~success
        adv[active[rest]] = base[rest]
        done = margin <= 0
        done[active] = success
        return self._result(victim, adv, done, steps)

    def _cma(self, cma, inpainter, generator: torch.Generator, dim: int, pop: int):
        """One CMA-ES search in the latent box normalised to [0, 1]^dim, seeded from
        ``generator``; x0 is a prior draw."""
        lo, hi = latent_bounds(inpainter)
        z0 = inpainter.sample_latent(1, generator).reshape(-1).double().cpu()
        x0 = ((z0 - lo) / (hi - lo)).clamp(0, 1).tolist()
        if dim == 1:  # pycma cannot tell() in one dimension: add a coordinate nothing reads
            x0.append(0.5)
        seed = int(torch.randint(1, 2**31 - 1, (1,), generator=generator,
                                 device=generator.device))
        opts = {"seed": seed, "verbose": -9, "bounds": [0.0, 1.0], "popsize": pop,
                "verb_log": 0, "verb_disp": 0}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cma.CMAEvolutionStrategy(x0, self.params.sigma0, opts)

    @staticmethod
    def _result(victim: Victim, adv: torch.Tensor, done: torch.Tensor, steps: torch.Tensor
                ) -> AttackResult:
        return AttackResult(adv=adv, success=done, queries=victim.queries.clone(), steps=steps)
