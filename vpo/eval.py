"""``vpo eval``: base vs a trained checkpoint on a fixed-seed prompt set, in the layout of OnlineVPO's
Table 3. Two suites:

* ``builtin`` (default): the weight-free measures of ``vpo/rewards/measures.py``. Each column is labelled
  ``exact`` or ``proxy (what it stands in for)`` (``vpo.vbench.BUILTIN_DIMENSIONS``); temporal flickering is
  scored, as VBench does, only on videos its static filter keeps (how many is reported), and also on all
  videos. The quality score is VBench's formula over the quality dimensions computed, with proxies: it is
  labelled as not VBench's.
* ``vbench``: the official VBench package in its own virtualenv (``vpo.vbench.run_official``) on the mp4s.

Columns: the suite's dimensions, alignment (builtin only: the world's ground-truth detector, over prompts it
can parse) and ``quality_score`` (``vpo.vbench.quality_score``, not clamped).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import torch

from vpo import vbench
from vpo.data.detector import detect, motion_extent, presence
from vpo.rewards import measures as M
from vpo.rewards.metrics import alignment_score
from vpo.train.config import LIMITS

COLUMNS = (
    "temporal_flickering",
    "temporal_flickering_all",
    "subject_consistency",
    "motion_smoothness",
    "dynamic_degree",
    "imaging_quality",
    "alignment",
    "presence",
    "motion_extent",
    "quality_score",
)
VBENCH_COLUMNS = (*vbench.SUITE_DIMENSIONS, "quality_score")
SUITES = ("builtin", "vbench")
SHORT = {
    "temporal_flickering": "flicker",
    "temporal_flickering_all": "flicker.all",
    "subject_consistency": "subject",
    "background_consistency": "background",
    "motion_smoothness": "smooth",
    "dynamic_degree": "dynamic",
    "aesthetic_quality": "aesthetic",
    "imaging_quality": "imaging",
    "alignment": "align",
    "presence": "present",
    "motion_extent": "motion",
    "quality_score": "quality",
}


def per_video(videos: torch.Tensor, prompts: list[str], fps: int) -> dict[str, np.ndarray]:
    """Every column's value for each video (dynamic degree 0/1; alignment NaN where the prompt names
    nothing the detector knows; ``temporal_flickering`` NaN for a video VBench's static filter drops, and
    ``static`` 1/0 for kept/dropped). The table's rows are their means."""
    v = videos.float()
    frames = videos.numpy()
    flicker = M.temporal_flickering(v).numpy()
    static = np.array([float(M.is_static(x)) for x in frames])
    values = {
        "temporal_flickering": np.where(static == 1, flicker, np.nan),
        "temporal_flickering_all": flicker,
        "subject_consistency": M.subject_consistency(v).numpy(),
        "motion_smoothness": M.motion_smoothness(v).numpy(),
        "dynamic_degree": np.array([float(M.dynamic_degree(x, fps)[0] >= 1.0) for x in frames]),
        "imaging_quality": M.imaging_proxy(v).numpy(),
        "static": static,
    }
    found = [detect(x) for x in frames]
    for name, values_of in (
        ("alignment", [alignment_score(x, p, d) for x, p, d in zip(frames, prompts, found)]),
        ("presence", [presence(x, p, d) for x, p, d in zip(frames, prompts, found)]),
        ("motion_extent", [motion_extent(x, p) for x, p in zip(frames, prompts)]),
    ):
        values[name] = np.array([np.nan if a is None else a for a in values_of], dtype=float)
    return values


def summarise(
    values: dict[str, np.ndarray],
    labels: dict[str, vbench.Dimension] | None = None,
    quality_over: tuple[str, ...] | None = None,
) -> dict[str, float]:
    """Means per column (NaN where no video has a value), ``static_kept`` (videos the static filter kept)
    and ``videos``, and the quality score over ``quality_over`` (default: the quality dimensions with a
    value)."""
    labels = vbench.BUILTIN_DIMENSIONS if labels is None else labels
    row = {
        k: float(np.nanmean(x)) if np.isfinite(x).any() else float("nan") for k, x in values.items() if k != "static"
    }
    row["videos"] = len(next(iter(values.values())))
    if "static" in values:
        row["static_kept"] = int(values["static"].sum())
    picked = row if quality_over is None else {d: row[d] for d in quality_over if d in row}
    row["quality_score"] = vbench.quality_score(picked, labels).value
    return row


