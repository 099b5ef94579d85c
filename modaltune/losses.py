"""Training losses of both objectives.

* ``distill`` (the paper): temperature-scaled KL between the softmax of a text target and of
  the model's embedding over the feature dimensions.
* ``supervised`` (ours): scaled-cosine class logits against class-description embeddings with
  cross-entropy, and discrete-time survival with the censoring-aware negative log-likelihood
  (Zadeh & Schmid, 2020, as used by PORPOISE and SurvPath).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, scale: float = 10.0) -> torch.Tensor:
    """``scale * T^2 * KL(softmax(teacher/T) || softmax(student/T))``, averaged over the batch.

    ``student`` and ``teacher`` are (B, D); the paper uses T = 1 and scale = 10.
    """
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return scale * temperature**2 * kl


def cosine_logits(embedding: torch.Tensor, anchors: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """(B, C) logits: ``scale * cos(embedding_b, anchor_c)``."""
    return scale * F.normalize(embedding, dim=-1) @ F.normalize(anchors, dim=-1).T


def discrete_time_nll(
    hazard_logits: torch.Tensor, bins: torch.Tensor, events: torch.Tensor, alpha: float = 0.0, eps: float = 1e-7
) -> torch.Tensor:
    """Negative log-likelihood of discrete-time survival, averaged over the batch.

    ``hazard_logits`` (B, K) give h_k = P(death in bin k | alive at its start). A death in bin
    y contributes ``-log S(y-1) - log h_y``; a case censored in bin y contributes
    ``-log S(y)`` with S(k) = prod_{j<=k} (1 - h_j). ``alpha`` up-weights the uncensored
    term: ``(1 - alpha) * (censored + uncensored) + alpha * uncensored``.
    """
    hazards = torch.sigmoid(hazard_logits)
    survival = torch.cumprod(1 - hazards, dim=1)
    padded = torch.cat([torch.ones_like(survival[:, :1]), survival], dim=1)  # padded[:, k] = S(k-1)
    bins = bins.long().unsqueeze(1)
    events = events.float()
    survived_before = torch.gather(padded, 1, bins).squeeze(1).clamp(min=eps)
    hazard_at = torch.gather(hazards, 1, bins).squeeze(1).clamp(min=eps)
    survived_through = torch.gather(padded, 1, bins + 1).squeeze(1).clamp(min=eps)
    uncensored = -events * (torch.log(survived_before) + torch.log(hazard_at))
    censored = -(1 - events) * torch.log(survived_through)
    return ((1 - alpha) * (censored + uncensored) + alpha * uncensored).mean()


def risk_from_hazard_logits(hazard_logits: torch.Tensor) -> torch.Tensor:
    """Risk score (higher = shorter survival): minus the sum of the survival curve over bins."""
    return -torch.cumprod(1 - torch.sigmoid(hazard_logits), dim=1).sum(dim=1)
