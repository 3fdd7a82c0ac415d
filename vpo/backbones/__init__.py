"""Video generators behind one interface (``vpo.backbones.base.Backbone``) and one registry.

The registry maps a name to ``"module:Class"``: listing the names (the web form, config
validation) must not import torch; ``backbone_class`` imports on use.
"""

from __future__ import annotations

import importlib

BACKBONES = {
    "tiny": "vpo.backbones.tiny:TinyBackbone",
}


def backbone_class(name: str):
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
    module, cls = BACKBONES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_backbone(name: str, weights=None, device: str = "cpu"):
    """The backbone ``name`` with its base weights (``weights`` overrides where they come from)."""
    return backbone_class(name).load(weights).to(device).eval()
