"""``videoscore``: TIGER-Lab's VideoScore, a video quality model (Idefics2 + a 5-output regression
head) that OnlineVPO uses as its video-level feedback source (Sec. 3.2, Table 2).

Weights, processor and the query template load from a local directory, never from a hub: set
``VPO_VIDEOSCORE_DIR`` to a folder holding the checkpoint (``config.json``, safetensors, the
processor files) and ``query_prompt.txt`` — the exact query the checkpoint was trained with, from
its model card, with ``{text_prompt}`` where the prompt goes (it differs between VideoScore
versions, so it travels with the weights).

Scoring: 16 uniformly sampled frames (VideoScore v1; v1.1 was trained with 48), one ``<image>``
per frame after the query; the head reads the last token's hidden state. The five outputs are on a
~1–4 scale: visual quality, temporal consistency, dynamic degree, text-to-video alignment, factual
consistency. The first four map onto our dimensions, normalised as (x - 1) / 3 clipped to [0, 1];
factual consistency is kept as a raw measure. bf16 on GPU, fp32 on CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vpo.device import pick_device
from vpo.rewards.base import RewardSource, ScoreResult, check_videos

SETTING = "VPO_VIDEOSCORE_DIR"
FRAMES = 16
OUTPUTS = ("visual", "temporal", "dynamic", "alignment", "factual")


def _model_class():
    # imported lazily: transformers' Idefics2 stack is heavy and only this source needs it
    from transformers import Idefics2Model, Idefics2PreTrainedModel

    class VideoScoreModel(Idefics2PreTrainedModel):
        """Idefics2 with a bias-free linear regression head on the last token (the layout of
        VideoScore's checkpoints: ``model.*`` and ``score.weight``)."""

        def __init__(self, config):
            super().__init__(config)
            self.model = Idefics2Model(config)
            self.score = nn.Linear(config.text_config.hidden_size, config.num_labels, bias=False)
            self.post_init()

        def forward(self, input_ids, attention_mask, pixel_values, pixel_attention_mask=None):
            hidden = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                pixel_values=pixel_values,
                pixel_attention_mask=pixel_attention_mask,
            ).last_hidden_state
            last = attention_mask.sum(1) - 1  # right padding: the last real token
            return self.score(hidden[torch.arange(len(hidden), device=hidden.device), last])

    return VideoScoreModel


def uniform_frames(n_frames: int, k: int = FRAMES) -> np.ndarray:
    """k frame indices spread evenly over the video, first and last included (repeats if short)."""
    return np.linspace(0, n_frames - 1, k).round().astype(int)


class VideoScoreSource(RewardSource):
    name = "videoscore"

    def __init__(self, directory=None, device: str | None = None):
        raw = directory or os.environ.get(SETTING)
        if not raw:
            raise ValueError(
                f"the videoscore reward source needs its weights in a local directory: "
                f"set {SETTING} to it (nothing is downloaded)"
            )
        self.directory = Path(raw)
        if not (self.directory / "config.json").is_file():
            raise ValueError(f"{SETTING}={self.directory} holds no VideoScore checkpoint (no config.json there)")
        template = self.directory / "query_prompt.txt"
        if not template.is_file():
            raise ValueError(
                f"{template} is missing: put the query your VideoScore checkpoint was trained "
                "with there, with {text_prompt} where the prompt goes"
            )
        self.template = template.read_text(encoding="utf-8")
        if "{text_prompt}" not in self.template:
            raise ValueError(f"{template} has no {{text_prompt}} placeholder")
        self.device = torch.device(pick_device(device))
        from transformers import AutoProcessor

        self.processor = AutoProcessor.from_pretrained(self.directory)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = _model_class().from_pretrained(self.directory, dtype=dtype).to(self.device).eval()
        if self.model.config.num_labels != len(OUTPUTS):
            raise ValueError(
                f"{self.directory}: expected a {len(OUTPUTS)}-output regression head, "
                f"found {self.model.config.num_labels}"
            )

    @torch.no_grad()
    def raw_scores(self, video: np.ndarray, prompt: str) -> torch.Tensor:
        """The model's five ~1-4 outputs for one video."""
        from PIL import Image

        frames = [Image.fromarray(video[i]) for i in uniform_frames(len(video))]
        text = self.template.replace("{text_prompt}", prompt) + "<image>" * len(frames)
        inputs = self.processor(text=[text], images=[frames], return_tensors="pt")
        inputs.pop("token_type_ids", None)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return self.model(**inputs)[0].float().cpu()

    def score(self, videos, prompts: list[str]) -> ScoreResult:
        videos = check_videos(videos, prompts)
        raw = torch.stack([self.raw_scores(v, p) for v, p in zip(videos.numpy(), prompts)])  # (B, 5)
        result = ScoreResult(
            scores={d: ((raw[:, i] - 1) / 3).clamp(0, 1) for i, d in enumerate(self.dimensions)},
            raw={f"videoscore_{d}": raw[:, i] for i, d in enumerate(OUTPUTS)},
        )
        return self.with_global(result)
