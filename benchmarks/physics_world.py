"""The physics world's agreement figures (``docs/physics.md``): over N training and N held-out
scenes, the trajectory error (mean L2, px) of the detector on the rendered ground truth against the
simulator's rollout, and of a time-reversed and a gravity-flipped copy; per scene kind.

    python benchmarks/physics_world.py            # N = 256, the figures in docs/physics.md
    python benchmarks/physics_world.py --n 64     # the tests' size
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from vpo.data import physics


def measure(scenes: list[physics.PhysScene]) -> dict[str, np.ndarray]:
    rows: dict[str, list[float]] = {"gt": [], "reversed": [], "flipped": []}
    for s in scenes:
        video = s.render()
        rows["gt"].append(physics.trajectory_error(video, s.state))
        rows["reversed"].append(physics.trajectory_error(physics.time_reversed(video), s.state))
        rows["flipped"].append(physics.trajectory_error(physics.gravity_flipped(s.state), s.state))
    return {k: np.array(v) for k, v in rows.items()}


def report(name: str, scenes: list[physics.PhysScene]) -> None:
    m = measure(scenes)
    gt = m["gt"]
    print(f"\n{name}: {len(scenes)} scenes")
    print(
        f"  ground truth: median {np.median(gt):.3f} px, 95th pct {np.percentile(gt, 95):.3f} px, max {gt.max():.3f} px"
    )
    for k in ("reversed", "flipped"):
        clear = (m[k] > 2 * gt + 1.0).mean()
        print(f"  {k}: median {np.median(m[k]):.2f} px, min {m[k].min():.2f} px; > 2 gt + 1 px on {clear:.1%}")
    kinds = np.array([s.state.kind for s in scenes])
    for kind in physics.KINDS:
        sel = kinds == kind
        if sel.any():
            print(
                f"  {kind:8s} n={sel.sum():3d}  gt median {np.median(gt[sel]):.3f} / max {gt[sel].max():.3f} px"
                f"  reversed min {m['reversed'][sel].min():.2f}  flipped min {m['flipped'][sel].min():.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, numpy {np.__version__}")
    t = time.perf_counter()
    train = physics.train_scenes(args.n)
    held = physics.heldout_scenes(args.n)
    print(f"sampling {2 * args.n} scenes: {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    report("training scenes (seeds 0..)", train)
    report("held-out scenes (seeds 10,000,000..)", held)
    print(f"\nmeasuring: {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
