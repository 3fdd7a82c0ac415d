"""``tiny-i2v``: the ``tiny`` backbone conditioned on a clean first frame (image-to-video), for the
physics world of issue 17 (``vpo/data/physics.py``).

Two ways the first frame enters, after Wan2.1 I2V's (whose condition latent holds the clean first
frame and a mask, concatenated to the noisy latent on channels):

1. **What the network sees**: the clean frame, repeated over time, is patchified like the video
   and embedded into every token by a second patch embedding (``SpaceTimeTransformer.image_embed``,
   zero-initialised, so that a model made from tiny's weights starts as exactly tiny). Every token
   thus knows what its place looked like at t = 0: the floor, the ramp, the object's colour (= its
   material).
2. **Frame 0 itself is known**: its velocity is the exact one of the straight path to the given
   frame, ``v_0 = (x_t[0] - image) / sigma`` (= ``eps - image`` on ``x_t = (1 - sigma) image +
   sigma eps``), not a prediction. An Euler step keeps frame 0 on that path, and the last step
   (sigma -> 0) lands on the image: the sample's frame 0 *is* the given frame (up to the uint8
   rounding of decoding). No parameter sees a gradient from frame 0.

The conditioning tensor (``Backbone.conditioning``) is ``[text (TEXT_TOKENS) | image (IMAGE_TOKENS)
| extra (K)]`` tokens of width ``TEXT_DIM``: the image's raw pixels packed 384 values a token (a 32 x
32 RGB frame is 8 tokens), and any tokens appended after them (issue 17's PhysEncoder) are read by
a cross-attention of their own, less what zero tokens give, so that a fresh PhysEncoder (zero
tokens) changes nothing (``tiny.SpaceTimeBlock``). Classifier-free guidance's null half zeroes the
text and keeps the image and the PhysEncoder's tokens.

Weights: tiny's, fine-tuned on physics-world scenes by ``vpo pretrain --backbone tiny-i2v``
(``docs/physics.md``: the run, its loss curve and what the model does on held-out scenes).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from vpo.backbones.tiny import TEXT_DIM, TEXT_TOKENS, WEIGHTS, MiniLM, TinyBackbone, TinyConfig

I2V_WEIGHTS = Path(__file__).parent / "weights" / "tiny-i2v.safetensors"
MIN_SIGMA = 1e-4  # frame 0's exact velocity divides by sigma; the sampler never goes this low


class TinyI2VBackbone(TinyBackbone):
    name = "tiny-i2v"
    image_conditioned = True

    def __init__(self, config: TinyConfig | None = None, text_encoder: MiniLM | None = None):
        config = config or TinyConfig(first_frame=True)
        if not config.first_frame:
            raise ValueError("tiny-i2v needs TinyConfig(first_frame=True)")
        super().__init__(config, text_encoder)

    @classmethod
    def from_tiny(cls, path=None, text_encoder: MiniLM | None = None) -> TinyI2VBackbone:
        """tiny-i2v with tiny's weights (``path``, default the shipped ones) and a zero image
        embedding: samples exactly as tiny does, except frame 0 (what fine-tuning starts from)."""
        tiny = TinyBackbone.load(path or WEIGHTS, text_encoder)
        model = cls(dataclasses.replace(tiny.config, first_frame=True), tiny.text_encoder)
        missing, unexpected = model.transformer.load_state_dict(tiny.transformer.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("image_embed.") for k in missing), (missing, unexpected)
        return model

    @property
    def image_tokens(self) -> int:
        c = self.config
        return math.ceil(3 * c.height * c.width / TEXT_DIM)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> (B, IMAGE_TOKENS, TEXT_DIM): pixels in [-1, 1], channel-first,
        packed 384 a token (zero-padded where they do not fill the last one)."""
        pixels = images.to(self.device).permute(0, 3, 1, 2).float().flatten(1) / 127.5 - 1
        pad = self.image_tokens * TEXT_DIM - pixels.shape[1]
        return torch.nn.functional.pad(pixels, (0, pad)).view(len(images), self.image_tokens, TEXT_DIM)

    def split_conditioning(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The conditioning -> (text tokens, first frame (B, 3, H, W) in [-1, 1], the tokens
        appended after the image's (PhysEncoder; None if there are none))."""
        c, m = self.config, self.image_tokens
        if cond.shape[1] < TEXT_TOKENS + m:
            raise ValueError(
                f"tiny-i2v's conditioning needs {TEXT_TOKENS} text + {m} image tokens, got {cond.shape[1]}: "
                "build it with conditioning(prompts, images)"
            )
        image = cond[:, TEXT_TOKENS : TEXT_TOKENS + m].flatten(1)[:, : 3 * c.height * c.width].float()
        extra = cond[:, TEXT_TOKENS + m :]
        return cond[:, :TEXT_TOKENS], image.view(-1, 3, c.height, c.width), extra if extra.shape[1] else None

    def predict_velocity(self, x_t, sigma, text):
        context, frame, extra = self.split_conditioning(text)
        c_in, c_skip, c_out = self.preconditioning(sigma)
        out = self.denoiser()(x_t * c_in, sigma, context, first_frame=frame, extra=extra)
        v = c_skip * x_t + c_out * out.float()
        # frame 0 is given: its exact velocity on the straight path to it (module docstring, 2.)
        s = sigma.float().view(-1, 1, 1, 1).clamp_min(MIN_SIGMA)
        v0 = (x_t[:, :, 0].float() - frame) / s
        return torch.cat([v0[:, :, None], v[:, :, 1:]], 2)

    def physencoder_features(self) -> tuple[torch.nn.Module, int, int]:
        from vpo.backbones.physencoder import TinyFeatures

        features = TinyFeatures(self)
        return features, features.dim, TEXT_DIM

    @classmethod
    def load(cls, path=None, text_encoder: MiniLM | None = None) -> TinyI2VBackbone:
        model = super().load(path or I2V_WEIGHTS, text_encoder)
        assert isinstance(model, TinyI2VBackbone)
        return model
