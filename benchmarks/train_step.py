"""Training-step cost: the time of an ``online-dpo`` step, and the peak memory of a DPO step next
to a ReFL step as videos and back-propagation depth grow (OnlineVPO Fig. 3).

    python benchmarks/train_step.py [--steps 6] [--depths 1,2,4,8]    (--steps 0: memory only)

Part 1 runs ``online-dpo`` for a few steps on the shipped tiny backbone (N = 6, 20 sampling steps,
CFG 4, one prompt per step; sampling, scoring and the update all counted) and prints the median
step time. Target (issue 4): <= 8 s on a 2-core CPU.

Part 2 measures one step of each algorithm in a fresh process: the peak resident memory during
the step (the kernel's high-water mark, reset at the step's start so that loading the model does
not hide it, with glibc returning freed blocks to the kernel) minus the memory held before it (on
a GPU: the allocator's peak minus what was allocated before). Videos of 16 frames (the default)
and 32 frames (twice the frames, same resolution); ReFL at several back-propagation depths.
Targets: a DPO step <= 1/3 of a ReFL step's memory, and ReFL's memory growing with depth while
DPO's, which has no such knob, stays put.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from vpo.backbones import load_backbone
from vpo.backbones.base import keep_freed_memory
from vpo.backbones.tiny import TinyBackbone, TinyConfig
from vpo.device import pick_device
from vpo.train import train
from vpo.train.config import TrainConfig
from vpo.train.runner import Run


class Collect:
    """A sink that keeps the metrics in memory."""

    def __init__(self):
        self.rows = []

    def metrics(self, step, values):
        self.rows.append({"step": step, **values})

    def phase(self, *args):
        pass

    def samples(self, *args, **kwargs):
        pass


def step_times(steps: int, out: str) -> list[dict]:
    cfg = TrainConfig(
        algorithm="online-dpo",
        num_candidates=6,
        sampling_steps=20,
        guidance=4.0,
        prompts_per_step=1,
        steps=steps,
        heldout_every=0,
        checkpoint_every=10**6,
        out=out,
    )
    sink = Collect()
    train(cfg, sink)
    return sink.rows


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> None:
    """Make the kernel's resident high-water mark (VmHWM) start again from now, so that the peak
    of loading the model does not hide a smaller peak of the step (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def measure_one(algorithm: str, frames: int, depth: int) -> dict:
    """One step of ``algorithm`` in this (fresh) process; returns its extra peak memory in MB."""
    device = pick_device()
    if device == "cpu":
        # glibc's defaults, not the heap-keeping setting the backbone module applies for speed:
        # freed blocks go back to the kernel, so the resident peak is the memory in use, as the
        # allocator's peak is on a GPU (with the heap kept, it also counts blocks freed earlier)
        keep_freed_memory(False)
    if frames == 16:
        backbone = load_backbone("tiny", device=device)
    else:  # random weights of the same architecture: memory does not depend on what was learned
        torch.manual_seed(0)
        backbone = TinyBackbone(TinyConfig(frames=frames)).to(device).eval()
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(
            algorithm=algorithm,
            num_candidates=6,
            sampling_steps=20,
            refl_depth=depth,
            steps=1,
            heldout_every=0,
            checkpoint_every=10**6,
            prompts="demo",
            out=out,
        )
        run = Run(cfg, Collect(), device, backbone)
        prompts = run.pick_prompts(0)
        backbone.encode_prompts(prompts)  # the text cache is not part of a step
        if device == "cuda":
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            before = rss_mb()
            reset_peak_rss()
        t0 = time.perf_counter()
        if algorithm == "refl":
            from vpo.train.refl import reward_gradient_step

            reward_gradient_step(run, prompts, 0)
        else:
            online_step(run, prompts)
        seconds = time.perf_counter() - t0
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20 if device == "cuda" else peak_rss_mb() - before
    return {
        "algorithm": algorithm,
        "frames": frames,
        "depth": depth,
        "peak_mb": peak,
        "seconds": seconds,
        "device": device,
    }


def online_step(run: Run, prompts: list[str]) -> None:
    """Steps 1-4 of ``online_dpo.train_run`` for one prompt: sample, score, pick, update."""
    from vpo.train.online_dpo import dpo_update, pick_pairs

    n = run.cfg.num_candidates
    flat = [p for p in prompts for _ in range(n)]
    videos, latents = run.backbone.sample(
        flat, run.candidate_seeds(0, 0, n), steps=run.cfg.sampling_steps, guidance=run.cfg.guidance, return_latents=True
    )
    scores = run.score(videos, flat).view(len(prompts), n)
    pairs = pick_pairs(scores, 0.0)
    lat = latents.view(len(prompts), n, *latents.shape[1:])
    dpo_update(
        run,
        torch.stack([lat[i, w] for i, w, _ in pairs]),
        torch.stack([lat[i, l] for i, _, l in pairs]),
        [prompts[i] for i, _, _ in pairs],
        0,
    )


def measure(algorithm: str, frames: int, depth: int) -> dict:
    cmd = [sys.executable, __file__, "--measure", f"{algorithm},{frames},{depth}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="online-dpo steps to time (the first is warm-up; 0: skip)")
    ap.add_argument("--depths", default="1,2,4,8", help="ReFL back-propagation depths to measure")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measurement in this process
    args = ap.parse_args()
    if args.measure:
        algorithm, frames, depth = args.measure.split(",")
        print(json.dumps(measure_one(algorithm, int(frames), int(depth))))
        return

    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, {pick_device()}"
    )
    if args.steps > 0:  # --steps 0: memory only
        with tempfile.TemporaryDirectory() as out:
            rows = step_times(args.steps, out)
        timed = rows[1:] if len(rows) > 1 else rows
        med = statistics.median(r["perf/step_s"] for r in timed)
        part = {k: statistics.median(r[k] for r in timed) for k in ("perf/sample_s", "perf/score_s", "perf/update_s")}
        runs = [r["perf/step_s"] for r in timed]
        print(f"\n1. online-dpo step (N=6, 20 sampling steps, CFG, 1 prompt/step), {len(timed)} steps after 1 warm-up:")
        print(
            f"   median {med:.2f} s  = sample {part['perf/sample_s']:.2f} + score {part['perf/score_s']:.2f} "
            f"+ update {part['perf/update_s']:.2f} (runs: {', '.join(f'{t:.2f}' for t in runs)})"
        )
        print(f"   target <= 8 s: {'met' if med <= 8 else 'NOT met'}")

    depths = [int(d) for d in args.depths.split(",")]
    print("\n2. extra peak memory of one step (MB), each measured in a fresh process:")
    print(
        f"   {'frames':>6}  {'DPO':>8}  " + "  ".join(f"{f'ReFL d={d}':>10}" for d in depths) + "  DPO/ReFL per depth"
    )
    table = {}
    for frames in (16, 32):
        dpo = measure("online-dpo", frames, 1)["peak_mb"]
        refl = {d: measure("refl", frames, d)["peak_mb"] for d in depths}
        table[frames] = (dpo, refl)
        ratios = ", ".join(f"{dpo / refl[d]:.2f}" for d in depths)
        print(f"   {frames:>6}  {dpo:>8.0f}  " + "  ".join(f"{refl[d]:>10.0f}" for d in depths) + f"  {ratios}")
    for frames, (dpo, refl) in table.items():
        meets = [d for d in depths if dpo <= refl[d] / 3]
        grows = all(refl[a] < refl[b] for a, b in itertools.pairwise(depths))
        verdict = "n/a (one depth)" if len(depths) < 2 else "yes" if grows else "NO"
        print(
            f"   {frames} frames: DPO <= 1/3 of ReFL at depth(s) {meets or 'none'}; "
            f"ReFL memory grows with depth: {verdict} "
            f"({refl[depths[0]]:.0f} -> {refl[depths[-1]]:.0f} MB)"
        )
    (dpo16, refl16), (dpo32, refl32) = table[16], table[32]
    deepest = depths[-1]
    print(f"   twice the frames: DPO x{dpo32 / dpo16:.2f}, ReFL d={deepest} x{refl32[deepest] / refl16[deepest]:.2f}")


if __name__ == "__main__":
    main()
