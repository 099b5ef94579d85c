"""The contract between a pretrained slide-level foundation model (SLFM) and the adapters.

Modal Adapters need to run an SLFM layer by layer: embed the tiles, run some layers, inject,
run more layers, extract, and normalise at the end. Any SLFM exposing that shape (Prov-GigaPath
today, a TITAN-like ViT later) can be a sweep factor without touching the adapter code, and a
frozen-prefix cache can run ``embed`` + ``layers[:p]`` once per slide.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class FrozenSlideEncoder(nn.Module, ABC):
    """A pretrained slide encoder that stays frozen and in eval mode once ``freeze``-d.

    Subclasses provide ``embed``, ``layers`` and ``finalize``; the token layout is
    ``[CLS; tile tokens]`` throughout, shape ``[B, 1 + N, dim]``, and each layer maps it to the
    same shape.
    """

    def __init__(self) -> None:
        super().__init__()
        self._frozen = False

    @property
    @abstractmethod
    def dim(self) -> int:
        """Token width."""

    @property
    @abstractmethod
    def layers(self) -> nn.ModuleList:
        """The transformer layers in order; each is ``layer(tokens) -> tokens``."""

    @abstractmethod
    def embed(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Tile features ``[B, N, in_dim]`` and level-0 pixel coords ``[B, N, 2]`` -> tokens
        ``[B, 1 + N, dim]`` with the CLS token first."""

    @abstractmethod
    def finalize(self, tokens: torch.Tensor) -> torch.Tensor:
        """The final normalisation(s) applied after the last layer."""

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def frozen(self) -> bool:
        return self._frozen

    def run_layers(self, tokens: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Run ``layers[start:stop]`` on ``tokens``."""
        for layer in self.layers[start:stop]:
            tokens = layer(tokens)
        return tokens

    def forward(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """The SLFM's own slide embedding: the normalised CLS token, ``[B, dim]``."""
        return self.finalize(self.run_layers(self.embed(features, coords)))[:, 0]

    def freeze(self) -> FrozenSlideEncoder:
        """Stop gradients into every weight and pin eval mode, so a parent's ``.train()``
        cannot switch dropout or drop-path back on in the pretrained model."""
        for param in self.parameters():
            param.requires_grad_(False)
        self._frozen = True
        return super().train(False)

    def train(self, mode: bool = True) -> FrozenSlideEncoder:
        return super().train(mode and not self._frozen)
