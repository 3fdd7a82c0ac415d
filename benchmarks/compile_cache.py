"""What ``torch.compile`` (inductor) costs and buys on the tiny backbone's forward, and what its
on-disk cache saves a second process (issue 20: "a compile cost a user does not notice").

    TORCHINDUCTOR_CACHE_DIR=DIR python benchmarks/compile_cache.py cold   # DIR empty: a full compile
    TORCHINDUCTOR_CACHE_DIR=DIR python benchmarks/compile_cache.py warm   # again, in a new process

Each run, at one thread: the median of 5 eager forwards of the candidates' batch (12 = 6 candidates
with CFG, sigma 0.5, bf16 autocast where native), then the first compiled call (the compile: its
graph traced and, on a cold cache, its C++ kernels generated and built) and the median of 5 compiled
forwards, compiled as ``VPO_COMPILE=on`` compiles them (``vpo.backbones.base.CompiledForward``).
The ratio eager / compiled is measured side by side in the one process; the two first calls
compare the cold and the warm cache.
"""

import os
import sys
import time

import torch

from vpo.backbones import load_backbone
from vpo.backbones.base import compile_sampling

BATCH = 12


def median_s(forward, x, sigma, text, autocast, n: int = 5) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        with torch.no_grad(), autocast():
            forward(x, sigma, text)
        times.append(time.perf_counter() - t0)
    return sorted(times)[n // 2]


def main(label: str) -> None:
    torch.set_num_threads(1)
    bb = load_backbone("tiny")
    x = bb.initial_noise(list(range(BATCH)))
    text = bb.encode_prompts(["a red ball moving right"] * BATCH)
    sigma = torch.full((BATCH,), 0.5)
    eager = median_s(bb.predict_velocity, x, sigma, text, bb.autocast)
    os.environ["VPO_COMPILE"] = "on"  # what a worker started with VPO_COMPILE=on samples with
    compile_sampling.cache_clear()
    t0 = time.perf_counter()
    with torch.no_grad(), bb.autocast():
        bb.predict_velocity(x, sigma, text)
    first = time.perf_counter() - t0
    compiled = median_s(bb.predict_velocity, x, sigma, text, bb.autocast)
    print(
        f"{label}: first call (compile) {first:.1f} s; eager {1000 * eager:.0f} ms, "
        f"compiled {1000 * compiled:.0f} ms, ratio {eager / compiled:.2f}x",
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "run")