def quality_info(rows: list[dict[str, float]], labels: dict[str, vbench.Dimension]) -> vbench.QualityScore:
    """The dimensions a set of rows share: a quality score is compared only over the same dimensions (a
    model whose videos the static filter all drops has no flickering, so neither row's score counts it)."""
    shared = {d: 0.0 for d in vbench.QUALITY_DIMENSIONS if all(np.isfinite(r.get(d, np.nan)) for r in rows)}
    # which dimensions, not a value: each row's score is its own ``quality_score``
    return dataclasses.replace(vbench.quality_score(shared, labels), value=float("nan"))


def paired_difference(base: dict[str, np.ndarray], tuned: dict[str, np.ndarray]) -> dict[str, dict]:
    """Checkpoint minus base per column, paired by video (same prompt, same seed): the mean, its
    95% t-interval, and on how many videos the checkpoint is better / worse. Pairing removes the
    prompt-to-prompt spread, so a small but consistent change is told apart from noise."""
    from vpo.stats import t_half_width

    out = {}
    for k in base:
        d = tuned[k] - base[k]
        d = d[np.isfinite(d)]
        n = len(d)
        if n == 0:
            continue
        half = t_half_width(d)
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
    suite: str = "builtin",
    vbench_device: str | None = None,
    vbench_dimensions: tuple[str, ...] | list[str] | None = None,
    work_dir: Path | None = None,
    flow_shift: float | None = None,
) -> dict:
    """{"base": row, "checkpoint": row, "difference": ``paired_difference`` of the two, "suite", "labels":
    {column: "exact" / "proxy (...)" / ...}, "quality": ``QualityScore.as_dict``, "sampling": how both
    were sampled} on the same prompts and seeds (prompt i: seed + i), Euler steps on the schedule the
    checkpoint's run sampled on (its ``flow_shift``; ``load_for_checkpoint``), or on the one ``flow_shift``
    names (0: the backbone's default), so that runs trained on different schedules are judged on the
    same one. Both rows' quality scores are over the dimensions both have. ``vbench_dimensions``: the
    official suite's dimensions (default: VBench's 7 quality dimensions)."""
    from vpo.backbones import load_for_checkpoint
    from vpo.train.checkpoints import load_policy

    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    if not 1 <= steps <= LIMITS["sampling_steps"]:
        raise ValueError(f"steps must be between 1 and {LIMITS['sampling_steps']}, got {steps}")
    if not guidance >= 1:  # also refuses NaN
        raise ValueError(f"guidance must be >= 1 (1 = no guidance), got {guidance}")
    dims = tuple(vbench_dimensions or vbench.SUITE_DIMENSIONS)
    if suite == "vbench":  # refuse before sampling anything when the official package cannot run
        vbench.check_runnable(dims)
    backbone = load_for_checkpoint(backbone_name, checkpoint, device, flow_shift)
    fps = backbone.spec.fps
    base_videos = sample_all(backbone, prompts, seed, steps, guidance)
    load_policy(backbone, checkpoint)
    tuned_videos = sample_all(backbone, prompts, seed, steps, guidance)
    if suite == "builtin":
        labels = vbench.BUILTIN_DIMENSIONS
        base, tuned = per_video(base_videos, prompts, fps), per_video(tuned_videos, prompts, fps)
    else:
        labels = vbench.OFFICIAL_DIMENSIONS
        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            base = official_per_video(base_videos, prompts, fps, Path(tmp) / "base", vbench_device or device, dims)
            tuned = official_per_video(
                tuned_videos, prompts, fps, Path(tmp) / "checkpoint", vbench_device or device, dims
            )
    rows = {"base": summarise(base, labels), "checkpoint": summarise(tuned, labels)}
    quality = quality_info(list(rows.values()), labels)
    for name, values in (("base", base), ("checkpoint", tuned)):
        rows[name] = summarise(values, labels, quality.dimensions)
    return {
        **rows,
        "difference": paired_difference(_columns(base), _columns(tuned)),
        "suite": suite,
        "labels": {c: labels[c].label for c in labels} | {"quality_score": quality.label},
        "quality": quality.as_dict(),
        "sampling": {
            "sampler": "euler",
            "steps": steps,
            "guidance": guidance,
            "flow_shift": float(getattr(backbone, "flow_shift", 0.0)),  # 0: the backbone's schedule
            "flow_shift_chosen": flow_shift is not None,  # False: the run's
            "seed": seed,
            "videos": len(prompts),
        },
    }


