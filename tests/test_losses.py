"""Losses against values computed by hand on tiny examples."""

from __future__ import annotations

import math

import pytest
import torch

from modaltune.losses import cosine_logits, discrete_time_nll, distillation_kl, risk_from_hazard_logits


def test_distillation_kl_matches_hand_computation() -> None:
    student = torch.tensor([[0.0, math.log(3.0)]])  # softmax: 1/4, 3/4
    teacher = torch.tensor([[0.0, 0.0]])  # softmax: 1/2, 1/2
    expected = 10 * (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75))
    assert distillation_kl(student, teacher).item() == pytest_approx(expected)
    assert distillation_kl(teacher, teacher).item() == pytest_approx(0.0)
    # Temperature: T^2 * KL of the softened distributions.
    soft = torch.tensor([[0.0, 2 * math.log(3.0)]])
    assert distillation_kl(soft, 2 * teacher, temperature=2.0).item() == pytest_approx(4 * expected)


def test_discrete_time_nll_matches_hand_computation() -> None:
    hazards = torch.tensor([[0.1, 0.2, 0.5], [0.3, 0.4, 0.9]])
    logits = torch.log(hazards / (1 - hazards))
    # Case 1 died in bin 1: -log(S(0)) - log(h1) = -log(0.9) - log(0.2)
    # Case 2 censored in bin 1: -log(S(1)) = -log(0.7 * 0.6)
    died = -math.log(0.9) - math.log(0.2)
    censored = -math.log(0.7 * 0.6)
    loss = discrete_time_nll(logits, torch.tensor([1, 1]), torch.tensor([1, 0]))
    assert loss.item() == pytest_approx((died + censored) / 2)
    weighted = discrete_time_nll(logits, torch.tensor([1, 1]), torch.tensor([1, 0]), alpha=0.4)
    assert weighted.item() == pytest_approx((0.6 * (died + censored) + 0.4 * died) / 2)


def test_risk_orders_by_hazard_and_cosine_logits_scale() -> None:
    low, high = torch.full((1, 4), -2.0), torch.full((1, 4), 2.0)
    assert risk_from_hazard_logits(high) > risk_from_hazard_logits(low)
    logits = cosine_logits(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 3.0]]), scale=5.0)
    assert torch.allclose(logits, torch.tensor([[5.0, 0.0]]))



def pytest_approx(value: float) -> object:
    return pytest.approx(value, rel=1e-5, abs=1e-6)
