"""Flow-NRG (VideoAlign): reward guidance on noisy videos at inference, with a weight per dimension.

At every sampling step the velocity (after classifier-free guidance) becomes

    v <- v - w * sigma / (1 - sigma) * grad_{x_t} r(x_t, sigma, text),   r = sum_k w_k r_k      (4)

(``docs/reward-model.md``, Eq. 4) with the noise-conditioned reward model of
``vpo/reward_model/model.py`` reading ``x_t`` directly: no decoding, no denoised estimate. The sign:
our sampler integrates from sigma = 1 to 0 with ``x <- x + (sigma_next - sigma) v`` (a negative step,
``vpo/backbones/base.py: euler_step``), so subtracting the gradient from v moves x *up* the reward,
by ``(sigma - sigma_next) * w * sigma / (1 - sigma) * grad r``.

Deviation: sigma / (1 - sigma) is infinite at the first step (sigma = 1); it is capped at
``MAX_FACTOR`` (that of sigma = 0.9). The global weight ``w`` is folded into the per-dimension
weights. A weight of 0 everywhere leaves sampling exactly as it was.
"""

from __future__ import annotations

import torch

MAX_FACTOR = 9.0  # sigma / (1 - sigma) at sigma = 0.9


def parse_weights(text: str, heads: list[str]) -> dict[str, float]:
    """``"temporal=2,visual=1"`` -> {head: weight}; every head the text leaves out gets 0, and an
    empty text weighs every head 1."""
    if not text.strip():
        return dict.fromkeys(heads, 1.0)
    weights = dict.fromkeys(heads, 0.0)
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in heads:
            raise ValueError(
                f"--guide-weights: expected DIMENSION=WEIGHT with a dimension of {', '.join(heads)}, got {part!r}"
            )
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(f"--guide-weights: {name}'s weight must be a number, got {value!r}") from None
        if not torch.isfinite(torch.tensor(weights[name])):
            raise ValueError(f"--guide-weights: {name}'s weight must be finite, got {value!r}")
    return weights


class RewardGuide:
    """The ``guide`` a backbone's ``sample`` calls at every step: Eq. 4 with ``model``'s heads."""

    def __init__(self, model, weights: dict[str, float]):
        unknown = sorted(set(weights) - set(model.head_names))
        if unknown:
            raise ValueError(f"the reward model has no head {unknown[0]!r}; valid: {', '.join(model.head_names)}")
        self.model, self.weights = model, weights

    def reward(self, x_t: torch.Tensor, sigma: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """r = sum_k w_k r_k (B,)."""
        scores = self.model.score(x_t, sigma, prompts)
        return sum((w * scores[k] for k, w in self.weights.items()), torch.zeros(len(x_t), device=x_t.device))

    def __call__(self, x_t: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        with torch.enable_grad():
            x = x_t.detach().float().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.reward(x, sigma.float(), prompts).sum(), x)
        factor = (sigma.float() / (1 - sigma.float()).clamp_min(1e-6)).clamp(max=MAX_FACTOR)
        return v - factor.view(-1, *[1] * (v.ndim - 1)) * grad.to(v.dtype)  # Eq. 4
