"""Reward guards: a reward that cannot be won by deleting or freezing the subject.

A temporal reward (flickering + subject consistency) is maximal for a video where nothing changes,
and an empty frame changes least of all; the held-out ``motion_extent`` of the README's training
example fell by 9 points while flickering improved. The ``subject`` guard multiplies a candidate's
score by how much of the prompted subject is there and moves as prompted:

    guarded = score * presence * min(1, motion_extent)

(``vpo.data.detector``; a ``still`` object has no motion extent and the factor is 1). Among
candidates that keep their subject the order is the reward's own; a candidate that lost or froze
it cannot be the winner. It needs prompts the world's detector can read.
"""

from __future__ import annotations

import numpy as np

from vpo.data import world
from vpo.data.detector import detect, motion_extent, presence

GUARDS = ("none", "subject")


def unguardable(prompts: list[str]) -> str | None:
    """The first prompt the ``subject`` guard cannot read (it names no object of the synthetic
    world), or None."""
    return next((p for p in prompts if world.parse_caption(p) is None), None)


def subject_factor(video: np.ndarray, prompt: str) -> float:
    """presence * min(1, motion_extent) of one uint8 (F, H, W, 3) video."""
    present = presence(video, prompt, detect(video))
    if present is None:
        raise ValueError(f"the subject guard cannot read {prompt!r}: it names no object of the synthetic world")
    extent = motion_extent(video, prompt)
    return present * (1.0 if extent is None else min(1.0, extent))
