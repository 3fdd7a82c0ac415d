"""The one interface every video generator implements (the tiny built-in one and, later, real
diffusers backbones such as Wan, CogVideoX and LTX).

Training and sampling only ever see a backbone through these methods:

* ``encode_prompts(prompts)`` -> text conditioning (an opaque tensor the backbone understands);
* ``null_text(batch)`` -> the unconditional conditioning classifier-free guidance contrasts with;
* ``predict_velocity(x_t, sigma, text)`` -> the rectified-flow velocity ``eps - x0`` at noise
  level ``sigma`` (``x_t = (1 - sigma) * x0 + sigma * eps``), in the backbone's latent space;
* ``sample(prompts, seeds, ...)`` -> uint8 videos ``(B, F, H, W, C)`` at native resolution;
* ``lora_target_modules`` -> module names a LoRA adapter should wrap;
* ``save(path)`` / ``load(path)``.

A latent backbone overrides ``latent_shape`` and ``decode``; ``sample`` stays the same.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler


def keep_freed_memory(keep: bool = True) -> None:
    """Ask glibc to keep freed blocks of up to 32 MiB in the heap instead of returning them to the
    kernel. By default PyTorch's CPU tensors above a few MiB are mmap-ed and unmapped on every op,
    and each reuse pays page faults and zeroing: measured here, a 6-video sampling batch took 3.0 s
    with the default and 2.2 s with this (``benchmarks/sampling.py``). ``keep=False`` restores
    glibc's defaults, so that the resident set follows the memory in use (what a memory benchmark
    wants to see). No-op off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    libc.mallopt(m_mmap_threshold, 32 * 2**20 if keep else 128 * 2**10)  # 32 MiB: glibc's ceiling on 64-bit
    libc.mallopt(m_trim_threshold, 2**30 if keep else 128 * 2**10)


AUTOCAST_CHOICES = ("auto", "bf16", "fp32")


@functools.cache
def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype matmuls run in on ``device_type`` (None = plain fp32), from ``VPO_AUTOCAST``:

    * ``auto`` (default): bf16 on CUDA; on a CPU, bf16 only where oneDNN has bf16 kernels (AVX-512
      and newer, ``torch.ops.mkldnn._is_mkldnn_bf16_supported``). Measured on two 2-core machines
      of ours: with native bf16, matmuls ran at ~900 GFLOP/s vs ~60 in fp32; on an AVX2-only CPU
      bf16 is emulated and ran at ~1 GFLOP/s vs 120 in fp32 — there fp32 is 100x faster;
    * ``bf16`` / ``fp32``: forced.
    """
    choice = os.environ.get("VPO_AUTOCAST", "auto").strip().lower() or "auto"
    if choice not in AUTOCAST_CHOICES:
        raise ValueError(f"VPO_AUTOCAST={choice!r} is not valid; valid: {', '.join(AUTOCAST_CHOICES)}")
    if choice == "fp32" or device_type not in ("cpu", "cuda"):
        return None
    if choice == "bf16" or device_type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


keep_freed_memory()


@dataclass(frozen=True)
class VideoSpec:
    frames: int
    height: int
    width: int
    fps: int


class Backbone(torch.nn.Module):
    name: str = ""
    spec: VideoSpec
    lora_target_modules: tuple[str, ...] = ()
    # module that LoRA wraps and the optimiser trains; the frozen text encoder is not part of it
    transformer: torch.nn.Module

    # --- to implement -------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def null_text(self, batch: int) -> torch.Tensor:
        raise NotImplementedError

    def predict_velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one video's latent, without the batch dimension."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, ...) -> uint8 video (B, F, H, W, C)."""
        raise NotImplementedError

    def decode_differentiable(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> float video (B, F, H, W, C) in [0, 255], keeping gradients (ReFL)."""
        raise NotImplementedError

    def save(self, path) -> None:
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def autocast(self):
        """bf16 autocast where bf16 is fast (GPUs, CPUs with native bf16), else fp32: ``autocast_dtype``."""
        dtype = autocast_dtype(self.device.type)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def initial_noise(self, seeds: list[int]) -> torch.Tensor:
        """One generator per video, so a video depends on its own seed only, not on its batch."""
        noise = [torch.randn(self.latent_shape(), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        return torch.stack(noise).to(self.device)

    def make_scheduler(self, steps: int) -> FlowMatchEulerDiscreteScheduler:
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
        scheduler.set_timesteps(steps, device=self.device)
        return scheduler

    @torch.no_grad()
    def sample(
        self,
        prompts: list[str],
        seeds: list[int],
        steps: int = 20,
        guidance: float = 4.0,
        return_latents: bool = False,
    ):
        """Sample one video per (prompt, seed) as one batch -> uint8 (B, F, H, W, C).

        ``return_latents`` also returns the final latents (what DPO trains on: exact, unlike the
        uint8 video decoded from them)."""
        if not prompts:
            raise ValueError("sample() needs at least one prompt")
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; pass one seed per prompt")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        x = self.initial_noise(seeds)
        b = len(prompts)
        cond = self.encode_prompts(prompts)
        use_cfg = guidance != 1.0
        # CFG: conditional and unconditional halves share one forward pass (one batch of 2B)
        text_in = torch.cat([cond, self.null_text(b)]) if use_cfg else cond
        scheduler = self.make_scheduler(steps)
        with self.autocast():
            for t in scheduler.timesteps:
                sigma = (t / scheduler.config.num_train_timesteps).expand(b)
                if use_cfg:
                    v_cond, v_uncond = (
                        self.predict_velocity(torch.cat([x, x]), torch.cat([sigma, sigma]), text_in).float().chunk(2)
                    )
                    v = v_uncond + guidance * (v_cond - v_uncond)
                else:
                    v = self.predict_velocity(x, sigma, text_in).float()
                x = scheduler.step(v, t, x).prev_sample
        return (self.decode(x), x) if return_latents else self.decode(x)
