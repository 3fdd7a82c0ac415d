"""Video generators behind one interface (``vpo.backbones.base.Backbone``) and one registry.

The registry maps a name to ``"module:Class"``: listing the names (the web form, config
validation) must not import torch; ``backbone_class`` imports on use. Real backbones load from a
local diffusers folder (``vpo.backbones.real``: where, which layout, their defaults).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

BACKBONES = {
    "tiny": "vpo.backbones.tiny:TinyBackbone",
    "wan": "vpo.backbones.wan:WanBackbone",
    "cogvideox": "vpo.backbones.cogvideox:CogVideoXBackbone",
    "ltx": "vpo.backbones.ltx:LTXBackbone",
}
# image-to-video backbones (``Backbone.image_conditioned``: a first frame per prompt). Sampled by
# ``vpo sample --image/--images``; trained (``TrainConfig``) on an image prompt set
# (``vpo.data.prompts.IMAGE_SETS``). Kept apart from BACKBONES (text-to-video): whatever needs a first
# frame (sampling, training, the web form and studies) asks ``name in I2V_BACKBONES``.
I2V_BACKBONES = {
    "tiny-i2v": "vpo.backbones.tiny_i2v:TinyI2VBackbone",
    "wan-i2v": "vpo.backbones.wan_i2v:WanI2VBackbone",
}
ALL_BACKBONES = {**BACKBONES, **I2V_BACKBONES}
TINY = ("tiny", "tiny-i2v")  # shipped with the package: one size, weights in vpo/backbones/weights/
# backbones whose sampling schedule takes no flow shift (CogVideoX's is the VP one it was trained on):
# a non-zero ``flow_shift`` is refused where it is given (TrainConfig, ``vpo eval``, the web forms)
NO_FLOW_SHIFT = ("cogvideox",)

# the ODE solvers ``Backbone.sample`` offers (``vpo/backbones/base.py``: ``euler_step``,
# ``heun_step``); torch-free, like the registry. "euler" is the default every measured figure used.
SAMPLERS = ("euler", "heun")


@dataclass(frozen=True)
class Sizing:
    """What a training step costs on a backbone, for ``TrainConfig``'s upper bounds (docs/limits.md).
    Peak resident memory in MB, measured in fp32 (what a CPU without native bf16 computes in, the
    larger case), rounded up."""

    lora_width: int  # the narrowest layer LoRA wraps: a rank above it is no longer low-rank
    # None where not measured yet (the real backbones: benchmarks/gpu.py will give their figures);
    # such a backbone's runs are bounded by LIMITS and the LoRA width only
    process_mb: float | None = None  # the process with the backbone, its text encoder and the reward sources loaded
    video_mb: float = 0  # per video sampled in one batch (classifier-free guidance included)
    pair_mb: float = 0  # per pair in a DPO update (winner and loser with gradients, the reference without)
    refl_mb: float = 0  # per prompt and back-propagated denoising step in a ReFL update


# torch-free, like the registry: the web form checks configs against these
SIZING = {
    # TinyConfig.dim = 128 (tests/test_limits.py checks it). Process 512 MB after loading; sampling
    # 8 -> 32 videos at once raised the peak by 332 MB (13.8 MB a video; the 1,024
    # candidates took 10.1 GB, 9.9 MB a video); a DPO step with one pair 354 MB above the process,
    # a ReFL step 1,684 MB at depth 8 (README, machine B, fp32).
    "tiny": Sizing(lora_width=128, process_mb=600, video_mb=14, pair_mb=360, refl_mb=215),
    # the released models' transformer widths (Wan2.1-1.3B dim 1536, CogVideoX-2B 30 heads x 64,
    # LTX-Video 2048); memory not measured yet
    "wan": Sizing(lora_width=1536),
    "cogvideox": Sizing(lora_width=1920),
    "ltx": Sizing(lora_width=2048),
    # image-to-video: tiny-i2v is tiny's network (and its widths); memory not measured yet
    "tiny-i2v": Sizing(lora_width=128),
    "wan-i2v": Sizing(lora_width=5120),  # Wan2.1-I2V-14B's dim
}


def backbone_class(name: str):
    if name not in ALL_BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(ALL_BACKBONES)}")
    module, cls = ALL_BACKBONES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_backbone(name: str, weights=None, device: str = "cpu", **options):
    """The backbone ``name`` with its base weights (``weights`` overrides where they come from: a
    ``.safetensors`` for tiny, a diffusers folder for a real one). ``options`` (size, memory,
    flow shift) go to a real backbone's ``load``; tiny takes a flow shift (its sampling schedule's)
    and has one size, refusing others."""
    cls = backbone_class(name)
    if name not in TINY:
        return cls.load(weights, device=device, **options).eval()
    model = cls.load(weights)
    model.flow_shift = float(options.get("flow_shift") or 0.0)
    spec = model.spec
    for what in ("frames", "height", "width"):
        if options.get(what) and options[what] != getattr(spec, what):
            raise ValueError(
                f"{name}: {what} is fixed at {getattr(spec, what)} (its weights' size), got {options[what]}"
            )
    return model.to(device).eval()


def load_for_config(cfg, device: str = "cpu"):
    """The backbone of a TrainConfig, with its size, memory options and weights folder."""
    return load_backbone(
        cfg.backbone,
        cfg.model_dir or None,
        device=device,
        frames=cfg.frames,
        height=cfg.height,
        width=cfg.width,
        flow_shift=cfg.flow_shift,
        weights_dtype=cfg.weights_dtype,
        gradient_checkpointing=cfg.gradient_checkpointing,
        vae_tiling=cfg.vae_tiling,
        cpu_offload=cfg.cpu_offload,
    )


def checkpoint_config(checkpoint) -> dict:
    """The TrainConfig (as a dict) a training checkpoint folder was written with; {} if none."""
    import json
    from pathlib import Path

    from vpo.train.checkpoints import read_safetensors  # a damaged file: a ValueError naming it

    path = Path(checkpoint) / "adapter.safetensors"
    if not path.is_file():
        return {}
    return json.loads(read_safetensors(path, metadata_only=True).get("config", "{}"))


def no_flow_shift(name: str) -> str:
    return f"{name} has no flow shift (its schedule is the trained VP one): leave flow_shift at 0"


def load_for_checkpoint(name: str, checkpoint=None, device: str = "cpu", flow_shift: float | None = None):
    """The backbone ``name`` as a training checkpoint of it was trained (a real backbone's weights
    folder, size and memory options come from the checkpoint's config); the plain base otherwise.
    ``flow_shift``: the sampling schedule's shift instead of the run's (0 = the backbone's default;
    None = the run's)."""
    if flow_shift is not None and not flow_shift >= 0:  # also refuses NaN
        raise ValueError(f"flow_shift must be >= 0 (0 = the backbone's default), got {flow_shift}")
    if flow_shift and name in NO_FLOW_SHIFT:
        raise ValueError(no_flow_shift(name))
    trained = checkpoint_config(checkpoint) if checkpoint else {}
    if trained.get("backbone") != name:
        return load_backbone(name, device=device, **({} if flow_shift is None else {"flow_shift": flow_shift}))
    shift = trained.get("flow_shift", 0.0) if flow_shift is None else flow_shift
    if name in TINY:  # its one size and weights; the run's sampling schedule
        return load_backbone(name, device=device, flow_shift=shift)
    from vpo.train.config import TrainConfig

    return load_for_config(TrainConfig.from_dict({**trained, "flow_shift": shift}), device)
