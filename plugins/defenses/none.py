"""The undefended baseline every defense is compared with."""

from __future__ import annotations

import torch

from musicbench.interfaces import Preprocessor


class NoDefense(Preprocessor):
    """Identity preprocessing."""

    def forward(self, audio: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return audio
