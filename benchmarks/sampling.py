"""Sampling speed and quality of the default backbone, side by side in one run.

    python benchmarks/sampling.py [--candidates 6] [--steps 20] [--candidate-runs euler:10,euler:6:3]
                                  [--repeats 3] [--quality-n 32] [--quality-runs euler:20,euler:6:3,...]
                                  [--threads N] [--no-compile] [--ceiling]

A run is SAMPLER:STEPS[:SHIFT], SHIFT the sampling schedule's flow shift (SD3's; 1 = none, tiny's
default; ``flow_shift`` in the training config). Prints, all measured in this one run:

1. speed: N candidates x ``--steps`` with CFG as one batch with the old forward
   (``vpo/backbones/tiny_reference.py``) and with today's, one at a time with today's, and as one
   batch with today's at each of ``--candidate-runs`` (10 steps, and 6 on a schedule shifted by 3),
   and from a policy with training's LoRA adapter with the old and today's forward (interleaved
   repeats, medians); the model's FLOPs per denoising step (torch's FlopCounterMode on the old
   forward, whose attention is plain matmuls that it counts; the new one computes the same products
   but in cross-attention, where its folded projections compute fewer); achieved GFLOP/s of each
   against a matmul peak in the dtype the backbone computes in here
   (``vpo.backbones.base.autocast_dtype``): the faster of torch's matmul and oneDNN's on a
   prepacked weight (what the forward runs on a CPU);
   With ``VPO_COMPILE=on`` (``--no-compile``: without): the batch at ``--steps``, at the last of
   ``--candidate-runs`` and from the LoRA policy, through ``torch.compile``, and what the compile
   cost on an empty inductor cache and from the disk cache a later process reads;
2. what each change of the forward bought: one forward of the candidates' batch with each change
   undone alone, and compiled (interleaved repeats, medians), each with its share of the peak; with
   ``--ceiling`` also inductor's best on this CPU (weights frozen into the graph, max-autotune), a
   ceiling for any compiled forward that ``VPO_COMPILE`` cannot ship (frozen weights go stale);
3. steps vs quality: the held-out fidelity check (``vpo/fidelity.py``: colour, motion direction and
   shape found by the ground-truth detector, flickering vs ground truth) for each sampler, step
   count and shift, the velocities each cost, the wall time, and how far each run's videos are from the default
   sampler's (euler, ``--steps``) in mean absolute pixel difference, plus the default sampler with
   the old forward (equal quality of the new forward) and compiled.

Goals (issue 20): >= 30% of the bf16 peak (>= 50% of the fp32 one); the candidates' batch >= 3x
faster than before (the old forward at 20 steps) at equal quality (section 3: the same scenes and
seeds at both step counts).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from vpo.backbones import SAMPLERS, load_backbone
from vpo.backbones.base import autocast_dtype, compile_sampling
from vpo.backbones.tiny import Attention, ConvMLP, Linears, TinyBackbone
from vpo.backbones.tiny_reference import reference
from vpo.fidelity import heldout_videos, world_fidelity
from vpo.train.checkpoints import POLICY, add_policy_and_ref
from vpo.train.config import TrainConfig

PROMPT = "a red ball moving right"
CANDIDATE_RUNS = "euler:10,euler:6:3"
QUALITY_RUNS = "euler:20,euler:10,euler:6:3,euler:20:3,heun:10"
LORA_RANK = TrainConfig().lora_rank  # training's default
PREPACKED = Linears.prepacked  # whether this torch has oneDNN's matmul on packed weights
AMX_KERNEL = Attention.amx_kernel_for_sampling  # this CPU's choice: the fused kernel where it has AMX, else matmuls


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 20) -> dict[str, float]:
    """GFLOP/s of an n^3 matmul, best of ``repeats``: torch's ``a @ b`` (MKL on x86 CPUs) and, where
    torch has it, oneDNN's on a prepacked weight (what ``Linears`` runs): the peak is the faster."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    kernels = {"torch.matmul": lambda: a @ b}
    if PREPACKED and dtype in (torch.float32, torch.bfloat16):
        packed = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), None)
        kernels["oneDNN packed"] = lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")
    best = {}
    for name, fn in kernels.items():
        for _ in range(3):
            fn()
        best[name] = 2 * n**3 / min(timed(fn) for _ in range(repeats)) / 1e9
    return best


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def runs(text: str, option: str = "--quality-runs") -> list[tuple[str, int, float]]:
    """SAMPLER:STEPS[:SHIFT],... -> [(sampler, steps, flow shift)] (shift 1 = none, the default)."""
    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        sampler, steps, shift = [*parts, "1"][:3] if len(parts) in (2, 3) else ("", "0", "0")
        try:
            ok = sampler in SAMPLERS and int(steps) >= 1 and float(shift) > 0
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"{option}: {item!r} is not SAMPLER:STEPS[:SHIFT] (samplers: {', '.join(SAMPLERS)}; "
                f"steps >= 1; shift > 0, 1 = none)"
            )
        out.append((sampler, int(steps), float(shift)))
    return out


