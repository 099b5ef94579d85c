"""LongNet dilated attention in plain PyTorch (CPU and GPU, no flash-attn).

Ding et al., 2023, "LongNet: Scaling Transformers to 1,000,000,000 Tokens". The sequence is
cut into segments of length ``w``; inside a segment only every ``r``-th position takes part, and
the heads are split into ``r`` groups so that head group ``j`` sees the positions with offset
``j`` (mod ``r``). Each (segment length, dilation ratio) pair is one *branch*; a token's outputs
from the branches that cover it are mixed with weights proportional to each branch's softmax
normaliser, ``softmax_i(lse_i)``, so the result is attention over the union of the branches'
keys.

The semantics follow the torchscale ``DilatedAttention`` that Prov-GigaPath was trained with,
so a loaded checkpoint produces the same features:

* a branch whose segment is longer than the sequence uses the whole sequence as one segment;
* the sequence is zero-padded to a multiple of the segment, and a segment to a multiple of
  ``r``; the padded positions are **not masked**: they act as keys with ``k = v = 0`` (score 0)
  and count in the softmax normaliser, as in the reference;
* when the head count is not a multiple of ``r``, head group ``j`` holds heads
  ``[j*ceil(H/r), (j+1)*ceil(H/r))`` and the trailing offsets get no head;
* the mixing weights are computed without gradient (the reference detaches them too).

The reference concatenates padded segments before trimming, which misplaces outputs when a
segment length is not a multiple of its ratio and more than one segment fits the sequence
(Prov-GigaPath: ``w = 185363, r = 8`` for sequences longer than 185,363 tiles); here each
segment is trimmed first.

SDPA does not return the log-sum-exp, so it is recomputed under ``no_grad`` from ``q·kᵀ`` in
query chunks (bounded memory). That costs a ``q·kᵀ`` and a log-sum-exp pass over the scores per
branch, several times the fused attention itself; ``_attention_with_lse`` is the single seam
where a fused kernel that also returns the log-sum-exp can replace it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Upper bound on score elements materialised at once while recomputing the log-sum-exp.
_LSE_CHUNK_ELEMENTS = 1 << 25
# Log-normaliser of a (position, head) that a branch does not cover: finite, so a token no
# branch covers gets uniform weights over zero outputs (as in the reference) instead of NaN.
_UNCOVERED_LSE = torch.finfo(torch.float32).min


def longnet_segment_lengths(max_wsi_size: int, tile_size: int, n_branches: int) -> tuple[int, ...]:
    """Segment lengths as Prov-GigaPath derives them from the largest slide it expects.

    ``n_branches`` powers of two with exponents evenly spaced from ``log2(1024)`` to
    ``floor(log2(max_seq_len))``, where ``max_seq_len = (max_wsi_size // tile_size) ** 2``,
    truncated to integers. For 262,144 px and 256-px tiles: (1024, 5792, 32768, 185363, 1048576).
    """
    if n_branches < 1:
        raise ValueError(f"need at least one branch, got n_branches={n_branches}")
    max_seq_len = (max_wsi_size // tile_size) ** 2
    if max_seq_len < 1:
        raise ValueError(f"max_wsi_size={max_wsi_size} is smaller than one tile of {tile_size} px")
    low, high = math.log2(1024), float(int(math.log2(max_seq_len)))
    if n_branches == 1:
        return (int(2**low),)
    step = (high - low) / (n_branches - 1)
    return tuple(int(2 ** (low + i * step)) for i in range(n_branches))


def dilated_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segment_lengths: Sequence[int],
    dilation_ratios: Sequence[int],
) -> torch.Tensor:
    """Multi-branch dilated self-attention.

    Args:
        q, k, v: ``[B, L, H, D]``.
        segment_lengths, dilation_ratios: one entry per branch.

    Returns:
        ``[B, L, H, D]``, scaled by ``1/sqrt(D)`` like standard attention.
    """
    if len(segment_lengths) != len(dilation_ratios) or not segment_lengths:
        raise ValueError(
            f"need one dilation ratio per segment length, got {list(segment_lengths)} and {list(dilation_ratios)}"
        )
    length = q.shape[1]
    outs, lses = [], []
    for segment, ratio in zip(segment_lengths, dilation_ratios, strict=True):
        segment = min(segment, length)
        out, lse = _attention_with_lse(*(_to_sparse(t, segment, ratio) for t in (q, k, v)))
        outs.append(_to_dense(out, segment, ratio, length, 0.0))
        lses.append(_to_dense(lse.unsqueeze(-1), segment, ratio, length, _UNCOVERED_LSE))
    weights = torch.softmax(torch.stack(lses), dim=0)  # [branches, B, L, H, 1], no grad
    result = outs[0] * weights[0].to(outs[0].dtype)
    for out, weight in zip(outs[1:], weights[1:], strict=True):
        result = result + out * weight.to(out.dtype)
    return result


def _to_sparse(x: torch.Tensor, segment: int, ratio: int) -> torch.Tensor:
    """``[B, L, H, D]`` -> ``[B*n_segments, H, segment/ratio, D]``: each head keeps its offset."""
    batch, length, heads, dim = x.shape
    n_segments = -(-length // segment)
    per_group = -(-segment // ratio)  # positions per offset inside a segment
    heads_per_group = -(-heads // ratio)
    x = F.pad(x, (0, 0, 0, 0, 0, n_segments * segment - length))
    x = x.reshape(batch * n_segments, segment, heads, dim)
    x = F.pad(x, (0, 0, 0, heads_per_group * ratio - heads, 0, per_group * ratio - segment))
    # positions split as (per_group, offset), heads as (group, heads_per_group)
    x = x.reshape(batch * n_segments, per_group, ratio, ratio, heads_per_group, dim)
    x = x.diagonal(dim1=2, dim2=3)  # [B*n, per_group, heads_per_group, D, ratio]
    x = x.permute(0, 4, 2, 1, 3).reshape(batch * n_segments, ratio * heads_per_group, per_group, dim)
    return x[:, :heads]


def _to_dense(x: torch.Tensor, segment: int, ratio: int, length: int, fill: float) -> torch.Tensor:
    """Inverse of ``_to_sparse``; (position, head) pairs the branch does not cover get ``fill``."""
    batch_segments, heads, per_group, dim = x.shape
    heads_per_group = -(-heads // ratio)
    x = F.pad(x, (0, 0, 0, 0, 0, heads_per_group * ratio - heads), value=fill)
    x = x.reshape(batch_segments, ratio, heads_per_group, per_group, dim).permute(0, 3, 2, 4, 1)
    dense = x.new_full((batch_segments, per_group, ratio, ratio, heads_per_group, dim), fill)
    dense.diagonal(dim1=2, dim2=3).copy_(x)
    dense = dense.reshape(batch_segments, per_group * ratio, ratio * heads_per_group, dim)[:, :segment, :heads]
    n_segments = -(-length // segment)
    return dense.reshape(batch_segments // n_segments, n_segments * segment, heads, dim)[:, :length]


def _attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SDPA output (differentiable) and its log-sum-exp ``[b, H, Lq]`` (no gradient).

    The one place to swap in a fused kernel that returns the log-sum-exp alongside the output.
    """
    return F.scaled_dot_product_attention(q, k, v), _log_sum_exp(q, k)


@torch.no_grad()
def _log_sum_exp(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``logsumexp(q·kᵀ/sqrt(D))`` over keys, in at least float32, chunked over queries."""
    batch, heads, _, dim = q.shape
    dtype = torch.promote_types(q.dtype, torch.float32)
    chunk = max(1, _LSE_CHUNK_ELEMENTS // max(1, batch * heads * k.shape[2]))
    keys = k.to(dtype).transpose(-1, -2)
    parts = [torch.logsumexp((part.to(dtype) * dim**-0.5) @ keys, dim=-1) for part in q.split(chunk, dim=2)]
    return torch.cat(parts, dim=-1)


class DilatedSelfAttention(nn.Module):
    """torchscale's LongNet self-attention with sub-LN (Wang et al., 2022, "Foundation
    Transformers"): q/k/v projections, dilated attention, LayerNorm on the attention output
    (``inner_attn_ln``), output projection. Attribute names match Prov-GigaPath's checkpoint.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        segment_lengths: Sequence[int],
        dilation_ratios: Sequence[int],
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads={heads} must divide dim={dim}")
        self.heads = heads
        self.segment_lengths = tuple(segment_lengths)
        self.dilation_ratios = tuple(dilation_ratios)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.inner_attn_ln = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        shape = (batch, length, self.heads, dim // self.heads)
        q, k, v = (proj(x).reshape(shape) for proj in (self.q_proj, self.k_proj, self.v_proj))
        attn = dilated_attention(q, k, v, self.segment_lengths, self.dilation_ratios)
        return self.out_proj(self.inner_attn_ln(attn.reshape(batch, length, dim)))

    def extra_repr(self) -> str:
        return f"heads={self.heads}, segment_lengths={self.segment_lengths}, dilation_ratios={self.dilation_ratios}"
