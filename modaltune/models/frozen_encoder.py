"""The contract between a pretrained slide-level foundation model (SLFM) and the adapters.

Modal Adapters need to run an SLFM layer by layer: embed the tiles, run some layers, inject,
run more layers, extract, and normalise at the end. Any SLFM exposing that shape (Prov-GigaPath's
LongNet, TITAN's ViT) can be a sweep factor without touching the adapter code, and a frozen-prefix
cache can run ``embed`` + ``layers[:p]`` once per slide. An SLFM whose layers need more than the
tokens (TITAN's attention bias from the tiles' grid positions) says so in ``layer_context``.

Each SLFM has a config class (``EncoderConfig``: the widths and depth the rest of the model
needs, and ``build``) and presets registered by name in ``SLIDE_ENCODER_PRESETS``
(``model.encoder`` in a run config, the ``slide_encoder`` study factor).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from modaltune.registry import Registry


class EncoderConfig(ABC):
    """The shape of one SLFM architecture; a dataclass in each architecture's module."""

    in_dim: int  # tile-feature width the SLFM takes (the cohort's features must have it)
    dim: int  # token width
    depth: int  # number of layers
    tile_size: int  # level-0 pixels per cell of the SLFM's position grid
    checkpoint_filename: ClassVar[str]  # the weights' file in the SLFM's hub repo
    checkpoint_prefix: ClassVar[str] = ""  # the encoder's keys in a checkpoint that holds more (stripped)

    @abstractmethod
    def build(self) -> FrozenSlideEncoder:
        """The encoder with random weights (``load_slide_encoder`` loads a checkpoint into it)."""


@dataclass(frozen=True)
class SlideEncoderPreset:
    """A named SLFM configuration: how to make its config, and the tile features its pretrained
    weights were trained on (``None`` for the CPU-sized presets, which take any width)."""

    make: Callable[..., EncoderConfig]  # keyword overrides of the config's fields -> config
    tile_encoder: str | None = None  # e.g. "CONCH v1.5"
    feature_dim: int | None = None  # that tile encoder's feature width


SLIDE_ENCODER_PRESETS: Registry[SlideEncoderPreset] = Registry("slide encoder preset")
"""``model.encoder`` names (``train.model.encoder``, the ``slide_encoder`` study factor)."""


class FrozenSlideEncoder(nn.Module, ABC):
    """A pretrained slide encoder that stays frozen and in eval mode once ``freeze``-d.

    Subclasses provide ``embed_tiles``, ``layers`` and ``finalize``; the token layout is
    ``[CLS; tile tokens]`` throughout, shape ``[B, 1 + N, dim]``, and each layer maps it to the
    same shape.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self._frozen = False

    @property
    @abstractmethod
    def dim(self) -> int:
        """Token width."""

    @property
    @abstractmethod
    def layers(self) -> nn.ModuleList:
        """The transformer layers in order; each is ``layer(tokens) -> tokens``."""

    def embed(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Tile features ``[B, N, in_dim]`` and level-0 pixel coords ``[B, N, 2]`` -> tokens
        ``[B, 1 + N, dim]`` with the CLS token first (``embed_tiles``, after the shape check)."""
        in_dim = self.config.in_dim
        if features.ndim != 3 or features.shape[-1] != in_dim or coords.shape != (*features.shape[:2], 2):
            raise ValueError(
                f"expected features [B, N, {in_dim}] and coords [B, N, 2], got {tuple(features.shape)} and {tuple(coords.shape)}"
            )
        return self.embed_tiles(features, coords)

    @abstractmethod
    def embed_tiles(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """``embed`` for inputs of the checked shapes."""

    @abstractmethod
    def finalize(self, tokens: torch.Tensor) -> torch.Tensor:
        """The final normalisation(s) applied after the last layer."""

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def frozen(self) -> bool:
        return self._frozen

    def layer_context(self, coords: torch.Tensor) -> Any:
        """What every layer needs besides the tokens, from the tiles' level-0 coords ``[B, N, 2]``
        (e.g. a position-dependent attention bias); ``None`` where positions are in the tokens."""
        return None

    def apply_layer(self, layer: nn.Module, tokens: torch.Tensor, context: Any) -> torch.Tensor:
        """One layer on ``tokens``; an SLFM with a ``layer_context`` passes it here."""
        return layer(tokens)

    def run_layers(self, tokens: torch.Tensor, start: int = 0, stop: int | None = None, context: Any = None) -> torch.Tensor:
        """Run ``layers[start:stop]`` on ``tokens`` (``context``: ``layer_context`` of their tiles)."""
        for layer in self.layers[start:stop]:
            tokens = self.apply_layer(layer, tokens, context)
        return tokens

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The slide embedding ``[B, dim]`` from the last layer's tokens: the normalised CLS token
        here; an SLFM that pools otherwise (TITAN's attentional pooler) overrides it."""
        return self.finalize(tokens)[:, 0]

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The weights ``embed_tiles`` reads (tile projection, CLS token): what a fine-tune of the
        whole SLFM (the ``finetune`` method) trains besides the layers and ``pooling_parameters``."""
        raise NotImplementedError(f"{type(self).__name__} does not say which weights embed its tiles, so it cannot be fine-tuned")

    def pooling_parameters(self) -> list[nn.Parameter]:
        """The weights after the last layer that ``pool`` reads (final norm(s), a pooler): a
        fine-tune of the last layers trains them with those."""
        raise NotImplementedError(f"{type(self).__name__} does not say which weights pool its slide embedding, so it cannot be fine-tuned")

    def forward(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """The SLFM's own slide embedding, ``[B, dim]``."""
        return self.pool(self.run_layers(self.embed(features, coords), context=self.layer_context(coords)))

    def freeze(self) -> FrozenSlideEncoder:
        """Stop gradients into every weight and pin eval mode, so a parent's ``.train()``
        cannot switch dropout or drop-path back on in the pretrained model."""
        for param in self.parameters():
            param.requires_grad_(False)
        self._frozen = True
        return super().train(False)

    def train(self, mode: bool = True) -> FrozenSlideEncoder:
        return super().train(mode and not self._frozen)