@contextlib.contextmanager
def shifted(backbone, shift: float):
    """Sampling on SD3's shifted schedule (``flow_shift``; 1 = none) for the duration."""
    saved, backbone.flow_shift = backbone.flow_shift, shift
    try:
        yield
    finally:
        backbone.flow_shift = saved


@contextlib.contextmanager
def undone(change: str, transformer):
    """Today's forward with one change undone (the old forward: ``tiny_reference.reference``)."""
    attentions = [m for m in transformer.modules() if isinstance(m, Attention)]
    temporal = [block.attn_t for block in transformer.blocks]
    saved = [m.fused_kernel for m in attentions]
    try:
        if change == "fused QKV":
            Attention.fuse_projections = False
        elif change == "exact GELU":
            ConvMLP.approximate = "tanh"
        elif change == "fused attention kernel":
            for m in attentions:
                m.fused_kernel = False
        elif change == "matmul attention for temporal":
            for m in temporal:
                m.fused_kernel = True
        elif change == "oneDNN prepacked matmuls":
            Linears.prepacked = False
        elif change == "folded cross-attention":
            Attention.fold_cross = False
        elif change == "convolution's residual folded":
            ConvMLP.fold_residual = False
        elif change == "CPU bf16 attention choice":
            Attention.amx_kernel_for_sampling = not AMX_KERNEL
        elif change == "fp32 softmax of 8 keys":
            Attention.few_keys_in_fp32 = False
        yield
    finally:
        Attention.fuse_projections, ConvMLP.approximate = True, "none"
        Attention.fold_cross, ConvMLP.fold_residual, Linears.prepacked = True, True, PREPACKED
        Attention.amx_kernel_for_sampling, Attention.few_keys_in_fp32 = AMX_KERNEL, True
        for m, flag in zip(attentions, saved):
            m.fused_kernel = flag


@contextlib.contextmanager
def compiled(on: bool = True):
    """Sampling with the transformer compiled (``VPO_COMPILE=on``) or eager, for the duration."""
    saved = os.environ.get("VPO_COMPILE")
    os.environ["VPO_COMPILE"] = "on" if on else "off"
    compile_sampling.cache_clear()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["VPO_COMPILE"]
        else:
            os.environ["VPO_COMPILE"] = saved
        compile_sampling.cache_clear()


def compile_costs(samplers: dict) -> dict[str, tuple[float, float]]:
    """Each sampler's first compiled call on an empty inductor cache (a fresh temporary directory,
    left in place for the run) and again after ``torch._dynamo.reset()``, which forgets the process's
    compiled code as a new process would not have it, so that the second reads the disk cache: what
    a later process pays. -> {label: (cold s, warm s)}"""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="vpo-inductor-")
    costs = {}
    with compiled():
        for label, fn in samplers.items():
            cold = timed(fn)
            torch._dynamo.reset()
            costs[label] = (cold, timed(fn))
        for fn in samplers.values():  # a reset dropped the earlier ones' code: load it before the timed rows
            fn()
    return costs


def with_policy_adapter(backbone):
    """A second ``tiny`` with training's two LoRA adapters (``add_policy_and_ref``), the policy's
    active and moved off zero as after some training: what online DPO samples candidates from."""
    policy = TinyBackbone.load(text_encoder=backbone.text_encoder)
    lora = {"r": LORA_RANK, "lora_alpha": LORA_RANK, "target_modules": list(policy.lora_target_modules)}
    add_policy_and_ref(policy.transformer, lora)
    policy.transformer.set_adapter(POLICY)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in policy.transformer.named_parameters():
            if f"lora_B.{POLICY}" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.01)
    return policy


