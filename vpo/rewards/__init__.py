"""Reward sources behind one interface (``vpo.rewards.base.RewardSource``) and one registry.

The registry says what each source offers without importing it (the sources import torch, and
the web form and config validation must not): its class as ``"module:Class"``, its dimensions,
and which of them it can differentiate (what ReFL needs).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

GLOBAL = "global"  # the mean of a source's dimensions, each normalised to [0, 1]
# the reward guards a run may set (``reward_guard``; vpo/rewards/guard.py applies them)
GUARDS = ("none", "subject", "subject-veto")


@dataclass(frozen=True)
class Source:
    path: str  # "module:Class"
    dimensions: tuple[str, ...]
    differentiable: tuple[str, ...]  # dimensions with a torch-differentiable score
    description: str
    # dimension -> the raw measures (ScoreResult.raw, natural units) its score is made of
    measures: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # dimension -> why its value is not what the name says (e.g. a time-blind source's "temporal")
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def choices(self) -> tuple[str, ...]:
        """What a run may train on with this source: its dimensions and ``global``."""
        return (*self.dimensions, GLOBAL)


REWARD_SOURCES: dict[str, Source] = {
    "metrics": Source(
        "vpo.rewards.metrics:MetricsSource",
        ("visual", "temporal", "dynamic", "alignment"),
        ("visual", "temporal"),
        "weight-free VBench-style measures (CPU); visual is a proxy",
        {
            "visual": ("imaging_proxy",),
            "temporal": ("temporal_flickering", "subject_consistency"),
            "dynamic": ("dynamic_degree", "flow_top5"),
            "alignment": (),  # the ground-truth detector's match with the prompt: no raw measure
        },
    ),
    "image-metrics": Source(
        "vpo.rewards.image_metrics:ImageMetricsSource",
        ("visual", "temporal"),
        ("visual", "temporal"),
        "per-frame measures averaged over frames: the image-level baseline",
        {"visual": ("imaging_proxy",), "temporal": ("imaging_proxy",)},
        {
            # the baseline's point (an image reward such as HPSv2 used on video, OnlineVPO Table 2):
            # asked about time, an image judge can only answer with its per-frame quality
            "temporal": "image-metrics is blind to time (it scores each frame on its own): its "
            "'temporal' is its per-frame visual score, the image-level baseline OnlineVPO compares "
            "video rewards against; use --reward metrics for a temporal measure",
        },
    ),
    "videoscore": Source(
        "vpo.rewards.videoscore:VideoScoreSource",
        ("visual", "temporal", "dynamic", "alignment"),
        (),
        "VideoScore (Idefics2 regression) from a local weights directory",
        {d: (f"videoscore_{d}",) for d in ("visual", "temporal", "dynamic", "alignment")},
    ),
    "videoreward": Source(
        "vpo.rewards.videoreward:VideoRewardSource",
        ("visual", "temporal", "alignment"),
        (),
        "VideoReward (VideoAlign: Qwen2-VL-2B + reward head; VQ, MQ, TA) from a local weights directory",
    ),
    "physics": Source(
        "vpo.rewards.physics:PhysicsSource",
        ("trajectory", "contact"),
        (),
        "the physics world's simulator rolled out from the video's first frame and caption, against the "
        "detector's trajectories (CPU; captions of vpo/data/physics.py only)",
        {"trajectory": ("trajectory_error",), "contact": ("contact_offset",)},
    ),
    # its dimensions are the heads of the model it loads (``reward_model = DIR``): ``heads_of``
    "learned": Source(
        "vpo.rewards.learned:LearnedSource",
        (),
        (),
        "a reward model trained from preference pairs, e.g. a study's votes (vpo reward-model train)",
    ),
}

# every dimension some source offers, in the order the sources first name them
DIMENSIONS: tuple[str, ...] = tuple(dict.fromkeys(d for s in REWARD_SOURCES.values() for d in s.dimensions))


def source_info(name: str) -> Source:
    if name not in REWARD_SOURCES:
        raise ValueError(f"unknown reward source {name!r}; valid: {', '.join(REWARD_SOURCES)}")
    return REWARD_SOURCES[name]


def dimensions_of(name: str, reward_model: str = "") -> tuple[str, ...]:
    """The dimensions of source ``name``: the registry's, or for ``learned`` the heads of the
    reward model in ``reward_model`` (read from its folder, torch-free; a ValueError if it is not one)."""
    if name == "learned":
        from vpo.reward_model import heads_of

        return heads_of(reward_model)
    return source_info(name).dimensions


def prompt_problem(name: str, prompts: list[str]) -> str | None:
    """Why source ``name`` cannot score one of ``prompts`` at all, or None: ``physics`` reads only
    captions of the physics world (it simulates the scene they describe); the others read any prompt."""
    if name != "physics":
        return None
    from vpo.data.physics import parse_caption  # numpy only: the web form calls this too

    bad = next((p for p in prompts if parse_caption(p) is None), None)
    if bad is None:
        return None
    return (
        f"reward 'physics' scores only captions of the physics world (vpo/data/physics.py, e.g. 'a red rubber "
        f"ball dropped from high bounces high on a blue floor'); {bad!r} is not one"
    )


def load_reward(name: str, **kwargs):
    """An instance of the source ``name``; ``kwargs`` go to its constructor (e.g. ``directory``)."""
    module, cls = source_info(name).path.split(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)


def available_sources() -> tuple[list, dict[str, str]]:
    """Every source that loads here, and for each one that does not, why (e.g. no weights dir)."""
    loaded, missing = [], {}
    for name in REWARD_SOURCES:
        try:
            loaded.append(load_reward(name))
        except ValueError as e:
            missing[name] = str(e)
    return loaded, missing
