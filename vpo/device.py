"""Which device the library runs on when the caller does not say: the GPU if there is one."""

from __future__ import annotations


def pick_device(device: str | None = None) -> str:
    """``device`` if given, else ``"cuda"`` where torch sees a GPU, else ``"cpu"``."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