def speed(backbone, args, flops_step: float, peak: float, dtype_name: str) -> None:
    n, steps = args.candidates, args.steps
    seeds = list(range(n))

    def batch(steps=steps, shift=1.0, sampler="euler"):
        with shifted(backbone, shift):
            backbone.sample([PROMPT] * n, seeds, steps=steps, guidance=args.guidance, sampler=sampler)

    def one_at_a_time():
        for s in seeds:
            backbone.sample([PROMPT], [s], steps=steps, guidance=args.guidance)

    def old_batch():
        with reference(backbone.transformer):
            batch()

    policy = with_policy_adapter(backbone)

    def policy_batch(old: bool):
        with reference(policy.transformer) if old else contextlib.nullcontext():
            policy.sample([PROMPT] * n, seeds, steps=steps, guidance=args.guidance)

    def compiled_row(fn, *fn_args):
        def run():
            with compiled():
                fn(*fn_args)

        return run

    costs = {}
    if args.compile:  # compiled before the timed rows: one graph for the backbone, one for the policy
        costs = compile_costs(
            {
                "backbone": lambda: backbone.sample([PROMPT] * n, seeds, steps=1, guidance=args.guidance),
                "LoRA policy": lambda: policy.sample([PROMPT] * n, seeds, steps=1, guidance=args.guidance),
            }
        )

    # interleaved so that drift in machine load hits all alike
    rows = {
        f"old forward, batch, {steps} steps": (old_batch, steps),
        f"new forward, batch, {steps} steps": (batch, steps),
        f"new forward, one at a time, {steps} st.": (one_at_a_time, steps),
    }
    for sampler, k_steps, shift in runs(args.candidate_runs, "--candidate-runs"):
        label = f"new forward, batch, {sampler} {k_steps} st., shift {shift:g}"
        velocities = k_steps if sampler == "euler" else 2 * k_steps - 1  # heun: two a step but the last
        rows[label] = (functools.partial(batch, k_steps, shift, sampler), velocities)
    candidate_rows = list(rows)[3:]
    rows[f"old forward, LoRA policy, batch, {steps} st."] = (functools.partial(policy_batch, True), steps)
    rows[f"new forward, LoRA policy, batch, {steps} st."] = (functools.partial(policy_batch, False), steps)
    compiled_rows = {}
    if args.compile:
        fast = runs(args.candidate_runs, "--candidate-runs")[-1]
        compiled_rows = {
            f"compiled, batch, {steps} steps": (compiled_row(batch), steps),
            f"compiled, batch, {fast[0]} {fast[1]} st., shift {fast[2]:g}": (
                compiled_row(batch, fast[1], fast[2], fast[0]),
                fast[1] if fast[0] == "euler" else 2 * fast[1] - 1,
            ),
            f"compiled, LoRA policy, batch, {steps} st.": (compiled_row(policy_batch, False), steps),
        }
    rows.update(compiled_rows)
    t: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(args.repeats):
        for k, (fn, _) in rows.items():
            t[k].append(timed(fn))  # eager, as all of measure() is, unless the row is compiled_row's
    med = {k: statistics.median(v) for k, v in t.items()}
    print(f"\n1. speed: {n} candidates with CFG (forward batch {2 * n}), {args.repeats} interleaved repeats each")
    for k, (_, k_steps) in rows.items():
        achieved = flops_step * k_steps / med[k] / 1e9
        print(
            f"   {k:42s} median {med[k]:6.2f} s  {achieved:5.0f} GFLOP/s = {achieved / peak:4.0%} of peak"
            f"   (runs: {', '.join(f'{x:.2f}' for x in t[k])})"
        )
    old, new, single = list(med.values())[:3]
    print(f"   the forward alone, old / new (batch, {steps} steps each): {old / new:.2f}x")
    for k in candidate_rows:
        m = med[k]
        print(
            f"   the candidates' batch, old forward at {steps} steps (before issue 20) / {k}: {old / m:.2f}x "
            f"(goal >= 3x at the same quality: section 3)"
        )
    print(f"   batch vs one at a time (new forward, {steps} steps): {single / new:.2f}x")
    lora_old = med[f"old forward, LoRA policy, batch, {steps} st."]
    lora_new = med[f"new forward, LoRA policy, batch, {steps} st."]
    print(
        f"   training's candidates (the policy with a rank-{LORA_RANK} LoRA adapter, {steps} steps), "
        f"old / new forward: {lora_old / lora_new:.2f}x"
    )
    if compiled_rows:
        plain, fast_row, lora_row = list(compiled_rows)
        print(
            f"   torch.compile (VPO_COMPILE=on): new / compiled forward (batch, {steps} steps) "
            f"{new / med[plain]:.2f}x; LoRA policy {lora_new / med[lora_row]:.2f}x; the candidates' batch, old forward "
            f"at {steps} steps / {fast_row}: {old / med[fast_row]:.2f}x"
        )
        for label, (cold, warm) in costs.items():
            print(
                f"   compile cost, {label} (batch {2 * n}): {cold:.1f} s on an empty cache, {warm:.1f} s from the "
                f"disk cache (a later process), each a 1-step sample including its compile"
            )
    print(
        f"   model FLOPs per denoising step: {flops_step / 1e9:.2f} GFLOP for the batch "
        f"({flops_step / (2 * n) / 1e9:.3f} GFLOP per video forward); {dtype_name} matmul peak "
        f"measured now: {peak:.0f} GFLOP/s; goal >= {'30' if dtype_name == 'bfloat16' else '50'}% of it"
    )


