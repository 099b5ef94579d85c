"""Prov-GigaPath's slide encoder (Xu et al., 2024, "A whole-slide foundation model for digital
pathology from real-world data"): a LongNet ViT over tile embeddings.

Tile features are projected to the model width, given a fixed 2-D sin-cos position on a
1000 x 1000 grid of 256-px tiles, prefixed with a CLS token and run through LongNet layers;
the output is normalised twice (the encoder's ``layer_norm``, then ``norm``).

Parameter names equal those of the public ``slide_encoder.pth`` (its ``"model"`` entry), so
it loads with ``strict=True`` and no key mapping. The 1M-row position table is not stored: the
reference keeps it as a non-persistent buffer (absent from the checkpoint), and here it is
rebuilt on the fly from a 1000-row 1-D table, value for value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import nn

from modaltune.data.layout import POSITION_GRID_SIZE
from modaltune.errors import InputError
from modaltune.models.dilated_attention import longnet_segment_lengths
from modaltune.models.frozen_encoder import SLIDE_ENCODER_PRESETS, EncoderConfig, FrozenSlideEncoder, SlideEncoderPreset
from modaltune.models.longnet import LongNetEncoder

GIGAPATH_HUB_ID = "prov-gigapath/prov-gigapath"
GIGAPATH_CHECKPOINT_FILENAME = "slide_encoder.pth"


@dataclass
class SlideEncoderConfig(EncoderConfig):
    """Shape of a LongNet slide encoder.

    ``segment_lengths=None`` derives them from ``max_wsi_size`` the way Prov-GigaPath does
    (see ``longnet_segment_lengths``). ``dropout`` and ``drop_path_rate`` default to 0: the
    encoder is frozen and runs in eval mode, where both are no-ops anyway. (The reference
    fine-tuning code builds it with dropout 0.25 and drop-path 0.1 and leaves them active
    while training.)
    """

    in_dim: int = 1536
    dim: int = 768
    depth: int = 12
    heads: int = 16
    mlp_ratio: float = 4.0
    dilation_ratios: tuple[int, ...] = (1, 2, 4, 8, 16)
    segment_lengths: tuple[int, ...] | None = None
    max_wsi_size: int = 262144
    tile_size: int = 256
    grid_size: int = POSITION_GRID_SIZE
    dropout: float = 0.0
    drop_path_rate: float = 0.0
    layer_norm_eps: float = 1e-5
    final_norm_eps: float = 1e-6

    checkpoint_filename: ClassVar[str] = GIGAPATH_CHECKPOINT_FILENAME

    def __post_init__(self) -> None:
        self.dilation_ratios = tuple(self.dilation_ratios)
        if self.segment_lengths is not None:
            self.segment_lengths = tuple(self.segment_lengths)
        for key in ("in_dim", "dim", "depth", "heads", "max_wsi_size", "tile_size", "grid_size"):
            if getattr(self, key) < 1:
                raise InputError(f"SlideEncoderConfig.{key} must be >= 1, got {getattr(self, key)}")
        if self.dim % self.heads:
            raise InputError(f"SlideEncoderConfig.heads={self.heads} must divide dim={self.dim}")
        if self.dim % 4:
            raise InputError(f"SlideEncoderConfig.dim={self.dim} must be a multiple of 4 for the 2-D sin-cos embedding")
        if not self.dilation_ratios or min(self.dilation_ratios) < 1:
            raise InputError(f"SlideEncoderConfig.dilation_ratios must be positive, got {self.dilation_ratios}")
        if self.segment_lengths is not None and (
            len(self.segment_lengths) != len(self.dilation_ratios) or min(self.segment_lengths) < 1
        ):
            raise InputError(
                f"SlideEncoderConfig.segment_lengths={self.segment_lengths} needs one positive length "
                f"per dilation ratio {self.dilation_ratios}"
            )
        for key in ("dropout", "drop_path_rate"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise InputError(f"SlideEncoderConfig.{key} must be in [0, 1), got {getattr(self, key)}")

    def build(self) -> SlideEncoder:
        return SlideEncoder(self)

    @property
    def resolved_segment_lengths(self) -> tuple[int, ...]:
        if self.segment_lengths is not None:
            return self.segment_lengths
        return longnet_segment_lengths(self.max_wsi_size, self.tile_size, len(self.dilation_ratios))

    @property
    def ffn_dim(self) -> int:
        return int(self.dim * self.mlp_ratio)

    @classmethod
    def gigapath(cls, **overrides: Any) -> SlideEncoderConfig:
        """Prov-GigaPath ``gigapath_slide_enc12l768d``: 12 layers, width 768, 16 heads."""
        return replace(cls(), **overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> SlideEncoderConfig:
        """A few-layer encoder for tests and demos; short segments so that several segments
        and all ratios are exercised on bags of a few dozen tiles."""
        base = cls(in_dim=32, dim=64, depth=4, heads=4, dilation_ratios=(1, 2, 4), segment_lengths=(8, 16, 32))
        return replace(base, **overrides)


SLIDE_ENCODER_PRESETS.register("gigapath")(SlideEncoderPreset(SlideEncoderConfig.gigapath, "Prov-GigaPath's tile encoder", 1536))
SLIDE_ENCODER_PRESETS.register("tiny")(SlideEncoderPreset(SlideEncoderConfig.tiny))


def tile_position_index(coords: torch.Tensor, tile_size: int, grid_size: int) -> torch.Tensor:
    """Prov-GigaPath's position slot of each tile: ``floor(x/tile)*grid + floor(y/tile) + 1``.

    Slot 0 belongs to CLS. Like the reference, a ``y`` beyond the grid spills into the next
    row; coordinates that are negative or fall past the last slot raise.
    """
    cells = torch.div(coords, tile_size, rounding_mode="floor").long()
    index = cells[..., 0] * grid_size + cells[..., 1] + 1
    if index.numel() and (bool((cells < 0).any()) or int(index.max()) > grid_size * grid_size):
        raise InputError(
            f"tile coordinates must be non-negative level-0 pixels inside the {grid_size}x{grid_size} grid of "
            f"{tile_size}-px tiles; got x in [{int(coords[..., 0].min())}, {int(coords[..., 0].max())}], "
            f"y in [{int(coords[..., 1].min())}, {int(coords[..., 1].max())}]"
        )
    return index


def sincos_table(n_positions: int, dim: int) -> torch.Tensor:
    """1-D sin-cos embedding of positions ``0..n-1``: ``[sin(p·ω), cos(p·ω)]`` with
    ``ω_k = 10000^(-k/(dim/2))`` (Vaswani et al., 2017). Computed in float64 and rounded once,
    as the reference's numpy code does."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = torch.arange(n_positions, dtype=torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def grid_position_embedding(index: torch.Tensor, table: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Row ``index`` of MAE's 2-D sin-cos table (with a zero CLS row 0) without building it.

    Slot ``1 + r*grid + c`` holds ``[table[c], table[r]]`` (MAE's meshgrid puts the column
    embedding first), i.e. ``[emb(floor(y/tile)), emb(floor(x/tile))]``.
    """
    row, col = torch.div(index - 1, grid_size, rounding_mode="floor"), torch.remainder(index - 1, grid_size)
    embedding = torch.cat([table[col], table[row]], dim=-1)
    return embedding.masked_fill((index == 0).unsqueeze(-1), 0.0)


class _PatchEmbed(nn.Module):
    """Linear tile-feature projection; a module only to keep the checkpoint's ``patch_embed.proj`` key."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


