"""tiny-i2v on held-out physics scenes (``docs/physics.md``, "Image-to-video"): for each scene, one
video sampled from its first frame and caption (the scene's seed as the sampling seed), scored by
the frame-0 error (mean |pixel difference|, 0-255, of the video's frame 0 vs the given frame) and
the physics trajectory error (``physics.trajectory_error``, px) against the simulator, with 95%
bootstrap intervals. Rows: the rendered ground truth; the first frame held still; the shipped
tiny-i2v; tiny-i2v before fine-tuning (tiny's weights, a zero image embedding: frame 0 given,
nothing learnt from it); text-to-video ``tiny`` from the caption alone.

    python benchmarks/physics_i2v.py              # n = 64 held-out scenes, the figures in docs/physics.md
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from vpo.backbones.tiny import TinyBackbone
from vpo.backbones.tiny_i2v import TinyI2VBackbone
from vpo.data import physics
from vpo.stats import bootstrap_mean_ci


def score(videos: np.ndarray, scenes: list[physics.PhysScene]) -> dict[str, np.ndarray]:
    frame0 = np.array([np.abs(v[0].astype(float) - s.render()[0]).mean() for v, s in zip(videos, scenes)])
    traj = np.array([physics.trajectory_error(v, s.state) for v, s in zip(videos, scenes)])
    return {"frame0": frame0, "trajectory": traj}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weights", help="tiny-i2v weights (default: the shipped ones)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)")
    scenes = physics.heldout_scenes(args.n)
    captions, seeds = [s.caption for s in scenes], [s.seed for s in scenes]
    first = np.stack([s.render()[0] for s in scenes])
    truth = score(np.stack([s.render() for s in scenes]), scenes)["trajectory"]
    rows = {"ground truth (rendered)": {"frame0": np.zeros(len(scenes)), "trajectory": truth}}
    # the first frame held for the whole clip: what a model that ignores the physics would score
    rows["first frame held (no motion)"] = score(np.repeat(first[:, None], physics.FRAMES, 1), scenes)
    models = {
        "tiny-i2v (shipped)": lambda: TinyI2VBackbone.load(args.weights),
        "tiny-i2v before fine-tuning": TinyI2VBackbone.from_tiny,
        "tiny (text only)": TinyBackbone.load,
    }
    for name, make in models.items():
        model = make().eval()
        t = time.perf_counter()
        images = first if model.image_conditioned else None
        videos = model.sample_many(captions, seeds, steps=args.steps, guidance=args.guidance, images=images).numpy()
        rows[name] = score(videos, scenes)
        print(f"{name}: sampled {len(scenes)} in {time.perf_counter() - t:.1f} s")
    print(f"\n{args.n} held-out scenes, {args.steps} steps, CFG {args.guidance}")
    print("| videos | frame-0 error (0-255) | trajectory error (px), mean [95% CI] | median |")
    print("|---|---:|---:|---:|")
    for name, r in rows.items():
        lo, hi = bootstrap_mean_ci(r["trajectory"])  # scenes resampled with replacement
        print(
            f"| {name} | {r['frame0'].mean():.2f} | {r['trajectory'].mean():.2f} [{lo:.2f}, {hi:.2f}] "
            f"| {np.median(r['trajectory']):.2f} |"
        )
    kinds = np.array([s.state.kind for s in scenes])
    print("\nper kind, trajectory error mean (px):")
    for kind in physics.KINDS:
        sel = kinds == kind
        print(
            f"  {kind:8s} n={sel.sum():2d}  "
            + "  ".join(f"{n}: {r['trajectory'][sel].mean():.2f}" for n, r in rows.items())
        )


if __name__ == "__main__":
    main()