def _columns(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: x for k, x in values.items() if k != "static"}


def official_per_video(
    videos: torch.Tensor,
    prompts: list[str],
    fps: int,
    folder: Path,
    device: str,
    dimensions: tuple[str, ...] = vbench.SUITE_DIMENSIONS,
) -> dict[str, np.ndarray]:
    """Per-video scores of the official package on the mp4s ``vpo.video.write_mp4`` makes of ``videos``
    (H.264, what VBench reads; codec noise included)."""
    from vpo.video import write_mp4

    folder.mkdir(parents=True, exist_ok=True)
    paths = [write_mp4(x, folder / f"{i:04d}.mp4", fps) for i, x in enumerate(videos.numpy())]
    result = vbench.run_official(paths, prompts, list(dimensions), folder / "vbench", device=device)
    return {d: np.array([np.nan if x is None else x for x in r["per_video"]], dtype=float) for d, r in result.items()}


def sampling_line(sampling: dict) -> str:
    """How an evaluation's videos were sampled, in one line (``compare``'s "sampling")."""
    last = sampling["seed"] + sampling["videos"] - 1
    shift = sampling.get("flow_shift") or 0.0
    whose = "chosen for this evaluation" if sampling.get("flow_shift_chosen") else "the run's"
    schedule = f"schedule shifted by {shift:g} ({whose})" if shift else "the backbone's schedule"
    return (
        f"sampled: {sampling['videos']} videos each, seeds {sampling['seed']}..{last}, {sampling['steps']} "
        f"{sampling['sampler'].capitalize()} steps on {schedule}, CFG {sampling['guidance']:g}; base and "
        "checkpoint alike."
    )


def columns_of(result: dict) -> tuple[str, ...]:
    """The table's columns: the builtin suite's, or the official dimensions computed, in VBench's order."""
    if result.get("suite") != "vbench":
        return COLUMNS
    return tuple(c for c in VBENCH_COLUMNS if c in result["base"])


def format_table(result: dict) -> str:
    cols = columns_of(result)
    rows: list[tuple[str, list[str]]] = [("model", [SHORT[c] for c in cols])]
    for model in ("base", "checkpoint"):
        values = [result[model].get(c, float("nan")) for c in cols]
        rows.append((model, [f"{100 * v:.2f}%" if np.isfinite(v) else "–" for v in values]))
    diff = result.get("difference")
    if diff:

        def cells(fmt) -> list[str]:
            return [fmt(diff[c]) if c in diff else "" for c in cols]

        rows.append(("difference", cells(lambda d: f"{100 * d['mean']:+.2f}")))
        rows.append(("  95% CI", cells(lambda d: f"{100 * d['ci95'][0]:+.2f}..{100 * d['ci95'][1]:+.2f}")))
        rows.append(("  better", cells(lambda d: f"{d['better']}/{d['n']}")))
    # every cell right-aligned in columns wide enough for the widest (a wide interval must not run into
    # its neighbour)
    width = max(13, *(len(cell) + 2 for _, cells_ in rows for cell in cells_))
    lines = [f"{name:<11}" + "".join(f"{cell:>{width}}" for cell in cells_).rstrip() for name, cells_ in rows]
    if diff:
        lines.append(
            "difference: checkpoint - base in points, paired by video (same prompt and seed); "
            "95% CI: t-interval; better: videos where the checkpoint scores higher."
        )
    if "static_kept" in result["base"]:
        lines.append(
            "flicker: on videos VBench's static filter keeps: base {}/{}, checkpoint {}/{}; flicker.all: on "
            "every video.".format(
                result["base"]["static_kept"],
                result["base"]["videos"],
                result["checkpoint"]["static_kept"],
                result["checkpoint"]["videos"],
            )
        )
    if "sampling" in result:
        lines.append(sampling_line(result["sampling"]))
    labels = result.get("labels", {})
    for c in cols:
        if c not in result["base"]:
            continue
        if c in labels:
            lines.append(f"  {SHORT[c]:<12} {labels[c]}")
    return "\n".join(lines)
