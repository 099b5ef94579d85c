"""Modality encoders: the batched per-pathway MLPs equal one MLP per pathway; token shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modaltune.models import MODALITY_ENCODERS, RnaPathwayEncoder, RnaSettings, TaskTokens, VectorEncoder

GROUP_SIZES = (3, 1, 5, 2, 7)


def _rna_encoder(**settings: int) -> RnaPathwayEncoder:
    """The RNA entry's encoder for ``GROUP_SIZES`` at width 32, with these of its settings."""
    encoder = MODALITY_ENCODERS["rna"](RnaSettings(**settings)).build(GROUP_SIZES, 32)
    assert isinstance(encoder, RnaPathwayEncoder)
    return encoder


def test_batched_pathway_mlps_equal_one_mlp_per_pathway():
    encoder = _rna_encoder(n_rna_tokens=3, rna_hidden=8).eval()
    mlps = encoder.pathway_mlps
    rna = torch.randn(4, sum(GROUP_SIZES))
    expected, start = [], 0
    for group, size in enumerate(GROUP_SIZES):
        genes = rna[:, start : start + size]
        hidden = F.selu(genes @ mlps.in_weight[start : start + size] + mlps.in_bias[group])
        expected.append(F.selu(hidden @ mlps.hidden_weight[group] + mlps.hidden_bias[group]))
        start += size
    torch.testing.assert_close(mlps(rna), torch.stack(expected, dim=1))


def test_pathway_mlps_have_exactly_the_parameters_of_separate_modules():
    hidden = 8
    encoder = _rna_encoder(rna_hidden=hidden)
    separate = sum((size + 1) * hidden + (hidden + 1) * hidden for size in GROUP_SIZES)
    assert sum(p.numel() for p in encoder.pathway_mlps.parameters()) == separate


def test_rna_encoder_output_and_input_checks():
    encoder = _rna_encoder(n_rna_tokens=3, rna_hidden=8)
    tokens = encoder(torch.randn(2, sum(GROUP_SIZES)))
    assert tokens.shape == (2, 3, 32)
    tokens.sum().backward()
    assert encoder.pathway_mlps.in_weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"expected RnaPathwayEncoder input \[B, 18\]"):
        encoder(torch.randn(2, 17))


def test_a_case_without_rna_gets_the_learned_missing_tokens():
    """A NaN row (the batcher's "no RNA row") is replaced by ``missing_tokens``; other rows are
    untouched, no NaN leaks into outputs or gradients, and the missing tokens learn."""
    encoder = _rna_encoder(n_rna_tokens=3, rna_hidden=8).eval()
    rna = torch.randn(3, sum(GROUP_SIZES))
    alone = encoder(rna[[0, 2]])
    rna[1] = float("nan")
    tokens = encoder(rna)
    assert torch.equal(tokens[1], encoder.missing_tokens.detach())
    torch.testing.assert_close(tokens[[0, 2]], alone)
    tokens.sum().backward()
    assert encoder.missing_tokens.grad is not None and encoder.missing_tokens.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)


def test_a_mutation_panel_without_a_row_gets_its_missing_token_and_clinical_has_none():
    mutations = VectorEncoder(8, dim=32).eval()
    panel = torch.bernoulli(torch.full((3, 8), 0.3))
    panel[2] = float("nan")  # not sequenced
    tokens = mutations(panel)
    assert tokens.shape == (3, 1, 32) and torch.equal(tokens[2], mutations.missing_tokens.detach())
    torch.testing.assert_close(tokens[:2], mutations(panel[:2]))
    clinical = VectorEncoder(5, dim=32, may_be_missing=False)
    assert clinical.missing_tokens is None and clinical(torch.randn(3, 5)).shape == (3, 1, 32)


def test_task_tokens():
    tasks = TaskTokens(3, dim=32)
    tokens = tasks(torch.tensor([0, 1, 2, 0]))
    assert tokens.shape == (4, 1, 32)
    assert torch.equal(tokens[0], tokens[3]) and not torch.equal(tokens[0], tokens[1])
    with pytest.raises(ValueError, match=r"task ids must be in \[0, 3\)"):
        tasks(torch.tensor([3]))
    with pytest.raises(ValueError, match="integer task ids"):
        tasks(torch.tensor([0.0]))
