"""The physics world's agreement figures (``docs/physics.md``): over N training and N held-out
scenes, the trajectory error (mean L2, px) of the detector on the rendered ground truth against the
simulator's rollout, and of a time-reversed and a gravity-flipped copy; per scene kind. Then the
``physics`` reward source (``vpo/rewards/physics.py``): how well it recovers the first-frame state
(and the rollout from it) on the ground truth, and how often it ranks the ground truth above each
wrong copy.

    python benchmarks/physics_world.py            # N = 256, the figures in docs/physics.md
    python benchmarks/physics_world.py --n 64     # the tests' size
    python benchmarks/physics_world.py --noise 8  # the reward on videos with Gaussian pixel noise (sigma 8 of 255)
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from vpo.data import physics
from vpo.rewards import physics as reward


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


def _pct(a, unit: str = "px", digits: int = 3) -> str:
    a = np.asarray(a, dtype=float)
    median, p95, top = np.median(a), np.percentile(a, 95), a.max()
    return f"median {median:.{digits}f} / 95th pct {p95:.{digits}f} / max {top:.{digits}f} {unit}"


def report_reward(name: str, scenes: list[physics.PhysScene], noise: float = 0.0) -> None:
    """State recovery from the ground truth's first frame and caption, and the reward's ranking;
    every video with Gaussian pixel noise of standard deviation ``noise`` (uint8 levels) first."""
    rng = np.random.default_rng(0)

    def noisy(video: np.ndarray) -> np.ndarray:
        if not noise:
            return video
        return np.clip(video + rng.normal(0.0, noise, video.shape), 0, 255).round().astype(np.uint8)

    rows: dict[str, list] = {k: [] for k in ("pos", "radius", "floor", "angle", "direction", "speed", "mid", "fit")}
    judged: dict[str, list[reward.Judgement]] = {"gt": [], "reversed": [], "flipped": []}
    t = time.perf_counter()
    for s in scenes:
        facts = physics.parse_caption(s.caption)
        assert facts is not None, s.caption
        video = noisy(s.render())
        for key, v in (
            ("gt", video),
            ("reversed", physics.time_reversed(video)),
            ("flipped", noisy(physics.gravity_flipped(s.state))),
        ):
            judged[key].append(reward.judge(v, facts))
        est, fitted = reward.estimate_state(video[0], facts), judged["gt"][-1].state
        assert fitted is not None
        for b, e in zip(s.state.bodies, est.bodies):
            rows["pos"].append(np.hypot(b.x - e.x, b.y - e.y))
            rows["radius"].append(abs(b.r - e.r))
        for b, e in zip(s.state.bodies, fitted.bodies):
            if b.vx:
                rows["speed"].append(abs(b.vx - e.vx))
        rows["floor"].append(est.floor == s.state.floor)
        if s.state.ramp is not None and est.ramp is not None:
            rows["angle"].append(np.degrees(abs(s.state.ramp.angle - est.ramp.angle)))
            rows["direction"].append(s.state.ramp.direction == est.ramp.direction)
        truth = s.rollout().positions
        rows["mid"].append(np.linalg.norm(physics.simulate(est).positions - truth, axis=-1).mean())
        rows["fit"].append(np.linalg.norm(physics.simulate(fitted).positions - truth, axis=-1).mean())
    seconds = (time.perf_counter() - t) / (3 * len(scenes))
    noted = f", pixel noise sigma {noise:g}" if noise else ""
    print(f"\n{name}: the physics reward, {len(scenes)} scenes{noted} ({1000 * seconds:.0f} ms a video)")
    print(f"  state: body centre error {_pct(rows['pos'])}; radius error {_pct(rows['radius'])}")
    print(f"  state: floor right {np.mean(rows['floor']):.1%}; ramp direction right {np.mean(rows['direction']):.1%},")
    print(f"         ramp angle error {_pct(rows['angle'], 'deg', 2)}")
    print(f"  push speed (fitted within the caption's band) error {_pct(rows['speed'], 'px/frame')}")
    print(f"  rollout from the estimated state vs the true rollout: {_pct(rows['fit'])}")
    print(f"     the same with mid-band speeds (no fit):            {_pct(rows['mid'])}")
    err = {k: np.array([j.trajectory_error for j in v]) for k, v in judged.items()}
    print(f"  trajectory error: ground truth {_pct(err['gt'])}")
    for k in ("reversed", "flipped"):
        low, p5, median = err[k].min(), np.percentile(err[k], 5), np.median(err[k])
        print(f"                    {k} min {low:.2f}, 5th pct {p5:.2f}, median {median:.2f} px")
    score = {k: {d: np.array([getattr(j, d) for j in v]) for d in ("trajectory", "contact")} for k, v in judged.items()}
    gt = score["gt"]
    print(f"  ground truth: trajectory >= {gt['trajectory'].min():.3f}, contact 1 on {(gt['contact'] == 1).mean():.1%}")
    for k in ("reversed", "flipped"):
        ranks = {d: (gt[d] > score[k][d]).mean() for d in ("trajectory", "contact")}
        both = ((gt["trajectory"] + gt["contact"]) > (score[k]["trajectory"] + score[k]["contact"])).mean()
        print(
            f"  ground truth above {k}: global {both:.1%}, trajectory {ranks['trajectory']:.1%}, "
            f"contact {ranks['contact']:.1%}"
        )
    kinds = np.array([s.state.kind for s in scenes])
    for kind in physics.KINDS:
        sel = kinds == kind
        if sel.any():
            print(
                f"  {kind:8s} n={sel.sum():3d}  rollout error max {np.array(rows['fit'])[sel].max():.3f} px"
                f" (mid-band {np.array(rows['mid'])[sel].max():.3f})"
                f"  gt trajectory error max {err['gt'][sel].max():.3f} px"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--noise", type=float, default=0.0, help="the reward's videos: Gaussian pixel noise sigma")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, numpy {np.__version__}")
    t = time.perf_counter()
    train = physics.train_scenes(args.n)
    held = physics.heldout_scenes(args.n)
    print(f"sampling {2 * args.n} scenes: {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    report("training scenes (seeds 0..)", train)
    report("held-out scenes (seeds 10,000,000..)", held)
    report_reward("training scenes", train, args.noise)
    report_reward("held-out scenes", held, args.noise)
    print(f"\nmeasuring: {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
