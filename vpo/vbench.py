"""VBench (Huang et al., CVPR 2024) as the product uses it: the quality-score formula, the label of every
dimension we print (exact or which model a proxy stands in for), and the official package (PyPI ``vbench``
0.1.5) as an evaluation backend run in its own virtualenv.

The official package pins transformers 4.33.2 and numpy < 2, so it cannot share ``.venv``:
``scripts/setup_vbench.sh`` builds ``.venv-vbench`` and ``run_official`` calls ``vpo/vbench_runner.py`` there
as a subprocess. VBench downloads any missing weight file with ``wget`` when it initialises a dimension
(``vbench/utils.py: init_submodules``), even with ``local=True``; so ``missing_files`` checks ``MANIFEST``
under ``VBENCH_CACHE_DIR`` first and nothing runs while a file is missing. No torch here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# VBench's 7 quality dimensions in its order (scripts/constant.py: QUALITY_LIST), the min-max range each is
# normalised with (NORMALIZE_DIC) and its weight (DIM_WEIGHT: dynamic degree 0.5, the others 1).
QUALITY_DIMENSIONS = (
    "subject_consistency",
    "background_consistency",
    "temporal_flickering",
    "motion_smoothness",
    "aesthetic_quality",
    "imaging_quality",
    "dynamic_degree",
)
NORMALISE = {
    "subject_consistency": (0.1462, 1.0),
    "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0),
    "motion_smoothness": (0.706, 0.9975),
    "dynamic_degree": (0.0, 1.0),
    "aesthetic_quality": (0.0, 1.0),
    "imaging_quality": (0.0, 1.0),  # VBench divides MUSIQ's 0-100 by 100 before (imaging_quality.py)
}
WEIGHTS = {d: 0.5 if d == "dynamic_degree" else 1.0 for d in QUALITY_DIMENSIONS}

# Files each dimension reads under VBENCH_CACHE_DIR (paths from vbench/utils.py: init_submodules, 0.1.5).
# Subject consistency loads DINO through torch.hub from a local clone of facebookresearch/dino, whose
# hubconf fetches the weights with torch.hub.load_state_dict_from_url: that finds them in
# $TORCH_HOME/hub/checkpoints, so the runner sets TORCH_HOME to VBENCH_CACHE_DIR/torch_home.
MANIFEST: dict[str, tuple[str, ...]] = {
    "subject_consistency": (
        "dino_model/dino_vitbase16_pretrain.pth",
        "dino_model/facebookresearch_dino_main/hubconf.py",
        "dino_model/facebookresearch_dino_main/vision_transformer.py",
        "torch_home/hub/checkpoints/dino_vitbase16_pretrain.pth",
    ),
    "background_consistency": ("clip_model/ViT-B-32.pt",),
    "temporal_flickering": (),
    "motion_smoothness": ("amt_model/amt-s.pth",),
    "dynamic_degree": ("raft_model/models/raft-things.pth",),
    "aesthetic_quality": ("clip_model/ViT-L-14.pt", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"),
    "imaging_quality": ("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",),
}
# what OnlineVPO's Table 3 reports, all VBench quality dimensions
SUITE_DIMENSIONS = QUALITY_DIMENSIONS


@dataclass(frozen=True)
class Dimension:
    kind: str  # "exact", "proxy" or "other" (not a VBench dimension)
    note: str  # for a proxy: what it stands in for; for exact: where it still differs, if anywhere

    @property
    def label(self) -> str:
        return f"{self.kind} ({self.note})" if self.note else self.kind


# The built-in suite (`vpo eval`, weight-free, vpo/rewards/measures.py).
BUILTIN_DIMENSIONS = {
    "temporal_flickering": Dimension(
        "exact",
        "VBench's formula on videos its static filter keeps; the filter's "
        "flow is Farneback, not RAFT; lossless frames, VBench reads the mp4",
    ),
    "temporal_flickering_all": Dimension(
        "exact",
        "VBench's formula on every video, no static filter (what the "
        "official package computes in custom_input mode); lossless frames",
    ),
    "subject_consistency": Dimension("proxy", "VBench's formula on colour histograms, stands in for DINO ViT-B/16"),
    "motion_smoothness": Dimension("proxy", "flow-warped midpoint frames, stands in for AMT-S interpolation"),
    "dynamic_degree": Dimension(
        "proxy", "VBench's rule and frame-rate subsampling on Farneback flow, stands in for RAFT"
    ),
    "imaging_quality": Dimension("proxy", "sharpness/noise/contrast, stands in for MUSIQ-SPAQ / 100; another scale"),
    "alignment": Dimension("other", "not VBench: the synthetic world's ground-truth detector"),
    "presence": Dimension("other", "not VBench: share of frames showing the prompted object (the world's detector)"),
    "motion_extent": Dimension(
        "other", "not VBench: the prompted motion's travel over the world's median, 100% = like ground truth"
    ),
}
OFFICIAL_DIMENSIONS = {
    d: Dimension(
        "exact", "official vbench 0.1.5" + (", custom_input: no static filter" if d == "temporal_flickering" else "")
    )
    for d in QUALITY_DIMENSIONS
}


@dataclass(frozen=True)
class QualityScore:
    value: float  # NaN when no dimension was computed
    dimensions: tuple[str, ...]  # the VBench quality dimensions it is over
    missing: tuple[str, ...]  # VBench quality dimensions not computed (not in the score)
    proxies: tuple[str, ...]  # of ``dimensions``, those computed by a proxy

    @property
    def is_vbench(self) -> bool:
        """Only all 7 dimensions, none a proxy, is VBench's quality score."""
        return not self.missing and not self.proxies

    @property
    def label(self) -> str:
        if self.is_vbench:
            return "VBench quality score (7 of 7 dimensions, exact)"
        text = f"not VBench's score: its formula over {len(self.dimensions)} of its 7 quality dimensions"
        if self.missing:
            text += f" (without {', '.join(self.missing)})"
        if self.proxies:
            text += f", {len(self.proxies)} of them proxies"
        return text

    def as_dict(self) -> dict:
        return {
            "value": None if math.isnan(self.value) else self.value,  # None: see each row's quality_score
            "label": self.label,
            "dimensions": list(self.dimensions),
            "missing": list(self.missing),
            "proxies": list(self.proxies),
        }


