"""Sampling speed of the default backbone: N candidates as one batch vs one at a time.

    python benchmarks/sampling.py [--candidates 6] [--steps 20] [--repeats 5]

Prints medians measured side by side in one run, the model's FLOPs per denoising step (counted
by torch's FlopCounterMode on the actual forward), the achieved GFLOP/s, and a matmul peak in the
dtype the backbone computes in here (bf16 or fp32, ``vpo.backbones.base.autocast_dtype``)
measured in the same run for scale. Targets (issue 2): batch <= 6 s median, >= 3x one at a time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from vpo.backbones import load_backbone
from vpo.backbones.base import autocast_dtype

PROMPT = "a red ball moving right"


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 20) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    n, steps = args.candidates, args.steps
    backbone = load_backbone("tiny")
    seeds = list(range(n))
    backbone.sample([PROMPT], [0], steps=2)  # warm-up: text cache, kernels, allocator

    def batch():
        backbone.sample([PROMPT] * n, seeds, steps=steps, guidance=args.guidance)

    def one_at_a_time():
        for s in seeds:
            backbone.sample([PROMPT], [s], steps=steps, guidance=args.guidance)

    # interleave the two so that drift in machine load hits both alike
    t_batch, t_single = [], []
    for _ in range(args.repeats):
        t_batch += timed(batch, 1)
        t_single += timed(one_at_a_time, 1)
    dtype = autocast_dtype(backbone.device.type) or torch.float32
    peak = matmul_peak(dtype)

    x = torch.randn(2 * n, *backbone.latent_shape())
    text = torch.cat([backbone.encode_prompts([PROMPT] * n), backbone.null_text(n)])
    with FlopCounterMode(display=False) as fc, torch.no_grad(), backbone.autocast():
        backbone.predict_velocity(x, torch.full((2 * n,), 0.5), text)
    flops_step = fc.get_total_flops()

    med_b, med_s = statistics.median(t_batch), statistics.median(t_single)
    achieved = flops_step * steps / med_b / 1e9
    print(
        f"machine: {os.cpu_count()} CPUs ({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, computing in {str(dtype).removeprefix('torch.')}"
    )
    print(f"workload: {n} candidates x {steps} steps, CFG (forward batch {2 * n}), {args.repeats} repeats each")
    print(f"batch          median {med_b:6.2f} s   (runs: {', '.join(f'{t:.2f}' for t in t_batch)})")
    print(f"one at a time  median {med_s:6.2f} s   (runs: {', '.join(f'{t:.2f}' for t in t_single)})")
    print(f"speed-up (one at a time / batch): {med_s / med_b:.2f}x")
    print(
        f"model FLOPs per denoising step: {flops_step / 1e9:.2f} GFLOP for the batch "
        f"({flops_step / (2 * n) / 1e9:.3f} GFLOP per video forward)"
    )
    print(
        f"achieved: {achieved:.0f} GFLOP/s in the batch; "
        f"{str(dtype).removeprefix('torch.')} matmul peak measured now: {peak:.0f} GFLOP/s "
        f"({achieved / peak:.0%} of peak)"
    )
    print(
        f"target batch <= 6 s: {'met' if med_b <= 6 else 'NOT met'}; "
        f"target >= 3x: {'met' if med_s / med_b >= 3 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
