"""``metrics``: the default reward source — weight-free VBench-style measures on the CPU.

Dimensions (each normalised to [0, 1]; formulas in ``docs/metrics.md``):

* ``temporal``  — mean of VBench temporal flickering (exact formula) and a weight-free subject
  consistency, each min–max normalised with VBench's ranges;
* ``dynamic``   — VBench's dynamic-degree rule on OpenCV optical flow, adapted to our frame size,
  made graded: the share of the moving frame pairs VBench requires that were found;
* ``visual``    — a per-frame sharpness / noise / contrast *proxy* for imaging quality;
* ``alignment`` — the synthetic world's ground-truth detector against the prompt's parsed colour,
  shape and motion; NaN ("unavailable") for a prompt outside the world's vocabulary.

Raw measures beside the dimensions (not rewards: the held-out monitor's alarms, ``vpo eval``'s columns):
``presence`` (is the prompted object still in the frames) and ``motion_extent`` (how much of the prompted
motion happens, 1 = like the world's renders), both from the detector; NaN where the prompt names nothing
the world knows.

``temporal`` and ``visual`` also exist as differentiable torch functions for ReFL.
"""

from __future__ import annotations

import torch

from vpo.data import world
from vpo.data.detector import Detection, detect, motion_extent, presence
from vpo.rewards import measures as M
from vpo.rewards.base import RewardSource, ScoreResult, check_videos

# the imaging proxy of ground-truth world frames lies around 0.1-0.25; 0.3 maps crisp frames near 1
VISUAL_RANGE = (0.0, 0.3)


def temporal_score(v: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    flicker, subject = M.temporal_flickering(v), M.subject_consistency(v)
    score = (
        M.normalise(flicker, *M.VBENCH_RANGE["temporal_flickering"])
        + M.normalise(subject, *M.VBENCH_RANGE["subject_consistency"])
    ) / 2
    return score, {"temporal_flickering": flicker, "subject_consistency": subject}


def visual_score(v: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    proxy = M.imaging_proxy(v)
    return M.normalise(proxy, *VISUAL_RANGE), {"imaging_proxy": proxy}


def alignment_score(video, prompt: str, detections: list[Detection] | None = None) -> float | None:
    """Share of (colour found, shape right, motion right) over the prompt's objects; None if the
    prompt names nothing the world knows. ``detections``: ``detect(video)`` when already computed."""
    wanted = world.parse_caption(prompt)
    if wanted is None:
        return None
    found = {d.colour: d for d in (detect(video) if detections is None else detections)}
    total = 0.0
    for colour, shape, motion in wanted:
        d = found.get(colour)
        if d is not None:
            total += (1 + (d.shape == shape) + (d.motion == motion)) / 3
    return total / len(wanted)


class MetricsSource(RewardSource):
    name = "metrics"

    def score(self, videos, prompts: list[str]) -> ScoreResult:
        videos = check_videos(videos, prompts)
        v = videos.float()
        temporal, raw = temporal_score(v)
        visual, raw_visual = visual_score(v)
        raw.update(raw_visual)
        raw["motion_smoothness"] = M.motion_smoothness(v)
        numpy_videos = videos.numpy()
        dyn = [M.dynamic_degree(x) for x in numpy_videos]
        raw["dynamic_degree"] = torch.tensor([d for d, _ in dyn])
        raw["flow_top5"] = torch.tensor([m for _, m in dyn])
        result = ScoreResult(
            scores={"visual": visual, "temporal": temporal, "dynamic": raw["dynamic_degree"].clone()}, raw=raw
        )
        align, present, extent = [], [], []
        for i, (x, p) in enumerate(zip(numpy_videos, prompts)):
            found = detect(x)
            present.append(presence(x, p, found))
            extent.append(motion_extent(x, p))
            a = alignment_score(x, p, found)
            if a is None:
                result.unavailable[i] = (
                    f"alignment unavailable: {p!r} names no colour, shape and motion of the synthetic world"
                )
                a = float("nan")
            align.append(a)
        result.scores["alignment"] = torch.tensor(align)
        for name, values in (("presence", present), ("motion_extent", extent)):
            raw[name] = torch.tensor([float("nan") if v is None else v for v in values])
        return self.with_global(result)

    def score_differentiable(self, videos, prompts, dimension):
        v = check_videos(videos, prompts, differentiable=True)
        score = temporal_score if self.check_differentiable(dimension) == "temporal" else visual_score
        return score(v)[0]