def quality_score(values: dict[str, float], labels: dict[str, Dimension] | None = None) -> QualityScore:
    """VBench's quality score (scripts/cal_final_score.py) over the quality dimensions present and finite in
    ``values``: each ``(x - min) / (max - min)`` with VBench's constants, NOT clamped (VBench does not clamp:
    a value outside the range gives a term below 0 or above 1), times its weight, summed, divided by the sum
    of the weights of the dimensions used. With all 7 exact values it is VBench's number."""
    used = [d for d in QUALITY_DIMENSIONS if d in values and values[d] is not None and math.isfinite(values[d])]
    missing = tuple(d for d in QUALITY_DIMENSIONS if d not in used)
    proxies = tuple(d for d in used if labels is not None and labels[d].kind != "exact")
    if not used:
        return QualityScore(float("nan"), (), missing, proxies)
    total = sum(WEIGHTS[d] * (values[d] - NORMALISE[d][0]) / (NORMALISE[d][1] - NORMALISE[d][0]) for d in used)
    return QualityScore(total / sum(WEIGHTS[d] for d in used), tuple(used), missing, proxies)


# --- the official package --------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where VBench looks for weights: VBENCH_CACHE_DIR, else ~/.cache/vbench (vbench/utils.py)."""
    return Path(os.environ.get("VBENCH_CACHE_DIR") or Path.home() / ".cache" / "vbench")


