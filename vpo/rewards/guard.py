"""Reward guards: a reward that cannot be won by deleting or freezing the subject.

A temporal reward (flickering + subject consistency) is maximal for a video where nothing changes,
and an empty frame changes least of all; the held-out ``motion_extent`` of the README's training
example fell by 9 points while flickering improved. The ``subject`` guard multiplies a candidate's
score by how much of the prompted subject is there and moves as prompted:

    guarded = score * presence * min(1, motion_extent)

(``vpo.data.detector``; a ``still`` object has no motion extent and the factor is 1). Among
candidates that keep their subject the order is the reward's own; a candidate that lost or froze
it cannot be the winner. It needs prompts the world's detector can read.

The product also decides which candidates form the pair: the factor spreads the candidates far more
than a temporal score does, so pairs end up chosen by presence and motion and the temporal signal is
lost (measured in the README's training section). The ``subject-veto`` guard only vetoes: a
candidate whose factor is below ``VETO_BELOW`` is moved below every candidate that passes, and
every other score is left as it is,

    vetoed_i = r_i - (max_j r_j - min_j r_j + 1)   if factor_i < VETO_BELOW, else r_i,

so a vetoed candidate can never be the winner (it is the loser when there is one), and a group in
which every candidate passes is ranked by the reward alone.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from vpo.data import world
from vpo.data.detector import detect, motion_extent, presence


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


def subject_factors(videos: np.ndarray, prompts: list[str], raw: dict) -> list[float]:
    """``subject_factor`` of each video; from the ``presence`` and ``motion_extent`` the reward
    source already measured (``ScoreResult.raw`` of ``metrics``) when it did, so that the detector
    does not run twice on every candidate."""
    if "presence" not in raw or "motion_extent" not in raw:
        return [subject_factor(v, p) for v, p in zip(videos, prompts)]
    factors = []
    for prompt, present, extent in zip(prompts, raw["presence"].tolist(), raw["motion_extent"].tolist()):
        if math.isnan(present):
            raise ValueError(f"the subject guard cannot read {prompt!r}: it names no object of the synthetic world")
        factors.append(present * (1.0 if math.isnan(extent) else min(1.0, extent)))
    return factors


VETO_BELOW = 0.5  # less than half of the subject's presence x motion left: the candidate is vetoed


def veto(scores: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``scores`` with every candidate whose factor is below ``VETO_BELOW`` moved below all the
    others (by the batch's spread plus 1, whatever the source's range); their own order kept."""
    below = scores - (scores.max() - scores.min() + 1.0)
    return torch.where(factors < VETO_BELOW, below, scores)
