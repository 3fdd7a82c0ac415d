"""``vpo eval``: base vs a trained checkpoint on a fixed-seed prompt set, VBench-style
(the layout of OnlineVPO's Table 3), with the measures of ``vpo/rewards/measures.py``.

Columns: temporal flickering, subject consistency, motion smoothness, dynamic degree (share of
videos VBench's rule calls dynamic), imaging quality (our weight-free proxy), alignment (ground-
truth detector; over prompts it can parse) and a VBench-style quality score: each quality
dimension min-max normalised with VBench's ranges, dynamic degree weighted 0.5, summed / 5.5 (the
aesthetic dimension needs LAION weights and is left out).
"""

from __future__ import annotations

import numpy as np
import torch

from vpo.rewards import measures as M
from vpo.rewards.metrics import alignment_score

COLUMNS = ("temporal_flickering", "subject_consistency", "motion_smoothness", "dynamic_degree", "imaging_quality",
           "alignment", "quality_score")
QUALITY_WEIGHTS = {"subject_consistency": 1.0, "temporal_flickering": 1.0, "motion_smoothness": 1.0,
                   "dynamic_degree": 0.5, "imaging_quality": 1.0}


def evaluate_videos(videos: torch.Tensor, prompts: list[str], fps: int) -> dict[str, float]:
    v = videos.float()
    row = {
        "temporal_flickering": M.temporal_flickering(v).mean().item(),
        "subject_consistency": M.subject_consistency(v).mean().item(),
        "motion_smoothness": M.motion_smoothness(v).mean().item(),
        "dynamic_degree": float(np.mean([M.dynamic_degree(x, fps)[0] >= 1.0 for x in videos.numpy()])),
        "imaging_quality": M.imaging_proxy(v).mean().item(),
    }
    aligned = [a for a in (alignment_score(x, p) for x, p in zip(videos.numpy(), prompts)) if a is not None]
    row["alignment"] = float(np.mean(aligned)) if aligned else float("nan")
    row["quality_score"] = sum(w * M.normalise(torch.tensor(row[k]), *M.VBENCH_RANGE[k]).item()
                               for k, w in QUALITY_WEIGHTS.items()) / sum(QUALITY_WEIGHTS.values())
    return row


def sample_all(backbone, prompts, seed: int, steps: int, guidance: float, chunk: int = 12) -> torch.Tensor:
    seeds = [seed + i for i in range(len(prompts))]
    parts = [backbone.sample(prompts[i:i + chunk], seeds[i:i + chunk], steps=steps, guidance=guidance)
             for i in range(0, len(prompts), chunk)]
    return torch.cat(parts)


def compare(backbone_name: str, checkpoint, prompts: list[str], seed: int = 0, steps: int = 20,
            guidance: float = 4.0, device: str = "cpu") -> dict[str, dict[str, float]]:
    """{"base": row, "checkpoint": row} on the same prompts and seeds."""
    from vpo.backbones import load_backbone
    from vpo.train.runner import load_policy

    backbone = load_backbone(backbone_name, device=device)
    fps = backbone.spec.fps
    base = evaluate_videos(sample_all(backbone, prompts, seed, steps, guidance), prompts, fps)
    load_policy(backbone, checkpoint)
    tuned = evaluate_videos(sample_all(backbone, prompts, seed, steps, guidance), prompts, fps)
    return {"base": base, "checkpoint": tuned}


def format_table(result: dict[str, dict[str, float]]) -> str:
    names = {"temporal_flickering": "temp.flicker", "subject_consistency": "subject", "motion_smoothness": "smooth",
             "dynamic_degree": "dynamic", "imaging_quality": "imaging*", "alignment": "align", "quality_score": "quality"}
    lines = [f"{'model':<11}" + "".join(f"{names[c]:>13}" for c in COLUMNS)]
    for model, row in result.items():
        lines.append(f"{model:<11}" + "".join(f"{100 * row[c]:>12.2f}%" for c in COLUMNS))
    lines.append("* imaging: weight-free proxy, not MUSIQ. quality: VBench-normalised, dynamic weighted 0.5.")
    return "\n".join(lines)