def missing_files(
    dimensions: tuple[str, ...] | list[str] = QUALITY_DIMENSIONS, root: Path | None = None
) -> dict[str, list[Path]]:
    """{dimension: files it needs that are not under ``root``} for every dimension asked, [] when complete."""
    root = cache_dir() if root is None else Path(root)
    unknown = [d for d in dimensions if d not in MANIFEST]
    if unknown:
        raise ValueError(f"unknown VBench dimension(s) {', '.join(unknown)}; known: {', '.join(MANIFEST)}")
    return {d: [root / f for f in MANIFEST[d] if not (root / f).is_file()] for d in dimensions}


def check_report(missing: dict[str, list[Path]], root: Path) -> str:
    lines = [f"VBENCH_CACHE_DIR = {root}"]
    for d, files in missing.items():
        if not MANIFEST[d]:
            lines.append(f"{d}: ok (needs no weights)")
        elif not files:
            lines.append(f"{d}: ok ({len(MANIFEST[d])} files)")
        else:
            lines.append(f"{d}: missing {len(files)} of {len(MANIFEST[d])} files")
            lines += [f"  {f}" for f in files]
    return "\n".join(lines)


def venv_python() -> Path:
    """The vbench virtualenv's interpreter: VBENCH_PYTHON, else .venv-vbench/bin/python in the repository."""
    if os.environ.get("VBENCH_PYTHON"):
        return Path(os.environ["VBENCH_PYTHON"])
    return Path(__file__).resolve().parent.parent / ".venv-vbench" / "bin" / "python"


class VBenchUnavailable(ValueError):
    """The official package cannot run here: no virtualenv, or weight files missing (the message lists them)."""


def check_runnable(dimensions: list[str] | tuple[str, ...]) -> Path:
    """The vbench virtualenv's interpreter, or ``VBenchUnavailable`` saying what is missing."""
    python = venv_python()
    if not python.exists():
        raise VBenchUnavailable(
            f"no vbench virtualenv at {python}: run bash scripts/setup_vbench.sh (or set VBENCH_PYTHON)"
        )
    root = cache_dir()
    missing = missing_files(dimensions, root)
    if any(missing.values()):
        raise VBenchUnavailable(
            "weights missing, nothing was run (see `vpo vbench check`):\n"
            + check_report({d: f for d, f in missing.items() if f}, root)
        )
    return python


def run_official(
    videos: list[Path],
    prompts: list[str],
    dimensions: list[str] | tuple[str, ...],
    out_dir: Path,
    device: str = "cpu",
    name: str = "vpo",
    timeout: float | None = None,
) -> dict[str, dict]:
    """Score mp4 files with the official package in its virtualenv (``vpo/vbench_runner.py``):
    ``VBench(device, full_info, out).evaluate(..., local=True, mode="custom_input")``.
    Returns {dimension: {"mean": float, "per_video": [score of videos[i]]}}. Refuses before starting when
    the virtualenv or a weight file is missing, so VBench never downloads."""
    python = check_runnable(dimensions)
    root = cache_dir()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    job = {
        "videos": [str(Path(v).resolve()) for v in videos],
        "prompts": list(prompts),
        "dimensions": list(dimensions),
        "out": str(out_dir.resolve()),
        "device": device,
        "name": name,
    }
    env = {
        **os.environ,
        "VBENCH_CACHE_DIR": str(root),
        "TORCH_HOME": str(root / "torch_home"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    runner = Path(__file__).with_name("vbench_runner.py")
    r = subprocess.run(
        [str(python), str(runner)],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=timeout,
    )
    if r.returncode != 0:
        raise RuntimeError(f"official VBench failed (exit {r.returncode}):\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main_check(dimensions: list[str] | None = None, stream=sys.stdout) -> int:
    """``vpo vbench check``: 0 when every file is there, 2 with the missing ones listed per dimension."""
    root = cache_dir()
    missing = missing_files(dimensions or list(QUALITY_DIMENSIONS), root)
    print(check_report(missing, root), file=stream)
    if any(missing.values()):
        print(
            f"{sum(map(len, missing.values()))} file(s) missing; VBench would try to download them, "
            "so no job runs until they are placed here",
            file=stream,
        )
        return 2
    return 0
