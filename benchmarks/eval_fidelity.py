"""How far `vpo eval`'s numbers move when they follow VBench: old rule vs new, on the same inputs, in one run.

    python benchmarks/eval_fidelity.py [--videos 14] [--samples 32]

* motion smoothness of a square moving at constant velocity, with jitter, back and forth: linear midpoints (the
  old proxy) vs flow-warped midpoints (the new one);
* dynamic degree at 4 / 16 / 24 fps: the old threshold factor max(1, 8 / fps) on all frames vs VBench's
  subsampling (every max(1, round(fps / 8))-th frame, threshold kept): how many decisions differ;
* temporal flickering on lossless frames vs the same videos read back from our mp4 (what VBench reads), and how
  many videos VBench's static filter keeps: on ground-truth renders of the world and on the tiny model's samples.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

from vpo.data import world
from vpo.data.clips import moving_square
from vpo.rewards import measures as M

square = moving_square


def linear_smoothness(v: np.ndarray) -> float:
    v = v.astype(np.float64)
    middle = (v[:-2:2] + v[2::2]) / 2
    return float((255 - np.abs(middle - v[1:-1:2][: len(middle)]).mean()) / 255)


def old_dynamic(video: np.ndarray, fps: float) -> bool:
    mags = M.flow_magnitudes(video)
    f, h, w = video.shape[:3]
    return bool((mags > max(1.0, 8.0 / fps) * 6.0 * min(h, w) / 256.0).sum() >= max(1, round(4 * f / 16)))


def flicker_npy_vs_mp4(videos: np.ndarray, fps: int) -> tuple[np.ndarray, np.ndarray]:
    from vpo.video import write_mp4

    lossless = M.temporal_flickering(torch.tensor(videos).double()).numpy()
    read = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, v in enumerate(videos):
            cap, frames = cv2.VideoCapture(str(write_mp4(v, Path(tmp) / f"{i}.mp4", fps))), []
            while (ok := cap.read())[0]:
                frames.append(ok[1])
            read.append(M.temporal_flickering(torch.tensor(np.stack(frames))[None].double()).item())
    return lossless, np.array(read)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=14, help="ground-truth world videos")
    ap.add_argument("--samples", type=int, default=32, help="tiny samples of heldout64 (0: skip)")
    args = ap.parse_args()

    n = 16
    constant = 3 + 1.6 * np.arange(n)
    clips = {
        "constant 1.6 px/frame": constant,
        "jitter (+-1 px)": constant + np.random.default_rng(0).uniform(-1, 1, n),
        "back and forth": 3 + np.where(np.arange(n) % 2 == 0, 0.0, 1.6),
        "still": np.full(n, 10.0),
    }
    print("motion smoothness        linear (old)   flow-warped (new)")
    for name, xs in clips.items():
        v = square(xs)
        print(
            f"  {name:<22} {linear_smoothness(v):.4f}         "
            f"{M.motion_smoothness(torch.tensor(v)[None].float()).item():.4f}"
        )

    videos = np.stack([world.sample_scene(s).render() for s in range(args.videos)])
    differ = total = 0
    for fps in (4, 16, 24):
        for v in videos:
            total += 1
            differ += old_dynamic(v, fps) != (M.dynamic_degree(v, fps)[0] >= 1.0)
    print(
        f"dynamic degree: {differ} of {total} decisions differ between the old rule and VBench's "
        f"({args.videos} world videos at 4, 16, 24 fps)"
    )

    sets = {"world ground truth": videos}
    if args.samples:
        from vpo.backbones import load_backbone
        from vpo.data.prompts import read_prompts
        from vpo.eval import sample_all

        backbone = load_backbone("tiny")
        prompts = read_prompts("heldout64")[: args.samples]
        sets[f"tiny samples ({len(prompts)} heldout64)"] = sample_all(backbone, prompts, 0, 20, 4.0).numpy()
    for name, vs in sets.items():
        lossless, mp4 = flicker_npy_vs_mp4(vs, world.FPS)
        kept = sum(M.is_static(v) for v in vs)
        print(
            f"{name}: flickering lossless {100 * lossless.mean():.2f}, from mp4 {100 * mp4.mean():.2f} "
            f"(mp4 - lossless {100 * (mp4 - lossless).mean():+.3f} points, "
            f"per video {100 * (mp4 - lossless).min():+.3f}"
            f"..{100 * (mp4 - lossless).max():+.3f}); static filter keeps {kept}/{len(vs)}"
        )


if __name__ == "__main__":
    main()
