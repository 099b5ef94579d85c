"""TITAN's slide encoder (Ding et al., 2024, "Multimodal whole slide foundation model for
pathology"): a ViT over a 2-D grid of CONCH v1.5 tile features with a 2-D ALiBi attention bias.

Written from the paper and the public model card's description: tile features (768-wide,
512-px tiles at 20x, i.e. 1024 level-0 px at 40x) go through ``Linear + GELU``, a CLS token is
prepended, and six pre-norm blocks (12 heads, MLP 3072, LayerNorm eps 1e-6) attend with a bias
``-slope_h * distance`` between the tiles' grid cells (Euclidean, in cells; zero to and from
CLS; the standard ALiBi slopes for 12 heads) added to the logits. There is no learned position
embedding. After the final norm, an attentional pooler (one learned query, ``ln_q``/``ln_k``,
8-head attention over every token) gives the slide embedding; TITAN does not use its CLS token
as output.

Parameter names equal the public checkpoint's ``vision_encoder.*`` entries (``blocks.
modules_list.{i}``, ``patch_embed.0``, ``attn_pool``/``attn_pool_contrastive``, ``proj``), so a
``strict=True`` load works: the 128-query ``attn_pool`` and the zero-shot ``proj`` are in the
checkpoint but unused here (frozen, as every weight). The model card's own code builds a dense
grid from the coords and drops empty cells; here the tiles are already the tissue tiles and stay
one token each, which gives the same attention (the bias depends only on the cells, and the
pooler does not depend on token order).

ModalTune's TITAN variant puts adapters at ``[[0,1],[2,3],[4,5]]``: the default layout of a
6-layer encoder (three blocks of ``depth // 3`` layers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from modaltune.errors import InputError
from modaltune.models.frozen_encoder import SLIDE_ENCODER_PRESETS, EncoderConfig, FrozenSlideEncoder, SlideEncoderPreset

TITAN_HUB_ID = "MahmoodLab/TITAN"


@dataclass
class TitanConfig(EncoderConfig):
    """Shape of a TITAN slide encoder; the defaults are the public checkpoint's."""

    in_dim: int = 768  # CONCH v1.5 tile features
    dim: int = 768
    depth: int = 6
    heads: int = 12
    mlp_ratio: float = 4.0
    tile_size: int = 512  # level-0 px per grid cell: 512 at 20x, 1024 at 40x
    norm_eps: float = 1e-6
    pooler_heads: int = 8
    pooler_queries: int = 128  # the unused captioning pooler's queries (in the checkpoint)

    checkpoint_filename: ClassVar[str] = "model.safetensors"
    checkpoint_prefix: ClassVar[str] = "vision_encoder."  # the full checkpoint also holds the text tower

    def __post_init__(self) -> None:
        for key in ("in_dim", "dim", "depth", "heads", "tile_size", "pooler_heads", "pooler_queries"):
            if getattr(self, key) < 1:
                raise InputError(f"TitanConfig.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("heads", "pooler_heads"):
            if self.dim % getattr(self, key):
                raise InputError(f"TitanConfig.{key}={getattr(self, key)} must divide dim={self.dim}")

    def build(self) -> TitanSlideEncoder:
        return TitanSlideEncoder(self)

    @classmethod
    def titan(cls, **overrides: Any) -> TitanConfig:
        """The public TITAN: 6 layers, width 768, 12 heads, CONCH v1.5 features of 512-px tiles."""
        return replace(cls(), **overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> TitanConfig:
        """The same architecture at CPU size for tests and demos (six layers, so TITAN's
        adapter layout applies unchanged)."""
        return replace(cls(in_dim=32, dim=64, heads=4, pooler_heads=4, pooler_queries=4), **overrides)


SLIDE_ENCODER_PRESETS.register("titan")(SlideEncoderPreset(TitanConfig.titan, "CONCH v1.5", 768))
SLIDE_ENCODER_PRESETS.register("titan_tiny")(SlideEncoderPreset(TitanConfig.tiny))


def alibi_slopes(heads: int) -> torch.Tensor:
    """Press et al.'s per-head slopes: ``2^(-8k/n)`` for the largest power of two ``n <= heads``,
    then every other slope of ``2n`` heads for the rest (12 heads: 0.5 ... 2^-8, then 2^-0.5,
    2^-1.5, 2^-2.5, 2^-3.5)."""
    n = 2 ** math.floor(math.log2(heads))
    slopes = [2 ** (-8 * k / n) for k in range(1, n + 1)]
    slopes += [2 ** (-4 * k / n) for k in range(1, 2 * n + 1, 2)][: heads - n]
    return torch.tensor(slopes, dtype=torch.float64)


def grid_alibi_bias(coords: torch.Tensor, tile_size: int, heads: int) -> torch.Tensor:
    """``[B, heads, 1+N, 1+N]``: ``-slope_h * |cell_i - cell_j|`` between the tiles' grid cells
    (``floor((coords - min) / tile_size)``), zero in CLS's row and column."""
    cells = torch.div(coords - coords.amin(dim=1, keepdim=True), tile_size, rounding_mode="floor").float()
    # Euclidean in cells, [B, N, N]; without cdist's matrix-product shortcut, which loses the small
    # distances between far-off cells in float32 (so no float64 copy of the N x N matrix is needed).
    distance = torch.cdist(cells, cells, compute_mode="donot_use_mm_for_euclid_dist")
    bias = -alibi_slopes(heads).to(device=coords.device, dtype=distance.dtype)[None, :, None, None] * distance[:, None]
    return F.pad(bias, (1, 0, 1, 0))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TitanBlock(nn.Module):
    """Pre-norm ViT block whose attention takes the ALiBi bias: ``block(x, bias) -> x``."""

    def __init__(self, config: TitanConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.attn = _Attention(config.dim, config.heads)
        self.norm2 = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.mlp = _Mlp(config.dim, int(config.dim * config.mlp_ratio))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), bias)
        return x + self.mlp(self.norm2(x))


class _Blocks(nn.Module):
    """Holds the blocks as ``modules_list``: the checkpoint's ``blocks.modules_list.{i}`` keys."""

    def __init__(self, config: TitanConfig) -> None:
        super().__init__()
        self.modules_list = nn.ModuleList(TitanBlock(config) for _ in range(config.depth))


class AttentionalPooler(nn.Module):
    """Learned queries attending over the normalised tokens (CoCa's pooler)."""

    def __init__(self, dim: int, heads: int, queries: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(queries, dim) * 0.02)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_q = nn.LayerNorm(dim)
        self.ln_k = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        keys = self.ln_k(tokens)
        query = self.ln_q(self.query).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return self.attn(query, keys, keys, need_weights=False)[0]


class TitanSlideEncoder(FrozenSlideEncoder):
    """TITAN's ViT behind the ``FrozenSlideEncoder`` interface; its layers need the grid
    bias (``layer_context``) and its slide embedding is the pooler's (``pool``)."""

    config: TitanConfig

    def __init__(self, config: TitanConfig) -> None:
        super().__init__(config)
        self.cls_token = nn.Parameter(torch.randn(1, 1, config.dim) * 1e-6)
        self.patch_embed = nn.Sequential(nn.Linear(config.in_dim, config.dim), nn.GELU())
        self.blocks = _Blocks(config)
        self.norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.attn_pool = AttentionalPooler(config.dim, config.pooler_heads, config.pooler_queries)
        self.attn_pool_contrastive = AttentionalPooler(config.dim, config.pooler_heads, 1)
        self.proj = nn.Parameter(torch.randn(config.dim, config.dim) * config.dim**-0.5)  # zero-shot projection

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def layers(self) -> nn.ModuleList:
        return self.blocks.modules_list

    def embed_tiles(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(features.to(self.cls_token.dtype))
        return torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)

    def layer_context(self, coords: torch.Tensor) -> torch.Tensor:
        return grid_alibi_bias(coords, self.config.tile_size, self.config.heads)

    def apply_layer(self, layer: nn.Module, tokens: torch.Tensor, context: Any) -> torch.Tensor:
        return layer(tokens, context)

    def finalize(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(tokens)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.attn_pool_contrastive(self.finalize(tokens)).squeeze(1)

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [self.cls_token, *self.patch_embed.parameters()]

    def pooling_parameters(self) -> list[nn.Parameter]:
        """The final norm and the contrastive pooler ``pool`` reads (not the other pooler or ``proj``, which it does not)."""
        return [*self.norm.parameters(), *self.attn_pool_contrastive.parameters()]
