"""``learned``: a reward model trained from preference pairs (``vpo reward-model train``; the
model: ``vpo/reward_model/model.py``), e.g. from a study's votes.

Its dimensions are the model's heads (the pairs' dimensions, ``overall`` when they named none),
read from the model's folder, plus ``global``. Scores are the heads' rewards of the clean video
(sigma = 0), mapped to [0, 1] by ``sigmoid((r - mean) / std)`` over the training videos' rewards:
monotone, so the order DPO picks winners by is the model's. Differentiable in every head.
"""

from __future__ import annotations

import os

import torch

from vpo.device import pick_device
from vpo.reward_model import heads_of
from vpo.rewards.base import RewardSource, ScoreResult, check_videos

SETTING = "VPO_REWARD_MODEL_DIR"


class LearnedSource(RewardSource):
    name = "learned"

    def __init__(self, directory=None, device: str | None = None):
        raw = directory or os.environ.get(SETTING)
        if not raw:
            raise ValueError(
                f"the learned reward source needs a trained reward model: pass its folder "
                f"(reward_model = DIR, --reward-model DIR) or set {SETTING}"
            )
        self.heads = heads_of(raw)  # a ValueError naming what is wrong with the folder
        from vpo.reward_model.model import load_reward_model

        self.model = load_reward_model(raw, device=pick_device(device))
        self.directory = raw

    @property
    def dimensions(self) -> tuple[str, ...]:
        return self.heads

    @property
    def differentiable(self) -> tuple[str, ...]:
        return self.heads

    @torch.no_grad()
    def score(self, videos, prompts: list[str]) -> ScoreResult:
        videos = check_videos(videos, prompts)
        x0 = self.model.latents(videos)
        raw = self.model.score(x0, torch.zeros(len(x0)), prompts)
        scores = {h: s.float().cpu() for h, s in self.model.normalised(raw).items()}
        return self.with_global(ScoreResult(scores=scores, raw={f"learned_{h}": r.cpu() for h, r in raw.items()}))

    def score_differentiable(self, videos, prompts, dimension):
        v = check_videos(videos, prompts, differentiable=True)
        x0 = v.permute(0, 4, 1, 2, 3) / 127.5 - 1  # float (B, F, H, W, C) in [0, 255] -> pixel latents
        raw = self.model.score(x0, torch.zeros(len(x0)), prompts)
        return self.model.normalised(raw)[self.check_differentiable(dimension)]
