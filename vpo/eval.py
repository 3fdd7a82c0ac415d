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

COLUMNS = (
    "temporal_flickering",
    "subject_consistency",
    "motion_smoothness",
    "dynamic_degree",
    "imaging_quality",
    "alignment",
    "quality_score",
)
QUALITY_WEIGHTS = {
    "subject_consistency": 1.0,
    "temporal_flickering": 1.0,
    "motion_smoothness": 1.0,
    "dynamic_degree": 0.5,
    "imaging_quality": 1.0,
}


def per_video(videos: torch.Tensor, prompts: list[str], fps: int) -> dict[str, np.ndarray]:
    """Every column's value for each video (dynamic degree 0/1; alignment NaN where the prompt
    names nothing the detector knows). The table's rows are their means."""
    v = videos.float()
    values = {
        "temporal_flickering": M.temporal_flickering(v).numpy(),
        "subject_consistency": M.subject_consistency(v).numpy(),
        "motion_smoothness": M.motion_smoothness(v).numpy(),
        "dynamic_degree": np.array([float(M.dynamic_degree(x, fps)[0] >= 1.0) for x in videos.numpy()]),
        "imaging_quality": M.imaging_proxy(v).numpy(),
    }
    aligned = [alignment_score(x, p) for x, p in zip(videos.numpy(), prompts)]
    values["alignment"] = np.array([np.nan if a is None else a for a in aligned], dtype=float)
    return values


def summarise(values: dict[str, np.ndarray]) -> dict[str, float]:
    row = {k: float(np.nanmean(x)) if np.isfinite(x).any() else float("nan") for k, x in values.items()}
    row["quality_score"] = sum(
        w * M.normalise(torch.tensor(row[k]), *M.VBENCH_RANGE[k]).item() for k, w in QUALITY_WEIGHTS.items()
    ) / sum(QUALITY_WEIGHTS.values())
    return row


def evaluate_videos(videos: torch.Tensor, prompts: list[str], fps: int) -> dict[str, float]:
    return summarise(per_video(videos, prompts, fps))


def paired_difference(base: dict[str, np.ndarray], tuned: dict[str, np.ndarray]) -> dict[str, dict]:
    """Checkpoint minus base per column, paired by video (same prompt, same seed): the mean, its
    95% t-interval, and on how many videos the checkpoint is better / worse. Pairing removes the
    prompt-to-prompt spread, so a small but consistent change is told apart from noise."""
    from scipy import stats

    out = {}
    for k in base:
        d = tuned[k] - base[k]
        d = d[np.isfinite(d)]
        n = len(d)
        if n == 0:
            continue
        half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
        out[k] = {
            "mean": float(d.mean()),
            "ci95": [float(d.mean() - half), float(d.mean() + half)],
            "better": int((d > 0).sum()),
            "worse": int((d < 0).sum()),
            "n": n,
        }
    return out


def sample_all(backbone, prompts, seed: int, steps: int, guidance: float, chunk: int = 12) -> torch.Tensor:
    seeds = [seed + i for i in range(len(prompts))]
    return backbone.sample_many(prompts, seeds, steps=steps, guidance=guidance, chunk=chunk)


def compare(
    backbone_name: str,
    checkpoint,
    prompts: list[str],
    seed: int = 0,
    steps: int = 20,
    guidance: float = 4.0,
    device: str = "cpu",
) -> dict[str, dict]:
    """{"base": row, "checkpoint": row, "difference": ``paired_difference`` of the two} on the same
    prompts and seeds."""
    from vpo.backbones import load_backbone
    from vpo.train.checkpoints import load_policy

    backbone = load_backbone(backbone_name, device=device)
    fps = backbone.spec.fps
    base = per_video(sample_all(backbone, prompts, seed, steps, guidance), prompts, fps)
    load_policy(backbone, checkpoint)
    tuned = per_video(sample_all(backbone, prompts, seed, steps, guidance), prompts, fps)
    return {"base": summarise(base), "checkpoint": summarise(tuned), "difference": paired_difference(base, tuned)}


def format_table(result: dict[str, dict]) -> str:
    names = {
        "temporal_flickering": "temp.flicker",
        "subject_consistency": "subject",
        "motion_smoothness": "smooth",
        "dynamic_degree": "dynamic",
        "imaging_quality": "imaging*",
        "alignment": "align",
        "quality_score": "quality",
    }
    lines = [f"{'model':<11}" + "".join(f"{names[c]:>13}" for c in COLUMNS)]
    for model in ("base", "checkpoint"):
        lines.append(f"{model:<11}" + "".join(f"{100 * result[model][c]:>12.2f}%" for c in COLUMNS))
    diff = result.get("difference")
    if diff:

        def cell(c, fmt) -> str:
            return f"{fmt(diff[c]):>13}" if c in diff else f"{'':>13}"

        lines.append(f"{'difference':<11}" + "".join(cell(c, lambda d: f"{100 * d['mean']:+.2f}") for c in COLUMNS))
        lines.append(
            f"{'  95% CI':<11}"
            + "".join(cell(c, lambda d: f"{100 * d['ci95'][0]:+.2f}..{100 * d['ci95'][1]:+.2f}") for c in COLUMNS)
        )
        lines.append(f"{'  better':<11}" + "".join(cell(c, lambda d: f"{d['better']}/{d['n']}") for c in COLUMNS))
        lines.append(
            "difference: checkpoint - base in points, paired by video (same prompt and seed); "
            "95% CI: t-interval; better: videos where the checkpoint scores higher."
        )
    lines.append("* imaging: weight-free proxy, not MUSIQ. quality: VBench-normalised, dynamic weighted 0.5.")
    return "\n".join(lines)
