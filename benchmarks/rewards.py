"""Reward scoring speed: the ``metrics`` source on N candidates of the default size, next to the
time it takes to sample them (both measured in this run).

    python benchmarks/rewards.py [--candidates 6] [--repeats 7]

Target (issue 3): ``metrics`` scores 6 candidates in <= 0.5 s on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

from vpo.backbones import load_backbone
from vpo.rewards import load_reward

PROMPT = "a red ball moving right"


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    backbone = load_backbone("tiny")
    seeds, prompts = list(range(args.candidates)), [PROMPT] * args.candidates
    videos = backbone.sample(prompts, seeds, steps=args.steps)
    t_sample, _ = median_time(lambda: backbone.sample(prompts, seeds, steps=args.steps), max(3, args.repeats // 2))
    print(
        f"{args.candidates} candidates {tuple(videos.shape[1:])}; "
        f"sampling ({args.steps} steps, CFG): median {t_sample:.2f} s"
    )
    for name in ("metrics", "image-metrics"):
        source = load_reward(name)
        source.score(videos, prompts)  # warm-up
        t, runs = median_time(lambda source=source: source.score(videos, prompts), args.repeats)
        print(
            f"{name:<14} scoring: median {t * 1000:6.0f} ms  ({t / t_sample:.1%} of sampling time; "
            f"runs {', '.join(f'{x * 1000:.0f}' for x in runs)} ms)"
        )
        if name == "metrics":
            print(f"target metrics <= 0.5 s for {args.candidates} candidates: {'met' if t <= 0.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
