"""Video generators behind one interface (``vpo.backbones.base.Backbone``) and one registry.

The registry maps a name to ``"module:Class"``: listing the names (the web form, config
validation) must not import torch; ``backbone_class`` imports on use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

BACKBONES = {
    "tiny": "vpo.backbones.tiny:TinyBackbone",
}


@dataclass(frozen=True)
class Sizing:
    """What a training step costs on a backbone, for ``TrainConfig``'s upper bounds (docs/limits.md).
    Peak resident memory in MB, measured in fp32 (what a CPU without native bf16 computes in, the
    larger case), rounded up."""

    lora_width: int  # the narrowest layer LoRA wraps: a rank above it is no longer low-rank
    process_mb: float  # the process with the backbone, its text encoder and the reward sources loaded
    video_mb: float  # per video sampled in one batch (classifier-free guidance included)
    pair_mb: float  # per pair in a DPO update (winner and loser with gradients, the reference without)
    refl_mb: float  # per prompt and back-propagated denoising step in a ReFL update


# torch-free, like the registry: the web form checks configs against these
SIZING = {
    # TinyConfig.dim = 128 (tests/test_limits.py checks it). Process 512 MB after loading; sampling
    # 8 -> 32 videos at once raised the peak by 332 MB (13.8 MB a video; the 1,024
    # candidates took 10.1 GB, 9.9 MB a video); a DPO step with one pair 354 MB above the process,
    # a ReFL step 1,684 MB at depth 8 (README, machine B, fp32).
    "tiny": Sizing(lora_width=128, process_mb=600, video_mb=14, pair_mb=360, refl_mb=215),
}


def backbone_class(name: str):
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
    module, cls = BACKBONES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_backbone(name: str, weights=None, device: str = "cpu"):
    """The backbone ``name`` with its base weights (``weights`` overrides where they come from)."""
    return backbone_class(name).load(weights).to(device).eval()
