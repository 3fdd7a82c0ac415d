"""The Flow-DPO loss (OnlineVPO Sec. 2.3 with Diffusion-DPO's form; ``docs/algorithm.md``, Eq. 2).

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
