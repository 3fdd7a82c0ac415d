"""Pretrain the ``tiny`` backbone on the synthetic world (``vpo pretrain``).

Rectified-flow training: ``x_t = (1 - sigma) x0 + sigma eps``, regress the velocity ``eps - x0``
through the backbone's EDM preconditioning (``TinyBackbone.preconditioning``), with EDM's loss
weight ``1 / c_out^2`` so that every noise level is a unit-variance regression for the network.
sigma is drawn with SD3's timestep shift applied to a uniform draw, ``sigma = k u / (1 + (k - 1) u)``
with ``k = sigma_shift``: most draws land at high noise, where a video's layout and motion are
decided. With uniform sigma the model learnt colours and denoising in 600 steps but scattered an
object over several patches, because nothing coherent was learnt above sigma = 0.8
(``docs/tiny-backbone.md``). 10% of prompts are replaced by the null text so that the model also
learns the unconditional velocity classifier-free guidance needs. An EMA of the weights (with
warm-up, so that the random initialisation does not linger in it) is what gets shipped.

Every random draw is a function of (seed, step): the scenes come from integer seeds and the noise
from a generator seeded per step, so ``--resume`` continues exactly where a run stopped, and the
same command reproduces the shipped weights on the same machine and thread count.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vpo.backbones.tiny import TinyBackbone, TinyConfig
from vpo.data import physics, world

PRETRAINED = ("tiny", "tiny-i2v")  # the backbones ``vpo pretrain`` trains


@dataclass
class PretrainConfig:
    # tiny: from scratch on the synthetic world; tiny-i2v: from tiny's shipped weights on the
    # physics world (``vpo/data/physics.py``), conditioned on each scene's first frame
    backbone: str = "tiny"
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 100
    ema_decay: float = 0.998
    p_uncond: float = 0.1
    sigma_shift: float = 3.0
    seed: int = 0
    checkpoint_every: int = 100
    out: str = "runs/pretrain"

    def __post_init__(self):
        if self.backbone not in PRETRAINED:
            raise ValueError(f"backbone must be one of {', '.join(PRETRAINED)}, got {self.backbone!r}")
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.p_uncond < 1:
            raise ValueError(f"p_uncond must be in [0, 1), got {self.p_uncond}")
        if not self.sigma_shift > 0:
            raise ValueError(f"sigma_shift must be > 0, got {self.sigma_shift}")


def batch_of_scenes(cfg: PretrainConfig, step: int) -> tuple[torch.Tensor, list[str]]:
    # scene seeds: a disjoint block per step; held-out checks use seeds >= 10_000_000
    first = 1_000_000 * cfg.seed + step * cfg.batch_size
    world_of = physics if cfg.backbone == "tiny-i2v" else world  # physics: training scenes only
    scenes = [world_of.sample_scene(first + i) for i in range(cfg.batch_size)]
    video = torch.from_numpy(np.stack([s.render() for s in scenes]))
    return TinyBackbone.encode_video(video), [s.caption for s in scenes]


def initial_model(cfg: PretrainConfig) -> TinyBackbone:
    if cfg.backbone == "tiny-i2v":
        from vpo.backbones.tiny_i2v import TinyI2VBackbone

        return TinyI2VBackbone.from_tiny()  # tiny's shipped weights, a zero image embedding
    return TinyBackbone(TinyConfig())


def flow_matching_loss(
    model: TinyBackbone, x0: torch.Tensor, captions: list[str], g: torch.Generator, p_uncond: float, sigma_shift: float
) -> torch.Tensor:
    """Steps 2-3 of a pretraining step, also ``vpo physmaster``'s stage I (SFT): sigma (shifted),
    eps and the prompt dropout drawn from ``g`` in that order, then the EDM-weighted velocity
    regression on the clean latents ``x0`` (B, C, F, H, W). An image-to-video model is given each
    video's own first frame (``image_condition``: its image tokens and, where one is attached, the
    PhysEncoder's), also where the text is dropped (classifier-free guidance keeps the image)."""
    text = model.text_encoder(captions)
    b = x0.shape[0]
    u = torch.rand(b, generator=g)
    sigma = sigma_shift * u / (1 + (sigma_shift - 1) * u)
    eps = torch.randn(x0.shape, generator=g)
    drop = torch.rand(b, generator=g) < p_uncond
    text = torch.where(drop[:, None, None], torch.zeros_like(text), text)
    if model.image_conditioned:
        first = ((x0[:, :, 0].permute(0, 2, 3, 1) + 1) * 127.5).round().to(torch.uint8)
        text = torch.cat([text, model.image_condition(first).to(text)], 1)
    s = sigma.view(b, 1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * eps
    with model.autocast():
        pred = model.predict_velocity(x_t, sigma, text)
    mse = ((pred.float() - (eps - x0)) ** 2).flatten(1).mean(1)
    return (mse / model.preconditioning(sigma)[2].flatten() ** 2).mean()  # EDM's weight 1 / c_out^2


def lr_at(cfg: PretrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(cfg: PretrainConfig, resume: bool = False, progress: bool = True, until: int | None = None) -> Path:
    """Train, checkpointing to ``cfg.out``; returns the path of the EMA weights.

    ``until`` stops early at that step, with a checkpoint, so a run can be split over sessions
    (``--resume`` goes on; the schedule is still that of ``cfg.steps``)."""
    until = cfg.steps if until is None else min(until, cfg.steps)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model = initial_model(cfg)
    net = model.transformer.train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    start, seconds, ckpt_path = 0, 0.0, out / "checkpoint.pt"
    if resume and ckpt_path.exists():
        try:  # weights_only: state dicts, numbers and the config, never arbitrary pickled objects
            ckpt = torch.load(ckpt_path, weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
            raise ValueError(
                f"{ckpt_path} is not a readable checkpoint ({type(e).__name__}): damaged, or holding "
                "objects other than tensors, containers and numbers"
            ) from None
        if ckpt["config"] != asdict(cfg):
            raise ValueError(f"{ckpt_path} was written with a different config: {ckpt['config']}")
        net.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        start, seconds = ckpt["step"], ckpt["seconds"]
    log = open(out / "loss.csv", "a" if start else "w")  # noqa: SIM115 (written every step, closed at the end)
    if not start:
        log.write("step,loss,lr,seconds\n")
    bar = tqdm(range(start, until), initial=start, total=cfg.steps, disable=not progress, desc="pretrain")
    t0 = time.perf_counter() - seconds  # the wall-time column continues across resumes
    for step in bar:
        # 1. a batch of scenes and their captions
        x0, captions = batch_of_scenes(cfg, step)
        # 2. noise level, noise and prompt dropout, all drawn from this step's generator; 3. the loss
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        loss = flow_matching_loss(model, x0, captions, g, cfg.p_uncond, cfg.sigma_shift)
        # 4. update + EMA
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # EMA warm-up
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - decay)
        # 5. log, checkpoint
        log.write(f"{step + 1},{loss.item():.5f},{lr_at(cfg, step):.6f},{time.perf_counter() - t0:.1f}\n")
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == until:
            log.flush()
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save(
                {
                    "config": asdict(cfg),
                    "step": step + 1,
                    "seconds": time.perf_counter() - t0,
                    "model": net.state_dict(),
                    "ema": ema.state_dict(),
                    "optimizer": opt.state_dict(),
                },
                tmp,
            )
            os.replace(tmp, ckpt_path)  # atomic: an interrupted save never corrupts the last one
    log.close()
    model.transformer = ema
    weights = out / f"{cfg.backbone}.safetensors"
    model.save(weights)
    return weights
