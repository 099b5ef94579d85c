"""Dilated attention: equals dense attention in the trivial case and a readable loop reference
of LongNet/torchscale semantics (zero-padded keys, head groups, log-sum-exp mixing) otherwise."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from modaltune.models import DilatedSelfAttention, dilated_attention, longnet_segment_lengths


def naive_dilated_attention(q, k, v, segment_lengths, dilation_ratios):
    """Loop reference. For every branch, batch item, head and segment: the head's group holds
    the segment slots with offset ``head // ceil(H/r)`` (mod r), over the segment padded to a
    multiple of r; slots past the sequence or the segment are zero keys (score 0, value 0)."""
    batch, length, heads, dim = q.shape
    scale = dim**-0.5
    n_branches = len(segment_lengths)
    outs = torch.zeros(n_branches, batch, length, heads, dim, dtype=q.dtype)
    lses = torch.full((n_branches, batch, length, heads), -math.inf, dtype=q.dtype)
    for i, (segment, ratio) in enumerate(zip(segment_lengths, dilation_ratios, strict=True)):
        segment = min(segment, length)
        padded_segment = math.ceil(segment / ratio) * ratio
        heads_per_group = math.ceil(heads / ratio)
        for b in range(batch):
            for h in range(heads):
                offset = h // heads_per_group
                for start in range(0, length, segment):
                    slots = range(offset, padded_segment, ratio)
                    real = [start + s for s in slots if s < segment and start + s < length]
                    n_zero_keys = len(slots) - len(real)
                    keys, values = k[b, real, h], v[b, real, h]
                    for p in real:
                        scores = torch.cat([keys @ q[b, p, h] * scale, torch.zeros(n_zero_keys, dtype=q.dtype)])
                        probs = torch.softmax(scores, dim=0)[: len(real)]
                        outs[i, b, p, h] = probs @ values
                        lses[i, b, p, h] = torch.logsumexp(scores, dim=0)
    weights = torch.softmax(lses, dim=0).nan_to_num(0.0)
    return (weights.unsqueeze(-1) * outs).sum(0)


def _qkv(batch, length, heads, dim, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, length, heads, dim, generator=gen, dtype=dtype) for _ in range(3))


@pytest.mark.parametrize("segment", [37, 64, 10**6])
def test_one_segment_covering_the_sequence_with_ratio_one_is_dense_attention(segment):
    q, k, v = _qkv(2, 37, 4, 8)
    expected = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    torch.testing.assert_close(dilated_attention(q, k, v, [segment], [1]), expected)


@pytest.mark.parametrize(
    ("length", "heads", "segments", "ratios"),
    [
        (37, 4, [8, 16, 32], [1, 2, 4]),  # several segments, lengths not multiples of segments
        (64, 4, [8, 16, 32], [1, 2, 4]),  # exact multiples
        (29, 4, [5, 12], [1, 3]),  # heads not divisible by the ratio, segment not by the ratio
        (23, 2, [6, 20], [1, 4]),  # more offsets than heads: some offsets get no head
        (7, 4, [16, 32], [2, 4]),  # sequence shorter than every segment
        (40, 16, [16, 24, 40, 48, 64], [1, 2, 4, 8, 16]),  # GigaPath's ratios and head count
    ],
)
def test_matches_loop_reference(length, heads, segments, ratios):
    q, k, v = _qkv(2, length, heads, 4, seed=length)
    torch.testing.assert_close(
        dilated_attention(q, k, v, segments, ratios), naive_dilated_attention(q, k, v, segments, ratios)
    )


def test_batch_items_are_independent_and_gradients_flow():
    q, k, v = (t.float().requires_grad_() for t in _qkv(3, 33, 4, 8))
    out = dilated_attention(q, k, v, [8, 16], [1, 2])
    alone = dilated_attention(q[1:2], k[1:2], v[1:2], [8, 16], [1, 2])
    torch.testing.assert_close(out[1:2], alone)
    out.square().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_gigapath_segment_lengths_from_max_slide_size():
    # as printed by Prov-GigaPath's demo notebook: linspace(log2 1024, log2 1024^2, 5) as powers of 2
    assert longnet_segment_lengths(262144, 256, 5) == (1024, 5792, 32768, 185363, 1048576)
    assert longnet_segment_lengths(262144, 256, 1) == (1024,)
    with pytest.raises(ValueError, match="smaller than one tile"):
        longnet_segment_lengths(100, 256, 3)


def test_self_attention_module_shapes_and_rejects_bad_heads():
    attention = DilatedSelfAttention(32, 4, [8, 16], [1, 2])
    assert attention(torch.randn(2, 19, 32)).shape == (2, 19, 32)
    with pytest.raises(ValueError, match="heads=5 must divide dim=32"):
        DilatedSelfAttention(32, 5, [8], [1])
