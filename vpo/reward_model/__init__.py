"""Reward models learned from preference pairs (``vpo/pairs.py``): VideoAlign's recipe at the
tiny backbone's size. ``loss.py`` is the Bradley–Terry-with-ties loss, ``model.py`` the
noise-conditioned model (a head per dimension on the frozen first blocks of ``tiny``), ``train.py``
the training run (``vpo reward-model train``). The ``learned`` reward source scores with one and
Flow-NRG guides sampling with one.

This module imports no torch: the web form and ``TrainConfig`` read a model's heads from its
``reward_model.json`` through ``heads_of``.
"""

from __future__ import annotations

import json
from pathlib import Path

META = "reward_model.json"  # heads, architecture, normalisation and the held-out figures
WEIGHTS = "heads.safetensors"


def read_meta(directory) -> dict:
    """The ``reward_model.json`` of a trained reward model; a ValueError says what is wrong."""
    if not str(directory).strip():
        raise ValueError("no reward model directory given")
    folder = Path(directory)
    if not folder.is_dir():
        raise ValueError(f"no reward model at {folder}: not a directory (train one with `vpo reward-model train`)")
    path = folder / META
    if not path.is_file() or not (folder / WEIGHTS).is_file():
        raise ValueError(f"{folder} is not a trained reward model: expected {META} and {WEIGHTS} there")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("heads"), list) or not meta["heads"]:
        raise ValueError(f"{path} names no heads")
    return meta


def heads_of(directory) -> tuple[str, ...]:
    """The dimensions (heads) of the reward model in ``directory``."""
    return tuple(read_meta(directory)["heads"])
