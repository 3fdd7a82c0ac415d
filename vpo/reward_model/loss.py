"""VideoAlign's Bradley–Terry-with-ties loss (Rao & Kupper, "Ties in paired-comparison
experiments: a generalization of the Bradley-Terry model", 1967; ``docs/reward-model.md``, Eq. 1-3).

With rewards r_a, r_b and a tie parameter theta > 1 (VideoAlign: theta = 5), the Rao–Kupper model
gives, for d = r_a - r_b,

    P(a > b)  = sigmoid(d - ln theta)                                   (1)
    P(b > a)  = sigmoid(-d - ln theta)                                  (2)
    P(a ~ b)  = (theta^2 - 1) * sigmoid(d - ln theta) * sigmoid(-d - ln theta)   (3)

and the loss is the negative log-likelihood of the observed outcome. A tie is its own outcome
(its probability peaks at d = 0), not half a win and half a loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

THETA = 5.0
A, B, TIE = 0, 1, 2  # outcome codes
OUTCOME = {"a": A, "b": B, "tie": TIE}


def bt_ties_loss(r_a: torch.Tensor, r_b: torch.Tensor, outcome: torch.Tensor, theta: float = THETA) -> torch.Tensor:
    """Mean negative log-likelihood of ``outcome`` (B,) (0: a won, 1: b won, 2: tie) under Eq. 1-3."""
    if not theta > 1:
        raise ValueError(f"theta must be > 1, got {theta}")
    log_theta = math.log(theta)
    d = r_a.float() - r_b.float()
    log_a = F.logsigmoid(d - log_theta)  # Eq. 1
    log_b = F.logsigmoid(-d - log_theta)  # Eq. 2
    log_tie = math.log(theta**2 - 1) + log_a + log_b  # Eq. 3
    outcome = outcome.to(d.device)
    log_p = torch.where(outcome == A, log_a, torch.where(outcome == B, log_b, log_tie))
    return -log_p.mean()
