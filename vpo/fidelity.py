"""How faithfully a backbone renders held-out prompts of the synthetic world.

Samples one video per held-out scene (wordings never seen in pretraining, the scene's seed as
the sampling seed) and asks the ground-truth detector whether the prompted colour and motion
direction came out. Also compares VBench temporal flickering with ground-truth renders of the same
scenes: a base model that already matched them would leave tuning nothing to show.
"""

from __future__ import annotations

import numpy as np
import torch

from vpo.data import world
from vpo.data.detector import detect
from vpo.rewards.measures import temporal_flickering

DIRECTION = {"falling": "down"}  # the coarse direction a fine motion counts as


def heldout_videos(
    backbone, n: int = 64, steps: int = 20, guidance: float = 4.0, chunk: int = 16, sampler: str = "euler"
) -> np.ndarray:
    """One uint8 video per held-out scene (n, F, H, W, C), each from its scene's seed."""
    scenes = world.heldout_scenes(n)
    captions, seeds = [s.caption for s in scenes], [s.seed for s in scenes]
    return backbone.sample_many(captions, seeds, steps=steps, guidance=guidance, chunk=chunk, sampler=sampler).numpy()


def world_fidelity(
    backbone,
    n: int = 64,
    steps: int = 20,
    guidance: float = 4.0,
    chunk: int = 16,
    sampler: str = "euler",
    videos: np.ndarray | None = None,
) -> dict:
    """The held-out report; ``videos`` (from ``heldout_videos`` with the same ``n``) skips sampling."""
    scenes = world.heldout_scenes(n)
    if videos is None:
        videos = heldout_videos(backbone, n, steps, guidance, chunk, sampler)
    colour_ok = direction_ok = shape_ok = 0
    for scene, video in zip(scenes, videos):
        target = scene.objects[0]
        found = detect(video)
        main = found[0] if found else None
        if main is not None and main.colour == target.colour:
            colour_ok += 1
            shape_ok += main.shape == target.shape
            direction_ok += main.direction == DIRECTION.get(target.motion, target.motion)
    return {
        "n": n,
        "colour_accuracy": colour_ok / n,
        "direction_accuracy": direction_ok / n,
        "shape_accuracy": shape_ok / n,
        "flicker_generated": float(temporal_flickering(torch.from_numpy(np.asarray(videos)).float()).mean()),
        "flicker_ground_truth": float(
            temporal_flickering(torch.from_numpy(np.stack([s.render() for s in scenes])).float()).mean()
        ),
    }
