"""What a 2AFC study needs from the library: rendering a system's clips with paired seeds, and the
visibly degraded copies gold trials compare against."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

CHUNK = 6  # videos per sampling batch


def render_system(
    backbone_name: str,
    checkpoint: Path | None,
    jobs: list[tuple[str, int]],
    saved: Callable[[int, np.ndarray, int], None],
    steps: int = 20,
    guidance: float = 4.0,
    device: str | None = None,
    images: np.ndarray | None = None,
) -> None:
    """Sample ``(prompt, seed)`` jobs from a backbone (with a training checkpoint's adapter, if
    given), calling ``saved(job index, uint8 video (F, H, W, C), fps)`` as each video is ready.
    Every system samples the same jobs, so the clips of one trial share prompt and seed; an
    image-to-video backbone's jobs share their first frame too (``images``: one per job, uint8
    (J, H, W, 3), resized to the backbone's size)."""
    from vpo.backbones import load_for_checkpoint
    from vpo.backbones.base import resize_images
    from vpo.device import pick_device
    from vpo.train.checkpoints import load_policy

    backbone = load_for_checkpoint(backbone_name, checkpoint, pick_device(device))
    if checkpoint is not None:
        load_policy(backbone, checkpoint)
    if images is not None:
        images = resize_images(images, backbone.spec.height, backbone.spec.width)
    for start, videos in backbone.sample_chunks(
        [p for p, _ in jobs], [s for _, s in jobs], steps=steps, guidance=guidance, chunk=CHUNK, images=images
    ):
        for i, video in enumerate(videos.numpy()):
            saved(start + i, video, backbone.spec.fps)


def degrade(video: np.ndarray, seed: int) -> np.ndarray:
    """A visibly worse copy for a gold trial: strong per-pixel noise and frame-to-frame brightness
    flicker, so that an attentive volunteer never prefers it."""
    rng = np.random.default_rng(seed)
    v = video.astype(np.float32)
    flicker = rng.uniform(-60, 60, size=(len(v), 1, 1, 1))
    noise = rng.normal(0, 45, size=v.shape)
    return np.clip(v + flicker + noise, 0, 255).astype(np.uint8)
