"""Training algorithms behind one registry. Each is a module with a ``train(cfg, sink, stop, resume)``
loop: read ``online_dpo.py`` first."""

from __future__ import annotations

import importlib

# name -> module; imported on use so that listing the names costs nothing
ALGORITHMS = {
    "online-dpo": "vpo.train.online_dpo",
    "offline-dpo": "vpo.train.offline_dpo",
    "refl": "vpo.train.refl",
}


def train(cfg, sink, stop=None, resume: bool = False, device: str = "cpu", backbone=None):
    """Run ``cfg`` with its algorithm; returns the folder of the last checkpoint. ``backbone``
    overrides loading ``cfg.backbone`` (tests pass a small random one)."""
    if cfg.algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {cfg.algorithm!r}; valid: {', '.join(ALGORITHMS)}")
    module = importlib.import_module(ALGORITHMS[cfg.algorithm])
    return module.train(cfg, sink, stop=stop, resume=resume, device=device, backbone=backbone)