@contextlib.contextmanager
def frozen_and_autotuned(backbone, frozen):
    """Sampling through inductor's best on this CPU, as a ceiling for the compiled forward: the
    weights frozen into the graph as constants (``freezing``: prepacked for oneDNN, folded with what
    follows them) and ``mode="max-autotune"`` (inductor's own C++ GEMM templates, AMX where the CPU has
    it). Not what ``VPO_COMPILE`` can ship: a frozen graph does not see a changed weight, so a policy
    under training would sample from stale weights. ``frozen``: the transformer through ``torch.compile``
    with that mode; it compiles on its first call, inside this block."""
    backbone.denoiser = lambda: frozen  # the instance attribute shadows the method
    quiet = {"autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}  # no per-GEMM tables
    try:
        with torch._inductor.config.patch(freezing=True, **quiet):  # read when the first call compiles
            yield
    finally:
        del backbone.denoiser


def ablation(backbone, args, x, sigma, text, flops_step: float, peak: float) -> None:
    changes = [
        "none (today's forward)",
        "fused QKV",
        "fused attention kernel",
        "matmul attention for temporal",
        "exact GELU",
        "oneDNN prepacked matmuls",
        "folded cross-attention",
        "convolution's residual folded",
        "CPU bf16 attention choice",
        "fp32 softmax of 8 keys",
        "all (the old forward)",
    ] + (["none, compiled (VPO_COMPILE=on)"] if args.compile else [])
    changes += ["none, frozen + max-autotune"] if args.ceiling else []
    frozen = torch.compile(backbone.transformer, dynamic=False, mode="max-autotune")  # lazy: --ceiling's row
    times: dict[str, list[float]] = {c: [] for c in changes}
    tr = backbone.transformer

    def context(change):
        if change.startswith("none, compiled"):
            return compiled()
        if change.startswith("none, frozen"):
            return frozen_and_autotuned(backbone, frozen)
        return reference(tr) if change.startswith("all") else undone(change, tr)

    with torch.no_grad(), backbone.autocast():
        for warm_up in range(2):
            for change in changes:
                start = time.perf_counter()
                with context(change):
                    backbone.predict_velocity(x, sigma, text)
                if change.startswith("none, frozen") and warm_up == 0:
                    took = time.perf_counter() - start
                    print(f"   (frozen + max-autotune: the first call, its compile included, took {took:.1f} s)")
        for _ in range(args.repeats * 3):
            for change in changes:
                with context(change):
                    times[change].append(timed(lambda: backbone.predict_velocity(x, sigma, text)))
    base = statistics.median(times[changes[0]])
    print(f"\n2. one forward of batch {x.shape[0]}, each change undone alone ({args.repeats * 3} repeats, medians)")
    print(f"   {'undone':32s} {'median':>9s} {'vs today':>9s} {'GFLOP/s':>8s} {'of peak':>8s}")
    for change in changes:
        m = statistics.median(times[change])
        rate = flops_step / m / 1e9
        print(f"   {change:32s} {m * 1e3:6.0f} ms {m / base:8.2f}x {rate:8.0f} {rate / peak:8.0%}")


def quality(backbone, args) -> None:
    n = args.quality_n
    rows = []
    default = None

    def one(label, sampler, steps, shift, ctx):
        nonlocal default
        with ctx, shifted(backbone, shift):
            t = time.perf_counter()
            videos = heldout_videos(backbone, n, steps=steps, guidance=args.guidance, sampler=sampler)
            wall = time.perf_counter() - t
        report = world_fidelity(backbone, n, videos=videos)
        if default is None:
            default = videos.astype(np.float32)
        evals = steps if sampler == "euler" else 2 * steps - 1
        delta = float(np.abs(videos.astype(np.float32) - default).mean())
        rows.append((label, sampler, steps, shift, evals, wall, report, delta))

    one("new", "euler", args.steps, 1.0, contextlib.nullcontext())
    for sampler, steps, shift in runs(args.quality_runs):
        if (sampler, steps, shift) != ("euler", args.steps, 1.0):
            one("new", sampler, steps, shift, contextlib.nullcontext())
    if not args.no_old_quality:
        one("old", "euler", args.steps, 1.0, reference(backbone.transformer))
    if args.compile:
        one("compiled", "euler", args.steps, 1.0, compiled())
    truth = rows[0][6]["flicker_ground_truth"]
    print(f"\n3. steps vs quality: {n} held-out scenes (vpo/fidelity.py), CFG {args.guidance}")
    print(
        f"   {'forward':8s} {'sampler':7s} {'steps':>5s} {'shift':>5s} {'velocities':>10s} {'wall s':>7s} "
        f"{'colour':>7s} {'motion':>7s} {'shape':>7s} {'flicker':>8s} {'gap to GT':>9s} {'|d| to default':>14s}"
    )
    for label, sampler, steps, shift, evals, wall, r, delta in rows:
        print(
            f"   {label:8s} {sampler:7s} {steps:5d} {shift:5g} {evals:10d} {wall:7.1f} {r['colour_accuracy']:7.1%} "
            f"{r['direction_accuracy']:7.1%} {r['shape_accuracy']:7.1%} {r['flicker_generated']:8.4f} "
            f"{truth - r['flicker_generated']:9.4f} {delta:14.2f}"
        )
    print(
        f"   ground-truth flickering {truth:.4f}; shift: the sampling schedule's flow shift (1 = none); |d|: mean "
        f"absolute difference (0-255 levels) to the videos of the first row (same scenes, same seeds)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20, help="steps of the old forward's batch (the default's)")
    ap.add_argument(
        "--candidate-runs",
        default=CANDIDATE_RUNS,
        help=f"the candidates' batch with the new forward at these euler:STEPS[:SHIFT],... (default {CANDIDATE_RUNS})",
    )
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--quality-n", type=int, default=32, help="held-out scenes per quality row (0 = no table)")
    ap.add_argument("--quality-runs", default=QUALITY_RUNS, help=f"SAMPLER:STEPS,... (default {QUALITY_RUNS})")
    ap.add_argument("--no-old-quality", action="store_true", help="no quality row for the old forward")
    ap.add_argument("--quality-only", action="store_true", help="only the steps-vs-quality table")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="no torch.compile rows")
    ap.add_argument(
        "--ceiling",
        action="store_true",
        help="section 2 also times inductor's best: weights frozen, max-autotune (a ceiling; minutes to compile)",
    )
    args = ap.parse_args()
    try:  # a bad list fails before minutes of measuring
        runs(args.quality_runs)
        runs(args.candidate_runs, "--candidate-runs")
    except ValueError as e:
        ap.error(str(e))
    for name in ("candidates", "steps", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    with compiled(False):  # eager unless a row says compiled, whatever VPO_COMPILE is set to
        measure(args)


def measure(args) -> None:
    t0 = time.perf_counter()
    n = args.candidates
    backbone = load_backbone("tiny")
    backbone.sample([PROMPT], [0], steps=2)  # warm-up: text cache, kernels, allocator
    dtype = autocast_dtype(backbone.device.type) or torch.float32
    dtype_name = str(dtype).removeprefix("torch.")
    x = torch.randn(2 * n, *backbone.latent_shape(), generator=torch.Generator().manual_seed(0))
    sigma = torch.full((2 * n,), 0.5)
    text = torch.cat([backbone.encode_prompts([PROMPT] * n), backbone.null_text(n)])
    with FlopCounterMode(display=False) as fc, torch.no_grad(), backbone.autocast(), reference(backbone.transformer):
        backbone.predict_velocity(x, sigma, text)
    flops_step = fc.get_total_flops()
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} CPUs ({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, computing in {dtype_name}; load average at start "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    if not args.quality_only:
        peaks = matmul_peak(dtype)
        peak = max(peaks.values())
        kernels = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items())
        print(f"{dtype_name} matmul peak (2048^3, best of 20): {kernels}; the faster is the peak below")
        speed(backbone, args, flops_step, peak, dtype_name)
        ablation(backbone, args, x, sigma, text, flops_step, peak)
    if args.quality_n:
        quality(backbone, args)
    load = os.getloadavg()
    wall = time.perf_counter() - t0
    print(f"\nwall time {wall:.0f} s; load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
