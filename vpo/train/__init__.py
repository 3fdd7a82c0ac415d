"""Training algorithms behind one registry. Each is a module with a ``train_run(run, stop, resume)``
that gives ``Run.loop`` its step: read ``online_dpo.py`` first."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the registry is read by the web process, which imports no torch
    from vpo.backbones.base import Backbone
    from vpo.train.config import TrainConfig
    from vpo.train.sinks import Sink

# name -> module; imported on use so that listing the names costs nothing
ALGORITHMS = {
    "online-dpo": "vpo.train.online_dpo",
    "offline-dpo": "vpo.train.offline_dpo",
    "refl": "vpo.train.refl",
    "online-rwr": "vpo.train.online_rwr",
}


def train(
    cfg: TrainConfig,
    sink: Sink,
    stop: Callable[[], bool] | None = None,
    resume: bool = False,
    device: str = "cpu",
    backbone: Backbone | None = None,
) -> Path:
    """Run ``cfg`` with its algorithm; returns the folder of the last checkpoint. ``backbone``
    overrides loading ``cfg.backbone`` (tests pass a small random one)."""
    if cfg.algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {cfg.algorithm!r}; valid: {', '.join(ALGORITHMS)}")
    from vpo.train.runner import Run

    module = importlib.import_module(ALGORITHMS[cfg.algorithm])
    return module.train_run(Run(cfg, sink, device, backbone), stop, resume)
