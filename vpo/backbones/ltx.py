"""``ltx``: LTX-Video through diffusers' ``LTXPipeline`` components (T5 text encoder,
``LTXVideoTransformer3DModel``, ``AutoencoderKLLTXVideo``).

LTX-Video is rectified flow (velocity ``eps - x0`` at timestep ``1000 * sigma``), like the
interface. Two things are its own:

* packed latents: its transformer takes tokens ``(B, F*H*W, C)`` plus the latent grid size and
  RoPE scales; the interface keeps ``(B, C, F, H, W)`` and packs inside ``predict_velocity``;
* a resolution-dependent shift: ``mu`` grows linearly with the latent sequence length (as its
  pipeline's ``calculate_shift``) and sigmas are shifted ``e^mu / (e^mu + 1/u - 1)`` (the
  scheduler's exponential time shift). Training draws logit-normal ``u`` into the same shift.

Latents are normalised with the VAE's ``latents_mean`` / ``latents_std`` and ``scaling_factor``.
LTX 0.9.1+ VAEs decode with timestep conditioning; this backbone decodes at its pipeline's default
``decode_timestep`` without the extra decode noise (so a video depends on its seed only).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline
from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

from vpo.backbones.diffusers_video import DiffusersVideoBackbone
from vpo.backbones.wan import shift_sigmas

TEXT_LEN = 128  # LTXPipeline's max_sequence_length
DECODE_TIMESTEP = 0.0  # LTXPipeline's default


class LTXBackbone(DiffusersVideoBackbone):
    name = "ltx"
    text_len = TEXT_LEN

    def __init__(self, pipe, frames=0, height=0, width=0, memory=None, flow_shift: float = 0.0):
        super().__init__(pipe, frames, height, width, memory)
        self.flow_shift = float(flow_shift)
        _, f, h, w = self.latent_shape()
        config = pipe.scheduler.config
        self.mu = calculate_shift(
            f * h * w,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )

    def compression(self):
        return (
            int(self.pipe.vae_temporal_compression_ratio),
            int(self.pipe.vae_spatial_compression_ratio),
            int(self.transformer.config.patch_size),
        )

    def predict_velocity(self, x_t, sigma, text):
        t, s, _ = self.compression()
        _, _, f, h, w = x_t.shape
        config = self.transformer.config
        packed = LTXPipeline._pack_latents(x_t, config.patch_size, config.patch_size_t)
        dtype = self.transformer.dtype
        mask = (text.abs().sum(-1) > 0).to(dtype)  # encode_prompts zeroes the padding
        out = self.denoiser()(
            hidden_states=packed.to(dtype),
            encoder_hidden_states=text.to(dtype),
            timestep=sigma.float() * 1000,
            encoder_attention_mask=mask,
            num_frames=f,
            height=h,
            width=w,
            rope_interpolation_scale=(t / self.spec.fps, s, s),
            return_dict=False,
        )[0]
        return LTXPipeline._unpack_latents(out, f, h, w, config.patch_size, config.patch_size_t)

    def make_scheduler(self, steps: int) -> FlowMatchEulerDiscreteScheduler:
        if self.flow_shift:  # a fixed shift instead of the resolution-dependent one
            scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=self.flow_shift)
            scheduler.set_timesteps(steps, device=self.device)
            return scheduler
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=self.mu, device=self.device)
        return scheduler

    def training_sigmas(self, n: int, generator: torch.Generator) -> torch.Tensor:
        u = self.logit_normal(n, generator)
        if self.flow_shift:
            return shift_sigmas(u, self.flow_shift)
        return math.exp(self.mu) / (math.exp(self.mu) + (1 / u.clamp_min(1e-6) - 1))

    def denormalise(self, latents):
        vae = self.vae
        return LTXPipeline._denormalize_latents(
            latents, vae.latents_mean.float(), vae.latents_std.float(), vae.config.scaling_factor
        )

    def vae_decode(self, z):
        timestep = None
        if self.vae.config.timestep_conditioning:
            timestep = torch.full((z.shape[0],), DECODE_TIMESTEP, device=z.device, dtype=z.dtype)
        return self.vae.decode(z, timestep, return_dict=False)[0]
