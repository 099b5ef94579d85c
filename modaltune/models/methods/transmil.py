"""TransMIL (Shao et al., "TransMIL: Transformer based Correlated Multiple Instance Learning for
Whole Slide Image Classification", NeurIPS 2021), WSI-only or as late fusion ("-cat").

Tiles -> Linear + ReLU to ``width``; the tokens padded to a square count by repeating the first
ones; a CLS token; a Nyström-attention layer; PPEG (depthwise 7x7, 5x5 and 3x3 convolutions over
the square grid, added to the tokens); the remaining Nyström layers; LayerNorm; the CLS token is
the slide vector. Checked against szc19990412/TransMIL ``models/TransMIL.py`` and the attention it
imports, lucidrains/nystrom-attention (``NystromAttention``: heads 8 of width/8, width/2
landmarks, 6 pseudo-inverse iterations, a depthwise 33x1 convolution of the values added as a
residual, dropout 0.1). Nyström attention is Xiong et al., "Nyströmformer", AAAI 2021.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from modaltune.models.methods.base import (
    CASE_VECTOR_MODALITIES,
    MethodNetwork,
    MethodSettings,
    PublishedSize,
    registered,
)
from modaltune.models.methods.snn import CaseVectorSnn, SnnSettings
from modaltune.models.modality_encoders import IMAGE


def iterative_pinv(matrix: torch.Tensor, iterations: int) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of each ``[..., m, m]`` matrix by the iteration of
    Nyströmformer (eq. 16), from ``Z0 = A^T / (||A||_1 ||A||_inf)``.

    The norms are each matrix's own (the reference takes one maximum over the whole batch, so a
    case's output would depend on the other cases in its batch)."""
    magnitude = matrix.abs()
    scale = magnitude.sum(dim=-2).amax(dim=-1) * magnitude.sum(dim=-1).amax(dim=-1)
    z = matrix.transpose(-1, -2) / scale[..., None, None]
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    for _ in range(iterations):
        az = matrix @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


