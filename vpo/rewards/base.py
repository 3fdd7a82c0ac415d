"""The interface every reward source implements, and the checks all of them share.

A source scores a batch of videos (uint8 ``(B, F, H, W, C)``, native resolution) with their
prompts and returns ``{dimension: float tensor (B,)}`` for each dimension it supports, every value
normalised to [0, 1] on the source's documented scale (``docs/metrics.md``), plus ``global`` =
the mean of those normalised dimensions. A value it cannot compute for a video (alignment for a
prompt outside its vocabulary) is NaN, with the reason in ``ScoreResult.unavailable`` — never a
silent zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vpo.data.world import FPS
from vpo.rewards import GLOBAL, REWARD_SOURCES


@dataclass
class ScoreResult:
    scores: dict[str, torch.Tensor]  # dimension -> (B,) in [0, 1]; NaN where unavailable
    raw: dict[str, torch.Tensor] = field(default_factory=dict)  # measure -> (B,), natural units
    unavailable: dict[int, str] = field(default_factory=dict)  # video index -> why


class RewardSource:
    name: str = ""  # its key in REWARD_SOURCES, which also holds its dimensions and description
    # frame rate of the videos scored, for a source that samples frames in time (videoreward); the
    # training loop and ``vpo score`` (from a manifest) set it, the default is the tiny backbone's
    video_fps: float = FPS

    @property
    def dimensions(self) -> tuple[str, ...]:
        return REWARD_SOURCES[self.name].dimensions

    @property
    def differentiable(self) -> tuple[str, ...]:
        """Dimensions ``score_differentiable`` supports (what ReFL needs)."""
        return REWARD_SOURCES[self.name].differentiable

    def score(self, videos: torch.Tensor, prompts: list[str]) -> ScoreResult:
        raise NotImplementedError

    def score_differentiable(self, videos: torch.Tensor, prompts: list[str], dimension: str) -> torch.Tensor:
        """Float videos (B, F, H, W, C) in [0, 255] with grad -> (B,) normalised scores with grad."""
        raise NotImplementedError(f"reward source {self.name!r} is not differentiable")

    # --- shared ------------------------------------------------------------------------------
    def check_differentiable(self, dimension: str) -> str:
        if dimension not in self.differentiable:
            valid = ", ".join(self.differentiable) or "none"
            raise ValueError(f"reward source {self.name!r} is not differentiable in {dimension!r}; valid: {valid}")
        return dimension

    def check_dimension(self, dimension: str) -> str:
        valid = (*self.dimensions, GLOBAL)
        if dimension not in valid:
            raise ValueError(f"reward source {self.name!r} has no dimension {dimension!r}; valid: {', '.join(valid)}")
        return dimension

    def with_global(self, result: ScoreResult) -> ScoreResult:
        result.scores[GLOBAL] = torch.stack([result.scores[d] for d in self.dimensions]).mean(0)
        return result


def check_videos(videos, prompts: list[str] | None = None, differentiable: bool = False) -> torch.Tensor:
    """Validate a batch of videos; returns it as a tensor (B, F, H, W, C)."""
    videos = torch.as_tensor(videos)
    if videos.is_floating_point() and torch.isnan(videos).any():
        raise ValueError("videos contain NaN frames")
    if differentiable:
        if not videos.is_floating_point():
            raise ValueError(f"differentiable scoring needs float videos in [0, 255], got {videos.dtype}")
    elif videos.dtype != torch.uint8:
        raise ValueError(f"videos must be uint8 (B, F, H, W, C), got dtype {videos.dtype}")
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos must have shape (B, F, H, W, 3), got {tuple(videos.shape)}")
    if videos.shape[1] < 2:
        raise ValueError(f"videos need at least 2 frames to be scored, got {videos.shape[1]}")
    if prompts is not None and len(prompts) != len(videos):
        raise ValueError(f"got {len(videos)} videos but {len(prompts)} prompts; pass one prompt per video")
    return videos
