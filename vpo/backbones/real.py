"""What the real (diffusers) backbones need, without importing torch: where their weights are
looked for, whether a folder has the expected layout, and the per-backbone training defaults.
The web form, ``TrainConfig`` and ``vpo models`` use this module; the backbones themselves live
in ``wan.py``, ``cogvideox.py`` and ``ltx.py``.

Weights are never downloaded: a real backbone loads from a local diffusers-format folder, the one
``save_pretrained`` writes or a downloaded diffusers repository has (``model_index.json`` and one
subfolder per component).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

MODELS_DIR_SETTING = "VPO_MODELS_DIR"
LAYOUT = ("model_index.json", "transformer/", "vae/", "text_encoder/", "tokenizer/", "scheduler/")
LAYOUT_TEXT = ", ".join(LAYOUT)


@dataclass(frozen=True)
class RealBackbone:
    pipeline: str  # the diffusers pipeline class named in model_index.json
    models: str  # which released models share the class
    frames: int
    height: int
    width: int
    fps: int
    # TrainConfig fields a run of this backbone takes when the user gives none
    defaults: dict = field(default_factory=dict)
    extra_layout: tuple[str, ...] = ()  # subfolders beyond LAYOUT (an I2V model's image encoder)


REAL_BACKBONES: dict[str, RealBackbone] = {
    # Wan2.1 T2V at 480p: 81 frames of 480x832 at 16 fps; 50 steps, CFG 5 in Wan's README. Sampling
    # takes 30 steps here, as the GPU benchmark's online-DPO step does. flow_grpo's Wan LoRA: r = 32.
    "wan": RealBackbone(
        "WanPipeline",
        "Wan2.1-T2V-1.3B / 14B (Diffusers)",
        81,
        480,
        832,
        16,
        {"sampling_steps": 30, "guidance": 5.0, "lora_rank": 32, "noise_draws": 2, "lr": 1e-4},
    ),
    # Wan2.1 I2V 14B at 480p (Wan2.1-I2V-14B-480P-Diffusers): the same size, steps and CFG as T2V,
    # and a CLIP vision encoder for the first frame
    "wan-i2v": RealBackbone(
        "WanImageToVideoPipeline",
        "Wan2.1-I2V-14B-480P / 720P (Diffusers)",
        81,
        480,
        832,
        16,
        {"sampling_steps": 30, "guidance": 5.0, "lora_rank": 32, "noise_draws": 2, "lr": 1e-4},
        ("image_encoder/", "image_processor/"),
    ),
    # CogVideoX 2B / 5B: 49 frames of 480x720 at 8 fps, 50 DDIM steps, CFG 6
    "cogvideox": RealBackbone(
        "CogVideoXPipeline",
        "CogVideoX-2b / CogVideoX-5b",
        49,
        480,
        720,
        8,
        {"sampling_steps": 50, "guidance": 6.0, "lora_rank": 32, "noise_draws": 2, "lr": 1e-4},
    ),
    # LTX-Video: 161 frames of 480x704 at 25 fps in its model card; 50 steps, CFG 3
    "ltx": RealBackbone(
        "LTXPipeline",
        "LTX-Video 0.9.x (Diffusers)",
        161,
        480,
        704,
        25,
        {"sampling_steps": 50, "guidance": 3.0, "lora_rank": 32, "noise_draws": 2, "lr": 1e-4},
    ),
}


def backbone_defaults(name: str) -> dict:
    """TrainConfig fields the backbone ``name`` sets when the user gives none ({} for tiny)."""
    return dict(REAL_BACKBONES[name].defaults) if name in REAL_BACKBONES else {}


def model_dir(name: str, explicit: str | os.PathLike | None = None) -> Path:
    """Where backbone ``name`` loads from: ``explicit`` (``--model-dir``), else ``$VPO_MODELS_DIR/<name>``."""
    if explicit:
        return Path(explicit)
    root = os.environ.get(MODELS_DIR_SETTING, "").strip()
    return Path(root or "models") / name


def layout_problem(name: str, folder: Path) -> str | None:
    """Why ``folder`` cannot hold backbone ``name`` (None if it has the layout): a quick check of
    the folder and its ``model_index.json``, no weights read."""
    where = f"backbone {name!r} has no weights at {folder}"
    expected = f"expected a diffusers folder with {LAYOUT_TEXT}"
    if not folder.is_dir():
        hint = f" (set --model-dir or ${MODELS_DIR_SETTING})" if not os.environ.get(MODELS_DIR_SETTING) else ""
        return f"{where}{hint}: {expected}"
    missing = [p for p in LAYOUT + REAL_BACKBONES[name].extra_layout if not (folder / p.rstrip("/")).exists()]
    if missing:
        return f"{where}: missing {', '.join(missing)}; {expected}"
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"{where}: model_index.json is not readable JSON ({e}); {expected}"
    want = REAL_BACKBONES[name].pipeline
    if not isinstance(index, dict) or index.get("_class_name") != want:
        got = index.get("_class_name") if isinstance(index, dict) else None
        return f"{folder} holds a {got!r} pipeline, not {want!r} (backbone {name!r})"
    for part in ("transformer", "vae", "text_encoder"):
        if not (folder / part / "config.json").is_file():
            return f"{where}: {part}/config.json is missing; {expected}"
    return None


def weights_status(name: str, explicit=None) -> tuple[Path | None, str | None]:
    """(where backbone ``name`` looks for weights, why they are not usable or None)."""
    if name not in REAL_BACKBONES:
        return None, None  # tiny: ships with the package
    folder = model_dir(name, explicit)
    return folder, layout_problem(name, folder)
