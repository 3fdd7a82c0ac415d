"""Where a training run reports to. The loop calls a sink; it never prints or writes files itself.

``JsonlSink`` (the CLI's): a progress bar, ``metrics.jsonl`` (one line per step) and sample videos
under ``samples/`` (an image-to-video run's first frames beside them, ``NN.png``). The web worker's
sink (database first, then a websocket push) implements the same three methods. ``phase`` says
what the step in progress is doing (``vpo.train.keys.PHASE_*``), often: a sink keeps what it needs
of it (the progress bar's label; the dashboard's line, written at most once a second).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from vpo import video as video_io
from vpo.train.keys import PROGRESS, REWARD_MEAN


class Sink(Protocol):
    def metrics(self, step: int, values: dict[str, float]) -> None: ...

    def phase(self, step: int, name: str, done: int | None = None, total: int | None = None) -> None:
        """Step ``step`` (1-based; 0 = before training) is now at ``name``, ``done`` of ``total``
        units into it (denoising steps, noise draws) when it counts them."""

    def samples(
        self,
        step: int,
        kind: str,
        videos: np.ndarray,
        prompts: list[str],
        scores: list[float],
        labels: list[str],
        fps: int,
        images: np.ndarray | None = None,
    ) -> None:
        """Videos to show: uint8 (V, F, H, W, C) with their prompts, scores and labels; ``images``
        (image-to-video) the first frame each was conditioned on, uint8 (V, H, W, 3)."""

    def stopped(self, step: int, reason: str) -> None:
        """The run stopped at step ``step`` before its last for ``reason`` (the held-out alarm,
        ``stop_heldout``): a sentence naming the measure, its fall and the checkpoint before it."""


class JsonlSink:
    def __init__(self, out: str | Path, total_steps: int, progress: bool = True, start_step: int = 0) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.file = open(self.out / "metrics.jsonl", "a")  # noqa: SIM115 (open for the run; close() closes it)
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not progress, desc="train")
        self.t0 = time.time()
        self.stopped_reason = ""

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.file.write(json.dumps({"step": step, "time": round(time.time() - self.t0, 3), **values}) + "\n")
        self.file.flush()
        if REWARD_MEAN in values:
            self.bar.set_postfix({k.split("/")[-1]: f"{v:.3f}" for k, v in values.items() if k in PROGRESS})
            self.bar.n = step
            self.bar.refresh()

    def phase(self, step: int, name: str, done: int | None = None, total: int | None = None) -> None:
        self.bar.set_description_str(name, refresh=False)  # shown with the next refresh: no extra writes

    def samples(
        self,
        step: int,
        kind: str,
        videos: np.ndarray,
        prompts: list[str],
        scores: list[float],
        labels: list[str],
        fps: int,
        images: np.ndarray | None = None,
    ) -> None:
        folder = self.out / "samples" / f"step_{step:06d}_{kind}"
        entries = []
        for i, (v, p, s, label) in enumerate(zip(videos, prompts, scores, labels)):
            files = video_io.save_video(v, folder, f"{i:02d}", fps)
            if images is not None:  # the first frame as the backbone got it, as `vpo sample` writes it
                files["image"] = video_io.write_image(images[i], folder / f"{i:02d}.png").name
            entries.append({"prompt": p, "score": s, "label": label, **files})
        (folder / "samples.json").write_text(json.dumps({"step": step, "kind": kind, "videos": entries}, indent=1))

    def stopped(self, step: int, reason: str) -> None:
        """Kept for the command to print, and in ``stopped.txt`` beside the metrics."""
        self.stopped_reason = reason
        (self.out / "stopped.txt").write_text(reason + "\n")

    def close(self) -> None:
        self.bar.close()
        self.file.close()


def read_metrics(out: str | Path) -> list[dict]:
    path = Path(out) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
