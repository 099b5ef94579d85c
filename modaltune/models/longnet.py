"""LongNet encoder layers as torchscale builds them for Prov-GigaPath.

Pre-LN layers with sub-LN (Wang et al., 2022, "Foundation Transformers"): a LayerNorm inside
the attention (before ``out_proj``) and inside the FFN (before ``fc2``). Attribute names
(``self_attn``, ``self_attn_layer_norm``, ``ffn.fc1``/``fc2``/``ffn_layernorm``,
``final_layer_norm``, ``layers``, ``layer_norm``) are the checkpoint's key names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from modaltune.models.dilated_attention import DilatedSelfAttention
from modaltune.models.drop_path import DropPath


class FeedForward(nn.Module):
    """``fc1 -> GELU -> LayerNorm -> fc2 -> dropout``; GELU in float32 as in torchscale."""

    def __init__(self, dim: int, hidden: int, dropout: float, layer_norm_eps: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.ffn_layernorm = nn.LayerNorm(hidden, eps=layer_norm_eps)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(x)
        hidden = F.gelu(hidden.float()).type_as(hidden)
        return self.dropout(self.fc2(self.ffn_layernorm(hidden)))


class LongNetLayer(nn.Module):
    """One pre-LN transformer layer with dilated self-attention; ``layer(x) -> x``."""

    def __init__(
        self,
        dim: int,
        heads: int,
        ffn_dim: int,
        segment_lengths: Sequence[int],
        dilation_ratios: Sequence[int],
        dropout: float = 0.0,
        drop_path: float = 0.0,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.self_attn = DilatedSelfAttention(dim, heads, segment_lengths, dilation_ratios, layer_norm_eps)
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.ffn = FeedForward(dim, ffn_dim, dropout, layer_norm_eps)
        self.final_layer_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.dropout(self.self_attn(self.self_attn_layer_norm(x))))
        return x + self.drop_path(self.ffn(self.final_layer_norm(x)))


class LongNetEncoder(nn.Module):
    """The layer stack and its output LayerNorm; the slide encoder drives them one by one so
    adapters can run between layers, hence no ``forward`` here."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        ffn_dim: int,
        segment_lengths: Sequence[int],
        dilation_ratios: Sequence[int],
        dropout: float = 0.0,
        drop_path_rate: float = 0.0,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        # stochastic depth grows linearly with depth, as in torchscale
        rates = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.layers = nn.ModuleList(
            LongNetLayer(dim, heads, ffn_dim, segment_lengths, dilation_ratios, dropout, rate, layer_norm_eps)
            for rate in rates
        )
        self.layer_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
