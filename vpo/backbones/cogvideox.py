"""``cogvideox``: CogVideoX 2B / 5B through diffusers' ``CogVideoXPipeline`` components (T5 text
encoder, ``CogVideoXTransformer3DModel``, ``AutoencoderKLCogVideoX``).

CogVideoX is *not* flow matching: it is v-prediction on a variance-preserving schedule,
``x = a x0 + s eps`` with ``a = sqrt(alphas_cumprod[t])``, ``s = sqrt(1 - alphas_cumprod[t])``,
and the transformer predicts ``v = a eps - s x0``. The interface speaks rectified flow, so this
backbone expresses it exactly in those terms:

* ``x_rf = x / (a + s)`` and ``sigma = s / (a + s)``: then ``x_rf = (1 - sigma) x0 + sigma eps``;
* from the model's v: ``x0_hat = a x - s v``, ``eps_hat = s x + a v`` (since ``a^2 + s^2 = 1``);
* the velocity is ``eps_hat - x0_hat``.

An Euler step in ``(x_rf, sigma)`` then lands on ``(1 - sigma') x0_hat + sigma' eps_hat``, which
is DDIM's deterministic update (eta = 0) divided by ``a' + s'``: the same sampler, to float
precision (``tests/test_real_backbones.py`` checks it against ``CogVideoXDDIMScheduler``). Given
sigma, ``a = (1 - sigma) / n`` and ``s = sigma / n`` with ``n = sqrt((1 - sigma)^2 + sigma^2)``;
the transformer's timestep is read off the 1000-step grid by interpolation. Training noise levels
are drawn from that grid (uniform t, as CogVideoX was trained).

The released scheduler config rescales the betas to zero terminal SNR, so ``t = 999`` is pure
noise (``sigma = 1``) and sampling starts from ``eps`` like every other backbone.
"""

from __future__ import annotations

import torch
from diffusers import CogVideoXDDIMScheduler, FlowMatchEulerDiscreteScheduler

from vpo.backbones import no_flow_shift
from vpo.backbones.diffusers_video import DiffusersVideoBackbone


def vp_coefficients(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, s) with a^2 + s^2 = 1 and s / (a + s) = sigma."""
    n = ((1 - sigma) ** 2 + sigma**2).sqrt()
    return (1 - sigma) / n, sigma / n


def rf_sigma_grid(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The rectified-flow sigma of every training timestep t = 0..T-1."""
    acp = alphas_cumprod.double()
    a, s = acp.sqrt(), (1 - acp).sqrt()
    return s / (a + s)


def interpolate(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear y(x) through increasing ``xs`` (torch has no ``interp``)."""
    x = x.to(xs.dtype).clamp(xs[0], xs[-1])
    i = torch.searchsorted(xs, x).clamp(1, len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0).clamp_min(torch.finfo(xs.dtype).tiny)


class CogVideoXBackbone(DiffusersVideoBackbone):
    name = "cogvideox"

    def __init__(self, pipe, frames=0, height=0, width=0, memory=None, flow_shift: float = 0.0):
        if flow_shift:
            raise ValueError(no_flow_shift(self.name))
        self.text_len = int(pipe.transformer.config.max_text_seq_length)  # 226: its positional table covers them
        super().__init__(pipe, frames, height, width, memory)
        self.ddim_config = dict(pipe.scheduler.config)
        acp = CogVideoXDDIMScheduler.from_config(self.ddim_config).alphas_cumprod
        self.sigma_grid = rf_sigma_grid(acp)  # increasing in t; float64

    def compression(self):
        return (
            int(self.vae.config.temporal_compression_ratio),
            2 ** (len(self.vae.config.block_out_channels) - 1),
            int(self.transformer.config.patch_size),
        )

    def timestep_of(self, sigma: torch.Tensor) -> torch.Tensor:
        """The (continuous) training timestep whose rectified-flow sigma is ``sigma``."""
        grid = self.sigma_grid.to(sigma.device)
        return interpolate(sigma, grid, torch.arange(len(grid), dtype=grid.dtype, device=sigma.device))

    def predict_velocity(self, x_t, sigma, text):
        sigma = sigma.to(torch.float64)
        a, s = (c.view(-1, 1, 1, 1, 1) for c in vp_coefficients(sigma))
        x = x_t.to(torch.float64) * (a + s)  # back to the VP latent the model was trained on
        dtype = self.transformer.dtype
        rotary = None
        if self.transformer.config.use_rotary_positional_embeddings:
            rotary = self.pipe._prepare_rotary_positional_embeddings(
                self.spec.height, self.spec.width, x.shape[2], x.device
            )
        v = self.denoiser()(
            hidden_states=x.permute(0, 2, 1, 3, 4).to(dtype),
            encoder_hidden_states=text.to(dtype),
            timestep=self.timestep_of(sigma).to(dtype if dtype == torch.float64 else torch.float32),
            image_rotary_emb=rotary,
            return_dict=False,
        )[0]
        v = v.permute(0, 2, 1, 3, 4).to(torch.float64)  # (B, F, C, H, W) -> (B, C, F, H, W)
        x0_hat, eps_hat = a * x - s * v, s * x + a * v
        velocity = eps_hat - x0_hat
        return velocity if x_t.dtype == torch.float64 else velocity.float()

    def ddim_sigmas(self, steps: int) -> torch.Tensor:
        """Rectified-flow sigmas of the DDIM timesteps of ``steps`` sampling steps, then 0 (float64)."""
        ddim = CogVideoXDDIMScheduler.from_config(self.ddim_config)
        ddim.set_timesteps(steps)
        return torch.cat([self.sigma_grid[ddim.timesteps.long()], torch.zeros(1, dtype=torch.float64)])

    def make_scheduler(self, steps: int) -> FlowMatchEulerDiscreteScheduler:
        """Euler on the DDIM timesteps: DDIM itself when ``steps`` divides 1000 (DDIM's next step is
        then the next listed timestep)."""
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
        scheduler.set_timesteps(sigmas=self.ddim_sigmas(steps)[:-1].tolist(), device=self.device)
        return scheduler

    def training_sigmas(self, n: int, generator: torch.Generator) -> torch.Tensor:
        t = torch.randint(0, len(self.sigma_grid), (n,), generator=generator)
        return self.sigma_grid[t].float()

    def denormalise(self, latents):
        return latents / self.vae.config.scaling_factor
