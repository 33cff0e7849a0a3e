"""The undefended baseline every defense is compared with: an ordinary identity preprocessor
(the core never tests a defense by its name)."""

from __future__ import annotations

import torch

from musicbench.interfaces import Preprocessor


class NoDefense(Preprocessor):
    """Identity preprocessing: deterministic, differentiable, any sample rate."""

    def forward(self, audio: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return audio
