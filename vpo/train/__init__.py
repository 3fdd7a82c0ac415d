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
    overrides loading ``cfg.backbone`` (tests pass a small random one). With ``cfg.nproc > 1`` the
    run is started on that many ranks of this host (``distributed.py``), and ``sink`` and ``stop``
    are served to rank 0 from here."""
    if cfg.algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {cfg.algorithm!r}; valid: {', '.join(ALGORITHMS)}")
    import torch.distributed as dist

    if cfg.nproc > 1 and not dist.is_initialized():  # not a rank yet: start cfg.nproc of them
        if backbone is not None:
            raise ValueError("a run of nproc > 1 loads its backbone in each rank: it cannot be given one")
        from vpo.train.distributed import launch

        return launch(cfg, sink, stop, resume)
    from vpo.train.runner import Run

    module = importlib.import_module(ALGORITHMS[cfg.algorithm])
    return module.train_run(Run(cfg, sink, device, backbone), stop, resume)
