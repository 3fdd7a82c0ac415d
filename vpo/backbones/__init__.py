"""Video generators behind one interface (``vpo.backbones.base.Backbone``) and one registry.

The registry maps a name to ``"module:Class"``: listing the names (the web form, config
validation) must not import torch; ``backbone_class`` imports on use. Real backbones load from a
local diffusers folder (``vpo.backbones.real``: where, which layout, their defaults).
"""

from __future__ import annotations

import importlib

BACKBONES = {
    "tiny": "vpo.backbones.tiny:TinyBackbone",
    "wan": "vpo.backbones.wan:WanBackbone",
    "cogvideox": "vpo.backbones.cogvideox:CogVideoXBackbone",
    "ltx": "vpo.backbones.ltx:LTXBackbone",
}


def backbone_class(name: str):
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
    module, cls = BACKBONES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_backbone(name: str, weights=None, device: str = "cpu", **options):
    """The backbone ``name`` with its base weights (``weights`` overrides where they come from: a
    ``.safetensors`` for tiny, a diffusers folder for a real one). ``options`` (size, memory,
    flow shift) go to a real backbone's ``load``; tiny has one size and refuses others."""
    cls = backbone_class(name)
    if name != "tiny":
        return cls.load(weights, device=device, **options).eval()
    model = cls.load(weights)
    spec = model.spec
    for what in ("frames", "height", "width"):
        if options.get(what) and options[what] != getattr(spec, what):
            raise ValueError(f"tiny: {what} is fixed at {getattr(spec, what)} (its weights' size), got {options[what]}")
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

    from safetensors import safe_open

    path = Path(checkpoint) / "adapter.safetensors"
    if not path.is_file():
        return {}
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("config", "{}"))


def load_for_checkpoint(name: str, checkpoint=None, device: str = "cpu"):
    """The backbone ``name`` as a training checkpoint of it was trained (a real backbone's weights
    folder, size and memory options come from the checkpoint's config); the plain base otherwise."""
    trained = checkpoint_config(checkpoint) if checkpoint else {}
    if name == "tiny" or trained.get("backbone") != name:
        return load_backbone(name, device=device)
    from vpo.train.config import TrainConfig

    return load_for_config(TrainConfig.from_dict(trained), device)
