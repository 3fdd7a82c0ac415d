"""The Flow-DPO loss (OnlineVPO Sec. 2.3 with Diffusion-DPO's form; ``docs/algorithm.md``, Eq. 2) and
the Flow-RWR loss (VideoAlign, ``docs/algorithm.md``, Eq. 8).

Winner and loser are noised with the *same* eps and the *same* sigma. With
``mse_m(x) = mean((v_m(x_t, sigma) - (eps - x))^2)`` over all elements of a video,

    L = -log sigmoid(-beta / 2 * [(mse_theta(w) - mse_ref(w)) - (mse_theta(l) - mse_ref(l))])

The bracket is negative when the policy moved towards the winner (relative to the reference)
more than towards the loser; ``implicit_acc`` is the share of pairs where it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vpo.train.keys import (
    DPO_IMPLICIT_ACC,
    DPO_LOSS,
    DPO_MSE_L,
    DPO_MSE_REF_L,
    DPO_MSE_REF_W,
    DPO_MSE_W,
    RWR_ESS,
    RWR_LOSS,
    RWR_MSE,
    RWR_WEIGHT_MAX,
)


def per_video_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,): mean squared error over every element of each video."""
    return ((pred.float() - target.float()) ** 2).flatten(1).mean(1)


def flow_dpo_loss(
    mse_w: torch.Tensor, mse_l: torch.Tensor, ref_mse_w: torch.Tensor, ref_mse_l: torch.Tensor, beta: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean loss over pairs and the metrics to log (``dpo/...``)."""
    bracket = (mse_w - ref_mse_w) - (mse_l - ref_mse_l)
    loss = -F.logsigmoid(-beta / 2 * bracket).mean()
    stats = {
        DPO_LOSS: loss.item(),
        DPO_IMPLICIT_ACC: (bracket < 0).float().mean().item(),
        DPO_MSE_W: mse_w.mean().item(),
        DPO_MSE_L: mse_l.mean().item(),
        DPO_MSE_REF_W: ref_mse_w.mean().item(),
        DPO_MSE_REF_L: ref_mse_l.mean().item(),
    }
    return loss, stats


def rwr_weights(rewards: torch.Tensor, temperature: float) -> torch.Tensor:
    """(P, N) rewards of each prompt's N candidates -> (P, N) weights softmax(r_i / tau) within each
    prompt's group (``docs/algorithm.md``, Eq. 8). Constants: no gradient flows into the rewards."""
    return torch.softmax(rewards.detach().float() / temperature, dim=1)


def flow_rwr_loss(
    mse: torch.Tensor, rewards: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Flow-RWR (VideoAlign, "Improving Video Generation with Human Feedback", Sec. "Flow-RWR"; online,
    with the weights normalised within each prompt's group as Flow-GRPO's appendix does):

        L = (1/P) sum_p sum_i w_pi * mse_theta(x0_pi),    w_p = softmax(r_p / tau)

    with ``mse`` (P, N) the per-video flow-matching error mean((v_theta(x_sigma) - (eps - x0))^2) of
    Eq. 1b. Equal rewards give w = 1/N: the plain flow-matching loss on the candidates."""
    w = rwr_weights(rewards, temperature).to(mse.device)
    loss = (w * mse).sum(1).mean()
    stats = {
        RWR_LOSS: loss.item(),
        RWR_MSE: mse.mean().item(),
        RWR_WEIGHT_MAX: w.max(1).values.mean().item(),
        RWR_ESS: (1 / (w**2).sum(1)).mean().item(),
    }
    return loss, stats
