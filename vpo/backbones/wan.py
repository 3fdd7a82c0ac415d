"""``wan``: Wan2.1 text-to-video (1.3B and 14B share the classes) through diffusers' ``WanPipeline``
components: UMT5 text encoder, ``WanTransformer3DModel``, ``AutoencoderKLWan`` and a shifted
flow-matching schedule.

Wan is trained as rectified flow already: ``x_t = (1 - sigma) x0 + sigma eps``, the transformer
predicts ``eps - x0`` at timestep ``1000 * sigma`` — the interface's terms, no conversion. Latents
are normalised per channel with the VAE's ``latents_mean`` / ``latents_std`` (what the transformer
was trained on) and decoded as ``x * std + mean``.

Flow shift: sampling sigmas are shifted ``s * u / (1 + (s - 1) u)`` (SD3, Esser et al. 2024,
Eq. 23). Diffusers' Wan docs use 3.0 for 480p and 5.0 for 720p; Wan's README suggests 8-12 for
the 1.3B model at 480p. The default here is 5.0 (a middle value; ``flow_shift`` overrides it).
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from vpo.backbones.diffusers_video import DiffusersVideoBackbone

DEFAULT_SHIFT = 5.0


def shift_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's time shift (Esser et al. 2024, Eq. 23), the one FlowMatchEulerDiscreteScheduler applies."""
    return shift * u / (1 + (shift - 1) * u)


class WanBackbone(DiffusersVideoBackbone):
    name = "wan"

    def __init__(self, pipe, frames=0, height=0, width=0, memory=None, flow_shift: float = 0.0):
        super().__init__(pipe, frames, height, width, memory)
        self.flow_shift = float(flow_shift or DEFAULT_SHIFT)
        stats = [torch.tensor(self.vae.config.latents_mean), torch.tensor(self.vae.config.latents_std)]
        self.latents_mean, self.latents_std = (t.view(1, -1, 1, 1, 1).float() for t in stats)

    def compression(self):
        vae = self.vae.config
        return vae.scale_factor_temporal, vae.scale_factor_spatial, int(self.transformer.config.patch_size[1])

    def predict_velocity(self, x_t, sigma, text):
        dtype = self.transformer.dtype
        return self.denoiser()(
            hidden_states=x_t.to(dtype),
            timestep=sigma.float() * 1000,
            encoder_hidden_states=text.to(dtype),
            return_dict=False,
        )[0]

    def make_scheduler(self, steps: int) -> FlowMatchEulerDiscreteScheduler:
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=self.flow_shift)
        scheduler.set_timesteps(steps, device=self.device)
        return scheduler

    def training_sigmas(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Logit-normal, then shifted like the sampling schedule (as flow_grpo trains Wan): the
        update sees the noise levels sampling visits."""
        return shift_sigmas(self.logit_normal(n, generator), self.flow_shift)

    def denormalise(self, latents):
        return latents * self.latents_std.to(latents.device) + self.latents_mean.to(latents.device)
