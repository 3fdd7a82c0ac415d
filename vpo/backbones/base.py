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

Image-to-video (``image_conditioned = True``: ``tiny-i2v``, ``wan-i2v``) adds one optional
argument, ``images`` (uint8 first frames ``(B, H, W, C)``), to ``conditioning``,
``guidance_text`` (whose unconditional half is the null text with the same images) and the
``sample*`` methods. The conditioning stays one
tensor ``(B, N, D)``: the text tokens of ``encode_prompts``, then the image's tokens
(``encode_images``), so everything that handles a text tensor (batching, CFG's 2B stack, DPO's
repeats) handles an image-conditioned one, and more tokens computed from the first frame (issue 17's
PhysEncoder) can be appended after them. Classifier-free guidance drops the text only: the
unconditional half keeps the image (as Wan2.1 I2V does). A T2V backbone refuses an image and an
I2V backbone refuses its absence, each with a ValueError; T2V callers that use ``encode_prompts`` /
``null_text`` directly are unchanged.

A latent backbone overrides ``latent_shape`` and ``decode``; ``sample`` stays the same.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from vpo.backbones import SAMPLERS

if TYPE_CHECKING:
    from vpo.backbones.physencoder import PhysEncoder

log = logging.getLogger(__name__)


def keep_freed_memory(keep: bool = True) -> None:
    """Ask glibc to keep freed blocks of up to 32 MiB in the heap instead of returning them to the
    kernel. By default PyTorch's CPU tensors above a few MiB are mmap-ed and unmapped on every op,
    and each reuse pays page faults and zeroing, which made a sampling batch slower than sampling
    one video at a time (measured in ``docs/tiny-backbone.md``). ``keep=False`` restores
    glibc's defaults, so that the resident set follows the memory in use (what a memory benchmark
    wants to see). No-op off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    libc.mallopt(m_mmap_threshold, 32 * 2**20 if keep else 128 * 2**10)  # 32 MiB: glibc's ceiling on 64-bit
    libc.mallopt(m_trim_threshold, 2**30 if keep else 128 * 2**10)


_TRAINING_ARITHMETIC = contextvars.ContextVar("training_arithmetic", default=False)


@contextlib.contextmanager
def training_arithmetic() -> Iterator[None]:
    """Forwards inside compute as they do with gradients on, though gradients are off. A backbone
    may take shortcuts outside autograd that are exact in arithmetic but round differently (``tiny``
    folds LoRA adapters into their weights and runs prepacked kernels: ``vpo/backbones/tiny.py``).
    A DPO loss subtracts the reference's errors from the policy's; computed the same way, the two
    are equal to the bit while the policy equals the reference (the loss is log 2), where in bf16 the
    shortcuts would leave rounding noise in the difference."""
    token = _TRAINING_ARITHMETIC.set(True)
    try:
        yield
    finally:
        _TRAINING_ARITHMETIC.reset(token)


def sampling_shortcuts() -> bool:
    """Whether a forward may take the shortcuts ``training_arithmetic`` describes: outside autograd
    and outside that block (sampling, held-out videos, evaluation). Inside a compiled forward: yes,
    since only sampling is compiled (``Backbone.denoiser``), and dynamo cannot trace a ContextVar
    (it would split the graph at every layer)."""
    if torch.compiler.is_compiling():
        return True
    return not torch.is_grad_enabled() and not _TRAINING_ARITHMETIC.get()


AUTOCAST_CHOICES = ("auto", "bf16", "fp32")


@functools.cache
def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype matmuls run in on ``device_type`` (None = plain fp32), from ``VPO_AUTOCAST``:

    * ``auto`` (default): bf16 on CUDA; on a CPU, bf16 only where oneDNN has bf16 kernels (AVX-512
      and newer, ``torch.ops.mkldnn._is_mkldnn_bf16_supported``): elsewhere bf16 is emulated and
      far slower than fp32 (measured in ``docs/tiny-backbone.md``);
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


COMPILE_CHOICES = ("off", "on")


@functools.cache
def compile_sampling() -> bool:
    """Whether sampling runs the transformer through ``torch.compile`` (inductor), from ``VPO_COMPILE``:
    ``off`` (default) or ``on``. Outside autograd only (``sampling_shortcuts``: candidates, held-out
    videos, evaluations); training's forwards stay eager. It fuses the element-wise work between the
    matmuls (layer norms, adaLN, GELU, residual adds, casts), which is most of what is left of the tiny
    backbone's forward on a CPU. The cost: a compile on the first call for each batch size in each
    process, much shorter where inductor's disk cache has its kernels (``compile_cache_dir``); each
    is logged. What it buys and costs: ``docs/tiny-backbone.md``, "torch.compile for sampling"."""
    choice = os.environ.get("VPO_COMPILE", "off").strip().lower() or "off"
    if choice not in COMPILE_CHOICES:
        raise ValueError(f"VPO_COMPILE={choice!r} is not valid; valid: {', '.join(COMPILE_CHOICES)}")
    return choice == "on"


def compile_cache_dir() -> str:
    """Where inductor keeps its compiled kernels for the next process: ``TORCHINDUCTOR_CACHE_DIR``,
    by default ``/tmp/torchinductor_<user>`` (torch's), which a worker's later tasks find until the
    machine reboots; point it at a lasting volume to keep it longer."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return cache_dir()


class CompiledForward:
    """A module's ``torch.compile``'d forward for sampling, which logs what each first call costs.

    One graph per input shape (``dynamic=False``: sampling meets a few batch sizes, 2 N with CFG; a
    dynamic-shape graph was not measured). The parameters are the graph's inputs, not constants (no
    inductor "freezing"), so an optimiser step or a loaded checkpoint is seen on the next call;
    changing the module's structure (attaching a LoRA adapter) recompiles."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.compiled = torch.compile(module, dynamic=False)
        self.shapes: set[tuple] = set()

    def __call__(self, *args, **kwargs):
        shapes = tuple(tuple(a.shape) for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
        if shapes in self.shapes:
            return self.compiled(*args, **kwargs)
        start = time.perf_counter()
        out = self.compiled(*args, **kwargs)
        self.shapes.add(shapes)
        log.warning(
            "VPO_COMPILE=on: the first sampling forward of %s on inputs %s took %.1f s, its compile included "
            "(inductor's cache: %s)",
            type(self.module).__name__,
            ", ".join("x".join(map(str, s)) for s in shapes),
            time.perf_counter() - start,
            compile_cache_dir(),
        )
        return out


keep_freed_memory()


def check_sampler(sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is not valid; valid: {', '.join(SAMPLERS)}")


# (x_t, sigma, velocity, prompts) -> velocity: a change to each sampling step's velocity
Guide = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, list[str]], torch.Tensor]


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
    # image-to-video: ``sample`` and ``conditioning`` need a first frame per prompt
    image_conditioned: bool = False

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

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """I2V only: uint8 first frames (B, H, W, C) at the backbone's size -> image tokens (B, M, D)
        that ``conditioning`` appends to the text tokens."""
        raise NotImplementedError

    def physencoder_features(self) -> tuple[torch.nn.Module, int, int]:
        """I2V only: a PhysEncoder's frozen feature extractor of first frames (uint8 (B, H, W, C)
        -> (B, N, F)), F, and the conditioning's token width D (``vpo/backbones/physencoder.py``)."""
        raise NotImplementedError(f"backbone {self.name!r} has no PhysEncoder")

    # --- PhysEncoder (issue 17, item 3): K more tokens of the first frame ---------------------
    @property
    def physencoder(self) -> PhysEncoder | None:
        return self._modules.get("physencoder")

    def attach_physencoder(self, encoder: PhysEncoder) -> None:
        """From now on the conditioning ends with ``encoder``'s K tokens of the first frame."""
        if not self.image_conditioned:
            raise ValueError(f"backbone {self.name!r} is text-to-video: it has no first frame for a PhysEncoder")
        self._modules["physencoder"] = encoder  # add_module refuses a name the class has (the property)

    def image_condition(self, images: torch.Tensor) -> torch.Tensor:
        """The first frames' tokens: ``encode_images``'s, then the PhysEncoder's K (if attached)."""
        tokens = self.encode_images(images)
        if self.physencoder is not None:
            tokens = torch.cat([tokens, self.physencoder(images).to(tokens)], 1)
        return tokens

    # --- conditioning (text, and a first frame for image-to-video) ----------------------------
    def check_images(self, images: torch.Tensor | np.ndarray | None, batch: int) -> torch.Tensor | None:
        """``images`` as a uint8 tensor (B, H, W, 3) of the backbone's size, or the ValueError that
        says what is wrong: an image for a T2V backbone, none for an I2V one, a count or size that
        does not fit (``resize_images`` fits other sizes)."""
        if not self.image_conditioned:
            if images is not None:
                raise ValueError(f"backbone {self.name!r} is text-to-video: it takes no image (got one)")
            return None
        if images is None:
            raise ValueError(f"backbone {self.name!r} is image-to-video: give a first frame per prompt (images)")
        images = torch.as_tensor(images)
        want = (batch, self.spec.height, self.spec.width, 3)
        if images.dtype != torch.uint8 or tuple(images.shape) != want:
            raise ValueError(
                f"images must be uint8 {want} (one {self.spec.height}x{self.spec.width} RGB first frame per "
                f"prompt), got {images.dtype} {tuple(images.shape)}"
            )
        return images

    def conditioning(self, prompts: list[str], images=None) -> torch.Tensor:
        """What ``predict_velocity`` takes as ``text``: the prompts' tokens, then (I2V) the first
        frames' tokens."""
        images = self.check_images(images, len(prompts))
        text = self.encode_prompts(prompts)
        return text if images is None else torch.cat([text, self.image_condition(images).to(text)], 1)

    # --- shared -------------------------------------------------------------------------------
    def denoiser(self) -> Callable[..., torch.Tensor]:
        """What ``predict_velocity`` calls to run the transformer: the module itself, or, with
        ``VPO_COMPILE=on`` outside autograd (``sampling_shortcuts``), its compiled forward
        (``CompiledForward``, made once per backbone and transformer)."""
        if not (compile_sampling() and sampling_shortcuts()):
            return self.transformer
        compiled = getattr(self, "_compiled_forward", None)
        if compiled is None or compiled.module is not self.transformer:
            compiled = self._compiled_forward = CompiledForward(self.transformer)
        return compiled

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

    def training_sigmas(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Noise levels (n,) a training update draws: uniform on (0, 1) here; a backbone trained on
        another distribution overrides it (Wan and LTX: logit-normal, shifted; CogVideoX: its grid)."""
        return torch.rand(n, generator=generator)

    @torch.no_grad()
    def sample(
        self,
        prompts: list[str],
        seeds: list[int],
        steps: int = 20,
        guidance: float = 4.0,
        return_latents: bool = False,
        progress: Callable[[int, int], None] | None = None,
        guide: Guide | None = None,
        sampler: str = "euler",
        images=None,
    ):
        """Sample one video per (prompt, seed) as one batch -> uint8 (B, F, H, W, C).

        ``return_latents`` also returns the final latents (what DPO trains on: exact, unlike the
        uint8 video decoded from them). ``progress(done, steps)`` is called after each denoising step;
        ``guide(x_t, sigma, v, prompts) -> v`` changes each step's velocity after classifier-free
        guidance (Flow-NRG: ``vpo/guidance.py``). ``sampler``: ``euler`` (one velocity per step) or
        ``heun`` (two per step but the last: ``heun_step``), on the same noise levels."""
        if not prompts:
            raise ValueError("sample() needs at least one prompt")
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; pass one seed per prompt")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        check_sampler(sampler)
        x = self.initial_noise(seeds)
        b = len(prompts)
        text = self.guidance_text(prompts, guidance, images)
        scheduler = self.make_scheduler(steps)

        def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            v = self.guided_velocity(x, sigma.expand(b), text, guidance)
            return v if guide is None else guide(x, sigma.expand(b), v, prompts)

        with self.autocast():
            for i, t in enumerate(scheduler.timesteps):
                v = velocity(x, t / scheduler.config.num_train_timesteps)
                if sampler == "heun" and scheduler.sigmas[i + 1] > 0:
                    x = heun_step(scheduler, i, x, v, velocity)
                else:
                    x = euler_step(scheduler, i, x, v)
                if progress is not None:
                    progress(i + 1, steps)
        return (self.decode(x), x) if return_latents else self.decode(x)

    def guidance_text(self, prompts: list[str], guidance: float, images=None) -> torch.Tensor:
        """The conditioning ``guided_velocity`` takes: with classifier-free guidance (guidance
        != 1) the prompts' and the unconditional conditioning stacked (2B), else the prompts' (B).
        An I2V backbone's ``images`` are in both halves."""
        images = self.check_images(images, len(prompts))
        text = self.encode_prompts(prompts)
        null = self.null_text(len(prompts)) if guidance != 1.0 else text[:0]
        if images is not None:  # encoded once (a real VAE's encode is not cheap), in both halves
            image = self.image_condition(images).to(text)
            text, null = torch.cat([text, image], 1), torch.cat([null, image[: len(null)]], 1)
        return torch.cat([text, null]) if guidance != 1.0 else text

    def guided_velocity(
        self, x: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor, guidance: float
    ) -> torch.Tensor:
        """Velocity with classifier-free guidance, ``v_uncond + w (v_cond - v_uncond)`` (Ho & Salimans
        2022, Eq. 6 written for velocities); the two halves share one forward pass (a batch of 2B).
        ``text`` comes from ``guidance_text``. Returned in fp32 whatever the autocast dtype."""
        if guidance == 1.0:
            return self.predict_velocity(x, sigma, text).float()
        v_cond, v_uncond = self.predict_velocity(torch.cat([x, x]), torch.cat([sigma, sigma]), text).float().chunk(2)
        return v_uncond + guidance * (v_cond - v_uncond)

    def sample_chunks(
        self,
        prompts: list[str],
        seeds: list[int],
        steps: int = 20,
        guidance: float = 4.0,
        chunk: int = 12,
        guide: Guide | None = None,
        sampler: str = "euler",
        images=None,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """``sample`` over a long list in batches of at most ``chunk`` videos (x2 with CFG), which
        bounds memory: yields (index of the batch's first video, its uint8 videos). A video depends
        only on its own seed, so the batching changes nothing but memory and speed."""
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; pass one seed per prompt")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        images = self.check_images(images, len(prompts))
        for start in range(0, len(prompts), chunk):
            end = start + chunk
            yield (
                start,
                self.sample(
                    prompts[start:end],
                    seeds[start:end],
                    steps=steps,
                    guidance=guidance,
                    guide=guide,
                    sampler=sampler,
                    images=None if images is None else images[start:end],
                ),
            )

    def sample_many(
        self,
        prompts: list[str],
        seeds: list[int],
        steps: int = 20,
        guidance: float = 4.0,
        chunk: int = 12,
        sampler: str = "euler",
        images=None,
    ) -> torch.Tensor:
        """All the videos of ``sample_chunks`` in one uint8 tensor (B, F, H, W, C)."""
        chunks = self.sample_chunks(prompts, seeds, steps, guidance, chunk, sampler=sampler, images=images)
        return torch.cat([videos for _, videos in chunks])


def resize_images(images: np.ndarray | list[np.ndarray], height: int, width: int) -> np.ndarray:
    """RGB uint8 images (each (h, w, 3), any size) -> (B, height, width, 3): area averaging when
    shrinking, bicubic when growing (OpenCV's advice for each)."""
    import cv2

    out = []
    for image in images:
        image = np.asarray(image)
        if image.shape[:2] != (height, width):
            shrink = image.shape[0] >= height and image.shape[1] >= width
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
        out.append(np.ascontiguousarray(image, dtype=np.uint8))
    return np.stack(out)


def euler_step(scheduler: FlowMatchEulerDiscreteScheduler, i: int, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One Euler step of the rectified-flow ODE from the scheduler's i-th noise level to the next,
    ``x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v`` (what ``FlowMatchEulerDiscreteScheduler.step``
    computes, without its step counter, so that ReFL can differentiate through it)."""
    return x + (scheduler.sigmas[i + 1] - scheduler.sigmas[i]) * v


def heun_step(
    scheduler: FlowMatchEulerDiscreteScheduler,
    i: int,
    x: torch.Tensor,
    v: torch.Tensor,
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """One step of Heun's second-order method (the trapezoidal rule with an Euler predictor; Karras
    et al. 2022, Algorithm 1) on the rectified-flow ODE: ``x' = x_i + h v(x_i, sigma_i)`` with
    ``h = sigma_{i+1} - sigma_i``, then ``x_{i+1} = x_i + h (v(x_i, sigma_i) + v(x', sigma_{i+1})) / 2``.
    Its local error is O(h^3) against Euler's O(h^2), for a second velocity per step. At
    ``sigma_{i+1} = 0`` the caller takes an Euler step instead, as Algorithm 1 does, so ``n`` steps
    cost ``2n - 1`` velocities."""
    h = scheduler.sigmas[i + 1] - scheduler.sigmas[i]
    v_next = velocity(x + h * v, scheduler.sigmas[i + 1])
    return x + h * (v + v_next) / 2
