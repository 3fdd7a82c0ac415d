"""What the real backbones (``wan``, ``cogvideox``, ``ltx``) share: loading a diffusers pipeline
from a local folder, the size check, prompt encoding with a per-prompt cache, VAE decoding to
uint8 frames and the memory options. Each backbone file adds what is its own: the velocity in the
interface's rectified-flow terms, the sampling schedule and the training noise level.

Latent layout inside the interface is always ``(B, C, F, H, W)`` in the VAE's *normalised* latent
space (what the transformer sees); a backbone that wants another layout (CogVideoX's ``(B, F, C,
H, W)``, LTX's packed tokens) converts inside ``predict_velocity``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import torch

from vpo.backbones.base import Backbone, VideoSpec
from vpo.backbones.real import REAL_BACKBONES, layout_problem, model_dir

ON, OFF, AUTO = "on", "off", "auto"
SWITCH_CHOICES = (AUTO, ON, OFF)
DTYPE_CHOICES = (AUTO, "bf16", "fp32")
TEXT_CACHE_LIMIT = 1024  # prompts kept encoded; a real text encoder (UMT5-XXL: 5.7B) is the slowest part per prompt
OFFLOAD_BELOW_GIB = 30  # "auto" CPU offload on GPUs smaller than this (a 24 GB card)


@dataclass(frozen=True)
class MemoryOptions:
    """The memory features of a real run, resolved for a device (``resolve``)."""

    dtype: torch.dtype = torch.float32
    gradient_checkpointing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False

    @classmethod
    def resolve(
        cls,
        device: str,
        weights_dtype: str = AUTO,
        gradient_checkpointing: str = AUTO,
        vae_tiling: str = AUTO,
        cpu_offload: str = AUTO,
    ) -> MemoryOptions:
        """``auto`` = bf16 weights, checkpointing and VAE tiling on CUDA, all off on a CPU (fp32:
        a CPU's tiny test pipelines need none of it); CPU offload when the GPU is small."""
        cuda = torch.device(device).type == "cuda"
        small = cuda and torch.cuda.get_device_properties(torch.device(device)).total_memory < OFFLOAD_BELOW_GIB * 2**30

        def switch(value: str, auto: bool) -> bool:
            if value not in SWITCH_CHOICES:
                raise ValueError(f"{value!r} is not one of {', '.join(SWITCH_CHOICES)}")
            return auto if value == AUTO else value == ON

        if weights_dtype not in DTYPE_CHOICES:
            raise ValueError(f"weights_dtype {weights_dtype!r} is not one of {', '.join(DTYPE_CHOICES)}")
        bf16 = weights_dtype == "bf16" or (weights_dtype == AUTO and cuda)
        return cls(
            torch.bfloat16 if bf16 else torch.float32,
            switch(gradient_checkpointing, cuda),
            switch(vae_tiling, cuda),
            switch(cpu_offload, small),
        )


class DiffusersVideoBackbone(Backbone):
    # in Wan, CogVideoX and LTX attention ``to_out`` is a ModuleList (linear, dropout): ``to_out.0``
    lora_target_modules = ("to_q", "to_k", "to_v", "to_out.0")
    text_len = 512  # tokens of text conditioning (capped by the tokenizer's model_max_length)
    # diffusers / transformers modules, typed loosely: their configs and methods are dynamic
    transformer: Any
    text_encoder: Any
    vae: Any
    pipe: Any
    tokenizer: Any

    def __init__(self, pipe, frames: int = 0, height: int = 0, width: int = 0, memory: MemoryOptions | None = None):
        super().__init__()
        info = REAL_BACKBONES[self.name]
        self.memory = memory or MemoryOptions()
        self.pipe = pipe
        self.transformer = pipe.transformer
        # the text encoder and the VAE are kept out of the module tree: ``.to(device)`` moves only the
        # transformer, and with CPU offload they stay on the CPU until needed (``_on``)
        object.__setattr__(self, "text_encoder", pipe.text_encoder)
        object.__setattr__(self, "vae", pipe.vae)
        self.tokenizer = pipe.tokenizer
        for module in (self.transformer, self.text_encoder, self.vae):
            module.requires_grad_(False).eval()
        if self.memory.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        if self.memory.vae_tiling:
            self.vae.enable_tiling()
        self.text_len = min(self.text_len, int(getattr(self.tokenizer, "model_max_length", self.text_len)))
        frames, height, width = frames or info.frames, height or info.height, width or info.width
        self.check_size(frames, height, width)
        self.spec = VideoSpec(frames, height, width, info.fps)
        self._text_cache: dict[str, torch.Tensor] = {}

    # --- loading -----------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path=None,
        device: str = "cpu",
        frames: int = 0,
        height: int = 0,
        width: int = 0,
        weights_dtype: str = AUTO,
        gradient_checkpointing: str = AUTO,
        vae_tiling: str = AUTO,
        cpu_offload: str = AUTO,
        **options,
    ) -> DiffusersVideoBackbone:
        """From a diffusers folder (``path``, else ``$VPO_MODELS_DIR/<name>``), never from a hub."""
        folder = model_dir(cls.name, path)
        problem = layout_problem(cls.name, folder)
        if problem:
            raise FileNotFoundError(problem)
        memory = MemoryOptions.resolve(device, weights_dtype, gradient_checkpointing, vae_tiling, cpu_offload)
        pipeline_class = getattr(importlib.import_module("diffusers"), REAL_BACKBONES[cls.name].pipeline)
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()  # loading bars would flood a worker's log
        transformers_logging.disable_progress_bar()
        try:
            pipe = pipeline_class.from_pretrained(str(folder), local_files_only=True, dtype=memory.dtype)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{folder} does not load as a {cls.name!r} backbone: {e}") from None
        pipe.set_progress_bar_config(disable=True)
        model = cls(pipe, frames, height, width, memory, **options)
        model.transformer.to(device)
        if not memory.cpu_offload:
            model.text_encoder.to(device)
            model.vae.to(device)
        return model

    # --- size --------------------------------------------------------------------------------
    def compression(self) -> tuple[int, int, int]:
        """(frames factor, pixel factor, patch): frames = k * factor + 1, height and width
        multiples of pixel factor * patch."""
        raise NotImplementedError

    def check_size(self, frames: int, height: int, width: int) -> None:
        t, s, p = self.compression()
        if frames < 1 or (frames - 1) % t:
            raise ValueError(f"{self.name}: frames must be {t} * k + 1 (the VAE compresses time by {t}), got {frames}")
        for what, value in (("height", height), ("width", width)):
            if value < s * p or value % (s * p):
                raise ValueError(
                    f"{self.name}: {what} must be a multiple of {s * p} (VAE {s} x patch {p}), got {value}"
                )

    def latent_shape(self) -> tuple[int, ...]:
        t, s, _ = self.compression()
        f, h, w = self.spec.frames, self.spec.height, self.spec.width
        return (self.latent_channels(), (f - 1) // t + 1, h // s, w // s)

    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    # --- conditioning ------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(B, text_len, D) text states, zero past each prompt's tokens (as Wan's pipeline pads;
        LTX reads its attention mask back from the zeros). Cached per prompt: online training
        re-encodes the same prompts every step."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            if len(self._text_cache) > TEXT_CACHE_LIMIT:
                self._text_cache.clear()
            tok = self.tokenizer(
                missing,
                padding="max_length",
                max_length=self.text_len,
                truncation=True,
                add_special_tokens=True,
                return_tensors="pt",
            )
            device = self.text_encoder.device
            with torch.no_grad():
                states = self.text_encoder(tok.input_ids.to(device), attention_mask=tok.attention_mask.to(device))[0]
            states = states.float() * tok.attention_mask.to(device).unsqueeze(-1)
            self._text_cache.update(zip(missing, states.cpu()))
        return torch.stack([self._text_cache[p] for p in prompts]).to(self.device)

    def null_text(self, batch: int) -> torch.Tensor:
        # the released pipelines' default negative prompt: the empty string
        return self.encode_prompts([""] * batch)

    # --- decoding ----------------------------------------------------------------------------
    def denormalise(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, F, H, W) -> what the VAE decodes."""
        raise NotImplementedError

    def vae_decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z, return_dict=False)[0]

    def decode_differentiable(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> float video (B, F, H, W, C) in [0, 255]; one video at a time (memory, and a
        video's pixels never depend on its batch)."""
        device = self.device
        if self.memory.cpu_offload:
            self.vae.to(device)
        try:
            videos = []
            for z in latents:
                z = self.denormalise(z[None].float()).to(device=device, dtype=self.vae.dtype)
                pixels = self.vae_decode(z).float()  # (1, 3, F, H, W) in [-1, 1]
                videos.append(((pixels.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 4, 1))
            return torch.cat(videos)
        finally:
            if self.memory.cpu_offload:
                self.vae.to("cpu")

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decode_differentiable(latents).round().to(torch.uint8).cpu()

    # --- noise level for training -------------------------------------------------------------
    @staticmethod
    def logit_normal(n: int, generator: torch.Generator) -> torch.Tensor:
        """u = sigmoid(N(0, 1)): SD3's logit-normal draw (Esser et al. 2024, Eq. 19), which
        flow_grpo's Wan training also uses before shifting."""
        return torch.sigmoid(torch.randn(n, generator=generator, dtype=torch.float64)).float()

    def save(self, path) -> None:
        raise ValueError(f"{self.name}: base weights are the diffusers folder; training saves LoRA adapters only")
