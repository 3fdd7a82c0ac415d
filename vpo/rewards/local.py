"""Reward sources with weights, without importing torch: where each looks for its local folder and
whether the folder is complete. ``vpo models``, the web form (sources shown greyed out with the
reason) and the sources themselves use the same checks; nothing is read beyond small files.

Weights are never downloaded: each source loads from the folder its setting names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SETTINGS = {"videoscore": "VPO_VIDEOSCORE_DIR", "videoreward": "VPO_VIDEOREWARD_DIR"}

# VideoReward: the three reward tokens of its prompt template, in the order the template places them
# (visual quality, motion quality, text alignment); VQ and MQ come before the prompt, TA after it
REWARD_TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
VIDEOREWARD_LAYOUT = (
    "model_config.json and checkpoint-<step>/model.pth (from KwaiVGI/VideoReward), "
    "config.json, preprocessor_config.json and the tokenizer files of Qwen/Qwen2-VL-2B-Instruct "
    "(not its weights), and prompt_template.txt (VideoAlign's detailed_special template with "
    "{text_prompt} where the prompt goes)"
)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")  # either: a fast tokenizer, or the BPE vocabulary


def folder(name: str, directory=None) -> Path | None:
    """Where source ``name`` loads from: ``directory`` if given, else its setting; None if neither."""
    raw = str(directory) if directory else os.environ.get(SETTINGS[name], "").strip()
    return Path(raw) if raw else None


def newest_checkpoint(directory: Path) -> Path | None:
    """VideoReward's newest ``checkpoint-<step>/model.pth`` (the released code loads the same one)."""
    steps = []
    for path in directory.glob("checkpoint-*/model.pth"):
        step = path.parent.name.removeprefix("checkpoint-")
        if step.isdigit():
            steps.append((int(step), path))
    return max(steps)[1] if steps else None


def videoreward_problem(directory: Path) -> str | None:
    """Why ``directory`` cannot hold VideoReward (None if it can)."""
    where = f"{SETTINGS['videoreward']}={directory}"
    if not directory.is_dir():
        return f"{where} is not a folder; expected {VIDEOREWARD_LAYOUT}"
    missing = [
        f for f in ("model_config.json", "config.json", "preprocessor_config.json") if not (directory / f).is_file()
    ]
    if newest_checkpoint(directory) is None:
        missing.append("checkpoint-<step>/model.pth")
    if not any((directory / f).is_file() for f in TOKENIZER_FILES):
        missing.append("tokenizer files (tokenizer.json or vocab.json)")
    if not (directory / "prompt_template.txt").is_file():
        missing.append("prompt_template.txt")
    if missing:
        return f"{where} is incomplete: no {', '.join(missing)}; expected {VIDEOREWARD_LAYOUT}"
    try:
        json.loads((directory / "model_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"{where}: model_config.json is not readable JSON ({e})"
    template = (directory / "prompt_template.txt").read_text(encoding="utf-8", errors="replace")
    if "{text_prompt}" not in template:
        return f"{directory / 'prompt_template.txt'} has no {{text_prompt}} placeholder"
    positions = [template.find(t) for t in REWARD_TOKENS]
    if min(positions) < 0 or positions != sorted(positions):
        return f"{directory / 'prompt_template.txt'} must hold {', '.join(REWARD_TOKENS)}, once each and in this order"
    return None


def videoscore_problem(directory: Path) -> str | None:
    """Why ``directory`` cannot hold VideoScore (None if it can)."""
    if not (directory / "config.json").is_file():
        return f"{SETTINGS['videoscore']}={directory} holds no VideoScore checkpoint (no config.json there)"
    if not (directory / "query_prompt.txt").is_file():
        return f"{directory / 'query_prompt.txt'} is missing: the query the checkpoint was trained with"
    return None


def weights_status(name: str, directory=None) -> tuple[str, str | None]:
    """(where source ``name`` looks for its weights, why they are not usable or None). A source
    without weights is always usable."""
    if name not in SETTINGS:
        return "-", None
    path = folder(name, directory)
    if path is None:
        return f"${SETTINGS[name]}", f"missing: set {SETTINGS[name]} to its local folder (nothing is downloaded)"
    check = videoreward_problem if name == "videoreward" else videoscore_problem
    return str(path), check(path)