class SlideEncoder(FrozenSlideEncoder):
    """Prov-GigaPath's LongNet ViT behind the ``FrozenSlideEncoder`` interface.

    Random init here only serves tests and demos (xavier linears, as in the reference);
    pretrained weights come from ``load_slide_encoder``.
    """

    config: SlideEncoderConfig

    position_table: torch.Tensor

    def __init__(self, config: SlideEncoderConfig) -> None:
        super().__init__(config)
        self.patch_embed = _PatchEmbed(config.in_dim, config.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.register_buffer("position_table", sincos_table(config.grid_size, config.dim // 2), persistent=False)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.encoder = LongNetEncoder(
            dim=config.dim,
            depth=config.depth,
            heads=config.heads,
            ffn_dim=config.ffn_dim,
            segment_lengths=config.resolved_segment_lengths,
            dilation_ratios=config.dilation_ratios,
            dropout=config.dropout,
            drop_path_rate=config.drop_path_rate,
            layer_norm_eps=config.layer_norm_eps,
        )
        self.norm = nn.LayerNorm(config.dim, eps=config.final_norm_eps)
        self._init_weights()

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def layers(self) -> nn.ModuleList:
        return self.encoder.layers

    def embed_tiles(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(features.to(self.cls_token.dtype))
        index = tile_position_index(coords, self.config.tile_size, self.config.grid_size)
        tokens = tokens + grid_position_embedding(index, self.position_table, self.config.grid_size).to(tokens.dtype)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # CLS position slot is all zeros
        return self.embed_dropout(torch.cat([cls, tokens], dim=1))

    def finalize(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(self.encoder.layer_norm(tokens))

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [*self.patch_embed.parameters(), self.cls_token]

    def pooling_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.layer_norm.parameters(), *self.norm.parameters()]

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.cls_token, std=0.02)
