"""Built-in prompt sets (one prompt per line, ``#`` comments) and prompt-file reading; the
image-to-video sets, whose prompts come with a first frame each."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the web process reads the set names: numpy only where frames are rendered
    import numpy as np

HERE = Path(__file__).parent
BUILTIN = {p.stem: p for p in sorted(HERE.glob("*.txt"))}
# image-to-video prompt sets: name -> scenes of the physics world (vpo/data/physics.py), each a
# caption and its first frame rendered from the scene (training scenes / held-out scenes)
IMAGE_SETS = {"physics-train": 64, "physics-heldout": 16}


@functools.cache
def _image_set(name: str) -> tuple[tuple[str, ...], np.ndarray]:
    import numpy as np

    from vpo.data import physics

    n = IMAGE_SETS[name]
    scenes = physics.heldout_scenes(n) if name == "physics-heldout" else physics.train_scenes(n)
    frames = np.stack([physics.render(s.state)[0] for s in scenes])
    frames.flags.writeable = False  # cached: shared by every caller
    return tuple(s.caption for s in scenes), frames


def read_image_prompts(name: str) -> tuple[list[str], np.ndarray]:
    """An image-to-video prompt set: its captions and their first frames, uint8 (N, H, W, 3)."""
    if name not in IMAGE_SETS:
        raise ValueError(f"no image prompt set {name!r} (image prompt sets: {', '.join(IMAGE_SETS)})")
    captions, frames = _image_set(name)
    return list(captions), frames


def parse_prompts(text: str) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def read_prompts(path) -> list[str]:
    """Prompts from a file, or from a built-in set by name (``demo``, ``heldout64``; an image set's
    captions alone)."""
    if str(path) in IMAGE_SETS:
        return read_image_prompts(str(path))[0]
    if str(path) in BUILTIN:
        path = BUILTIN[str(path)]
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no prompt file {path} (built-in sets: {', '.join(BUILTIN)})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text: {e}") from None
    prompts = parse_prompts(text)
    if not prompts:
        raise ValueError(f"no prompts in {path}: expected one prompt per line")
    return prompts


def check_prompts(prompts: list[str]) -> list[str]:
    prompts = [p.strip() for p in prompts]
    if not prompts or not all(prompts):
        raise ValueError("need at least one non-empty prompt")
    return prompts
