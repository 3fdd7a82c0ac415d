"""``image-metrics``: an image-level judge, the baseline OnlineVPO compares video rewards against.

It scores every frame on its own with the per-frame measures of ``metrics`` and averages over
frames. It has no temporal term, so it is blind to flicker and to frame order by construction:
shuffle a video's frames and its scores do not change (``tests/test_rewards.py``). Like an image
reward model used for video (HPSv2 in the paper), it has one notion of quality, which it reports
for every dimension it is asked about.
"""

from __future__ import annotations

from vpo.rewards.base import RewardSource, ScoreResult, check_videos
from vpo.rewards.metrics import visual_score


class ImageMetricsSource(RewardSource):
    name = "image-metrics"

    def score(self, videos, prompts: list[str]) -> ScoreResult:
        videos = check_videos(videos, prompts)
        frame_quality, raw = visual_score(videos.float())
        result = ScoreResult(scores={"visual": frame_quality, "temporal": frame_quality.clone()}, raw=raw)
        return self.with_global(result)

    def score_differentiable(self, videos, prompts, dimension):
        v = check_videos(videos, prompts, differentiable=True)
        self.check_differentiable(dimension)
        return visual_score(v)[0]
