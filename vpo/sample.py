"""Sample videos to a folder with a manifest (``vpo sample``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vpo import video as video_io
from vpo.data import prompts as prompt_sets

# Videos per forward batch (x2 with CFG); bounds memory for long prompt lists.
CHUNK = 6


def sample_to_dir(
    backbone,
    prompts: list[str],
    out,
    seed: int = 0,
    num_per_prompt: int = 1,
    steps: int = 20,
    guidance: float = 4.0,
    checkpoint: str | None = None,
    guide=None,
    extra: dict | None = None,
    sampler: str = "euler",
    images: np.ndarray | None = None,
) -> Path:
    """Sample ``num_per_prompt`` videos per prompt (seeds ``seed``, ``seed + 1``, ... in order) and
    write ``<i>.npy`` + ``<i>.mp4`` per video and ``manifest.json``; returns the manifest path.
    ``guide`` changes each step's velocity (Flow-NRG, ``vpo/guidance.py``); ``extra`` goes into the
    manifest (what the guide was). ``images``: an image-to-video backbone's first frames, uint8
    (len(prompts), H, W, 3) at its size; each is written as ``<i>.png`` beside its video and named
    in the manifest (``image``)."""
    prompts = prompt_sets.check_prompts(prompts)
    if num_per_prompt < 1:
        raise ValueError(f"num_per_prompt must be >= 1, got {num_per_prompt}")
    out = Path(out)
    jobs = [(p, seed + i) for i, p in enumerate(p for p in prompts for _ in range(num_per_prompt))]
    frames = None if images is None else np.repeat(np.asarray(images), num_per_prompt, axis=0)
    spec = backbone.spec
    entries = []
    for start, videos in backbone.sample_chunks(
        [p for p, _ in jobs],
        [s for _, s in jobs],
        steps=steps,
        guidance=guidance,
        chunk=CHUNK,
        guide=guide,
        sampler=sampler,
        images=frames,
    ):
        for j, v in enumerate(videos.numpy()):
            prompt, s = jobs[start + j]
            stem = f"{start + j:04d}"
            files = video_io.save_video(v, out, stem, spec.fps)
            if frames is not None:
                files["image"] = video_io.write_image(frames[start + j], out / f"{stem}.png").name
            entries.append({"prompt": prompt, "seed": s, **files})
    manifest = {
        "backbone": backbone.name,
        "checkpoint": checkpoint,
        "steps": steps,
        "sampler": sampler,
        "guidance": guidance,
        "frames": spec.frames,
        "height": spec.height,
        "width": spec.width,
        "fps": spec.fps,
        **(extra or {}),
        "videos": entries,
    }
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path
