"""``wan-i2v``: Wan2.1 image-to-video (the 14B 480P / 720P models) through diffusers'
``WanImageToVideoPipeline`` components: ``wan``'s text encoder, VAE and schedule, plus a CLIP
vision encoder, and a transformer that takes the first frame twice, as diffusers' pipeline feeds it:

* **image tokens**: the CLIP vision model's penultimate hidden states (``encoder_hidden_states_image``),
  projected by the transformer and attended by a separate image branch of every cross-attention
  (``add_k_proj`` / ``add_v_proj``);
* **condition latent**: the first frame followed by black frames, VAE-encoded and normalised like
  the latents, after a 4-channel mask (ones on the first latent frame); concatenated to ``x_t`` on
  channels (16 + 4 + 16 = 36 input channels).

The 512-token rule: diffusers' ``WanAttnProcessor`` splits its context into image and text tokens
by a hard-coded text length, ``image = context[:, :L - 512]``. The text states must therefore be
exactly 512 tokens; ``encode_prompts`` zero-pads them to ``WAN_TEXT_TOKENS`` whatever the
tokenizer's ``model_max_length`` (the test pipelines' is shorter), else the image branch would read
text and the text branch image tokens, silently.

The conditioning tensor (``Backbone.conditioning``) is one ``(B, N, D_text)`` tensor: the 512 text
tokens, then the CLIP states and the condition latent, each flattened and packed ``D_text`` values
a token (``pack`` / ``unpack``); ``predict_velocity`` unpacks them. Tokens appended after those
(issue 17's PhysEncoder, width ``D_text``) take the last places of the 512 text tokens (zero
padding for any prompt shorter than 512 - K tokens), so the split stays where diffusers expects it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from vpo.backbones.wan import WanBackbone

WAN_TEXT_TOKENS = 512  # diffusers' WanAttnProcessor: image_context_length = context length - 512


def pack(x: torch.Tensor, width: int) -> torch.Tensor:
    """(B, ...) -> (B, ceil(n / width), width): flattened, zero-padded at the end."""
    flat = x.flatten(1)
    tokens = math.ceil(flat.shape[1] / width)
    return torch.nn.functional.pad(flat, (0, tokens * width - flat.shape[1])).view(len(x), tokens, width)


def unpack(tokens: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``pack``'s inverse: (B, T, width) -> (B, *shape)."""
    return tokens.flatten(1)[:, : math.prod(shape)].view(len(tokens), *shape)


class WanI2VBackbone(WanBackbone):
    name = "wan-i2v"
    image_conditioned = True
    image_encoder: Any
    image_processor: Any

    def __init__(self, pipe, frames=0, height=0, width=0, memory=None, flow_shift: float = 0.0):
        super().__init__(pipe, frames, height, width, memory, flow_shift)
        if pipe.image_encoder is None or pipe.image_processor is None or self.transformer.config.image_dim is None:
            raise ValueError("wan-i2v needs a Wan2.1 I2V folder: image_encoder/, image_processor/ and image_dim")
        object.__setattr__(self, "image_encoder", pipe.image_encoder.requires_grad_(False).eval())
        self.image_processor = pipe.image_processor
        vision = self.image_encoder.config
        self.image_states_shape = ((vision.image_size // vision.patch_size) ** 2 + 1, vision.hidden_size)

    def latent_channels(self) -> int:
        return int(self.transformer.config.out_channels)  # in_channels also counts the condition's 20

    def condition_shape(self) -> tuple[int, ...]:
        c, f, h, w = self.latent_shape()
        return (c + self.vae.config.scale_factor_temporal, f, h, w)  # mask (4) + first-frame latent

    # --- conditioning ------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        text = super().encode_prompts(prompts)
        return torch.nn.functional.pad(text, (0, 0, 0, WAN_TEXT_TOKENS - text.shape[1]))  # the 512-token rule

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        width = self.text_encoder.config.d_model
        device = self.device
        # 1. CLIP vision states, as WanImageToVideoPipeline.encode_image
        self._on(self.image_encoder)
        clip_in = self.image_processor(images=list(np.asarray(images.cpu())), return_tensors="pt")
        states = self.image_encoder(
            pixel_values=clip_in.pixel_values.to(self.image_encoder.device, self.image_encoder.dtype),
            output_hidden_states=True,
        ).hidden_states[-2]
        # 2. the condition latent, as WanImageToVideoPipeline.prepare_latents: first frame + black
        self._on(self.vae)
        pixels = images.to(device).permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, H, W) in [-1, 1]
        video = torch.cat(
            [pixels[:, :, None], pixels.new_zeros(*pixels.shape[:2], self.spec.frames - 1, *pixels.shape[2:])], 2
        )
        z = torch.cat([self.vae.encode(v[None].to(self.vae.dtype)).latent_dist.mode() for v in video]).float()
        z = (z - self.latents_mean.to(z.device)) / self.latents_std.to(z.device)
        mask = torch.zeros(len(z), self.vae.config.scale_factor_temporal, *z.shape[2:], device=z.device)
        mask[:, :, 0] = 1  # the first latent frame is given (its 4 pixel frames are the one image)
        self._off()
        return torch.cat([pack(states.float().to(device), width), pack(torch.cat([mask, z], 1).to(device), width)], 1)

    def physencoder_features(self) -> tuple[torch.nn.Module, int, int]:
        """The PhysEncoder reads this backbone's own frozen CLIP vision model."""
        from vpo.backbones.physencoder import VisionFeatures

        processor = self.image_processor
        features = VisionFeatures(self.image_encoder, processor.image_mean, processor.image_std)
        return features, features.dim, int(self.text_encoder.config.d_model)

    def _on(self, module) -> None:
        """On the transformer's device for the encoding (``load`` leaves the CLIP encoder on the
        CPU; CPU offload keeps the VAE there too until needed)."""
        if module.device != self.device:
            module.to(self.device)

    def _off(self) -> None:
        if self.memory.cpu_offload:
            self.image_encoder.to("cpu")
            self.vae.to("cpu")

    def split_conditioning(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The conditioning -> (text states (B, 512, D), CLIP states, condition latent)."""
        width = cond.shape[2]
        n_states = math.ceil(math.prod(self.image_states_shape) / width)
        n_latent = math.ceil(math.prod(self.condition_shape()) / width)
        if cond.shape[1] < WAN_TEXT_TOKENS + n_states + n_latent:
            raise ValueError(
                f"wan-i2v's conditioning needs {WAN_TEXT_TOKENS} text + {n_states + n_latent} image tokens, "
                f"got {cond.shape[1]}: build it with conditioning(prompts, images)"
            )
        text = cond[:, :WAN_TEXT_TOKENS]
        rest = cond[:, WAN_TEXT_TOKENS:]
        extra = rest[:, n_states + n_latent :]
        if extra.shape[1]:  # appended tokens (PhysEncoder) take the text's last, padding places
            text = torch.cat([text[:, : WAN_TEXT_TOKENS - extra.shape[1]], extra], 1)
        states = unpack(rest[:, :n_states], self.image_states_shape)
        latent = unpack(rest[:, n_states : n_states + n_latent], self.condition_shape())
        return text, states, latent

    def predict_velocity(self, x_t, sigma, text):
        text, states, latent = self.split_conditioning(text)
        dtype = self.transformer.dtype
        return self.denoiser()(
            hidden_states=torch.cat([x_t, latent.to(x_t)], 1).to(dtype),
            timestep=sigma.float() * 1000,
            encoder_hidden_states=text.to(dtype),
            encoder_hidden_states_image=states.to(dtype),
            return_dict=False,
        )[0]