class NystromAttention(nn.Module):
    """Multi-head self-attention approximated with ``landmarks`` landmarks: softmax kernels
    between the queries, the landmarks (segment means of the queries and keys) and the keys,
    with the landmark kernel's pseudo-inverse in between; plus a depthwise convolution of the
    values along the sequence. The sequence is zero-padded at its front to a multiple of
    ``landmarks`` (as the reference, without a mask), and the padding dropped at the end."""

    def __init__(self, dim: int, heads: int, landmarks: int, pinv_iterations: int, residual_kernel: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.landmarks, self.pinv_iterations = heads, landmarks, pinv_iterations
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        self.value_conv = nn.Conv2d(
            heads, heads, (residual_kernel, 1), padding=(residual_kernel // 2, 0), groups=heads, bias=False
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, dim = tokens.shape
        pad = -length % self.landmarks
        padded = F.pad(tokens, (0, 0, pad, 0))
        total = length + pad
        q, k, v = self.qkv(padded).reshape(batch, total, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q = q * (dim // self.heads) ** -0.5
        segment = total // self.landmarks
        q_landmarks = q.reshape(batch, self.heads, self.landmarks, segment, -1).mean(dim=3)
        k_landmarks = k.reshape(batch, self.heads, self.landmarks, segment, -1).mean(dim=3)
        to_landmarks = (q @ k_landmarks.transpose(-1, -2)).softmax(dim=-1)
        among_landmarks = (q_landmarks @ k_landmarks.transpose(-1, -2)).softmax(dim=-1)
        from_landmarks = (q_landmarks @ k.transpose(-1, -2)).softmax(dim=-1)
        inverse = iterative_pinv(among_landmarks.float(), self.pinv_iterations).to(q.dtype)
        attended = (to_landmarks @ inverse) @ (from_landmarks @ v) + self.value_conv(v)
        return self.out(attended.transpose(1, 2).reshape(batch, total, dim))[:, pad:]


class NystromLayer(nn.Module):
    """Pre-norm residual Nyström attention (TransMIL's ``TransLayer``; no feed-forward)."""

    def __init__(self, dim: int, attention: NystromAttention) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = attention

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + self.attention(self.norm(tokens))


class PPEG(nn.Module):
    """Pyramid position encoding generator: the non-CLS tokens laid out on their square grid, plus
    depthwise 7x7, 5x5 and 3x3 convolutions of that grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, size, padding=size // 2, groups=dim) for size in (7, 5, 3))

    def forward(self, tokens: torch.Tensor, side: int) -> torch.Tensor:
        batch, _, dim = tokens.shape
        grid = tokens[:, 1:].transpose(1, 2).reshape(batch, dim, side, side)
        grid = grid + sum(conv(grid) for conv in self.convs)
        return torch.cat([tokens[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)


class TransMilSettings(MethodSettings):
    """TransMIL's sizes; ``landmarks`` None: ``width // 2``; ``depth``: Nyström layers (PPEG after
    the first); ``cat``: the SNN over the other modalities in "-cat"."""

    width: int = Field(default=512, ge=2)
    heads: int = Field(default=8, ge=1)
    depth: int = Field(default=2, ge=1)
    landmarks: int | None = Field(default=None, ge=1)
    pinv_iterations: int = Field(default=6, ge=1)
    residual_kernel: int = Field(default=33, ge=1)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    cat: SnnSettings = Field(default_factory=SnnSettings)

    @model_validator(mode="after")
    def _shapes_fit(self) -> TransMilSettings:
        if self.width % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide width ({self.width})")
        if self.residual_kernel % 2 == 0:
            raise ValueError(f"residual_kernel must be odd, got {self.residual_kernel}")
        return self


@registered
class TransMil(MethodNetwork):
    """TransMIL's CLS token as the slide vector; with other modalities ("-cat"), concatenated with
    ``CaseVectorSnn`` of their case vectors -> task heads. As in the paper, tiles take their grid
    places in input order (coords are not used)."""

    name = "transmil"
    consumes = CASE_VECTOR_MODALITIES | {IMAGE}
    requires = frozenset({IMAGE})
    Settings = TransMilSettings
    settings: TransMilSettings
    # TransMIL's sizes, 1024-d tile features, WSI-only (the paper's 2.67M): fc 1024*512+512 =
    # 524,800; CLS 512; per Nyström layer LayerNorm 1,024 + qkv 512*1536 + out 512*512+512 +
    # value conv 8*33 = 1,050,376 (two: 2,100,752); PPEG 512*(50+26+10) = 44,032; LayerNorm 1,024.
    published = PublishedSize(2_671_120, in_dim=1024)

    def build(self) -> int:
        settings = self.settings
        width = settings.width
        self.tiles = nn.Sequential(nn.Linear(self.in_dim, width), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, width))
        self.layers = nn.ModuleList(
            NystromLayer(
                width,
                NystromAttention(
                    width, settings.heads, settings.landmarks or width // 2, settings.pinv_iterations,
                    settings.residual_kernel, settings.dropout,
                ),
            )
            for _ in range(settings.depth)
        )
        self.position = PPEG(width)
        self.norm = nn.LayerNorm(width)
        self.others = CaseVectorSnn(self.modality_inputs, settings.cat) if self.modality_inputs else None
        return width + (self.others.width if self.others is not None else 0)

    def embed(self, features: torch.Tensor, coords: torch.Tensor, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        tokens = self.tiles(features)
        side = math.isqrt(tokens.shape[1] - 1) + 1  # ceil(sqrt(N))
        tokens = torch.cat([tokens, tokens[:, : side * side - tokens.shape[1]]], dim=1)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = self.position(self.layers[0](tokens), side)
        for layer in self.layers[1:]:
            tokens = layer(tokens)
        slide = self.norm(tokens)[:, 0]
        return slide if self.others is None else torch.cat([slide, self.others(inputs)], dim=1)
