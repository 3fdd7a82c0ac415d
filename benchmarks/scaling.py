"""Scaling of one training run over ranks: steps/s and prompts/s at world size 1, 2, ... measured
side by side in one invocation (rounds alternate the world sizes, so a machine that is busier
at one moment does not favour one of them).

    python benchmarks/scaling.py [--nproc 1,2] [--steps 4] [--rounds 2] [--prompts-per-rank 1]
    python benchmarks/scaling.py --nproc 1,2,4,8 --backbone wan --frames 33 --height 480 --width 832   # a GPU host

Each run is ``online-dpo`` with ``prompts_per_step`` prompts *per rank* (weak scaling: world size
w trains w times the prompts of a step), N = 6 candidates and 20 sampling steps unless told
(``--candidates``, ``--sampling-steps``), CFG 4, no held-out
check, through ``vpo.train.train`` exactly as ``vpo train --nproc w`` runs it (torchrun on this
host; nccl on GPUs, gloo ranks on a CPU, where torchrun gives each rank one thread while one
process uses all the cores). A step's time is rank 0's ``perf/step_s`` (the slowest rank's, as
combined over ranks); the first step of each run (warm-up) is left out; the median of the rest
over every round is reported, with the wall time of each whole run (start-up of the ranks
included). Figures measured: ``docs/distributed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from vpo.train import train
from vpo.train.config import TrainConfig
from vpo.train.keys import STEP_S


class Collect:
    """A sink that keeps the metrics in memory (rank 0's, replayed in this process)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def metrics(self, step: int, values: dict) -> None:
        self.rows.append({"step": step, **values})

    def samples(self, *args, **kwargs) -> None:
        pass


def one_run(nproc: int, args: argparse.Namespace, out: str) -> tuple[list[float], float]:
    cfg = TrainConfig.from_dict(
        {
            "backbone": args.backbone,
            "algorithm": "online-dpo",
            "steps": args.steps,
            "prompts_per_step": args.prompts_per_rank,
            "num_candidates": args.candidates,
            "sampling_steps": args.sampling_steps,
            "guidance": 4.0,
            "heldout_every": 0,
            "checkpoint_every": args.steps,
            "nproc": nproc,
            "out": out,
            **{k: getattr(args, k) for k in ("frames", "height", "width") if getattr(args, k)},
        }
    )
    sink = Collect()
    t0 = time.perf_counter()
    train(cfg, sink)
    wall = time.perf_counter() - t0
    return [r[STEP_S] for r in sink.rows if r["step"] >= 2 and STEP_S in r], wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nproc", default="1,2", help="world sizes, comma-separated (default: 1,2)")
    p.add_argument("--steps", type=int, default=4, help="steps per run; the first is warm-up (default: 4)")
    p.add_argument("--rounds", type=int, default=2, help="runs per world size, alternating (default: 2)")
    p.add_argument("--prompts-per-rank", type=int, default=1)
    p.add_argument("--candidates", type=int, default=6, help="N per prompt (default: 6)")
    p.add_argument("--sampling-steps", type=int, default=20, help="denoising steps per candidate (default: 20)")
    p.add_argument("--backbone", default="tiny")
    for dim in ("frames", "height", "width"):
        p.add_argument(f"--{dim}", type=int, default=0, help="video size (0: the backbone's)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    sizes = [int(n) for n in args.nproc.split(",")]
    times: dict[int, list[float]] = {n: [] for n in sizes}
    walls: dict[int, list[float]] = {n: [] for n in sizes}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for n in sizes:
                steps, wall = one_run(n, args, os.path.join(tmp, f"w{n}-r{r}"))
                times[n].extend(steps)
                walls[n].append(wall)
    rows = []
    for n in sizes:
        step_s = statistics.median(times[n])
        rows.append(
            {
                "world_size": n,
                "prompts_per_step": n * args.prompts_per_rank,
                "step_s": round(step_s, 3),
                "steps_per_s": round(1 / step_s, 4),
                "prompts_per_s": round(n * args.prompts_per_rank / step_s, 4),
                "steps_timed": len(times[n]),
                "run_wall_s": [round(w, 1) for w in walls[n]],
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'world':>5} {'prompts/step':>12} {'step s':>8} {'steps/s':>8} {'prompts/s':>9}  run wall s")
    for row in rows:
        print(
            f"{row['world_size']:>5} {row['prompts_per_step']:>12} {row['step_s']:>8.2f} "
            f"{row['steps_per_s']:>8.3f} {row['prompts_per_s']:>9.3f}  {row['run_wall_s']}"
        )


if __name__ == "__main__":
    main()
