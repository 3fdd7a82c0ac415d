"""Real-size cost of OnlineVPO on Wan2.1-1.3B: one online-DPO step and ReFL's memory, on one GPU.

    python benchmarks/gpu.py                  # CUDA: full-size Wan2.1-1.3B, 480x832, 33 and 81 frames
    python benchmarks/gpu.py --dry-run        # CPU: the same code on the tiny random Wan pipeline

The model is the full-size Wan2.1-T2V-1.3B architecture (``WanTransformer3DModel`` with the
released config: 30 layers, 12 heads of 128, FFN 8960, text dim 4096; ``AutoencoderKLWan`` with
the released config) with *random* weights: time and memory depend on the sizes, not on the
values, so no weights are needed. It goes through the same ``WanBackbone`` and training loops as a
real run (bf16 weights, gradient checkpointing, VAE tiling: the CUDA defaults). Two stand-ins:

* the text encoder is a one-layer UMT5 of the real width (4096) instead of UMT5-XXL (5.7B
  params): prompts are encoded once and cached, so it is not part of a step's time; a real run
  holds ~11 GB more for it unless ``cpu_offload`` keeps it on the CPU;
* the ``metrics`` reward runs on the CPU; it is given the decoded frames subsampled 2x in height
  and width (the full-size frames are decoded, and timed, in full).

Rows, in this order, each guarded (``OOM`` when CUDA runs out of memory, ``skipped`` when the
time budget would be exceeded):

1. online-DPO step at 33 frames: N = 6 candidates x 30 steps with CFG 5 (one batch of 12), decode,
   score, Flow-DPO update (2 noise draws, LoRA r = 32) — time split and peak memory;
2. ReFL at depth 1, 2, 4 (33, then 81 frames) — peak memory (OnlineVPO's claim: DPO fits where
   ReFL does not);
3. the online-DPO step at 81 frames, last because it is the longest: the row skipped if the budget
   runs short (its time is estimated from the 33-frame row by the forward's FLOPs).

Sampling videos/s is the candidates' rate in the DPO step (6 videos, 30 steps, CFG). Prints a
table and one JSON line. Figures go in ``docs/gpu.md`` with the machine they came from.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import torch
from train_step import Collect

from vpo.backbones.diffusers_video import MemoryOptions
from vpo.backbones.wan import WanBackbone
from vpo.train import train
from vpo.train.config import TrainConfig

# Wan2.1-T2V-1.3B's transformer/config.json
WAN_1_3B = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=8960,
    num_layers=30,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
FULL = dict(height=480, width=832, frames=(33, 81), candidates=6, steps=30, refl_steps=4, depths=(1, 2, 4))
DRY = dict(height=16, width=16, frames=(5, 9), candidates=2, steps=2, refl_steps=4, depths=(1, 2, 4))


def full_wan_pipeline(device: str):
    """Wan2.1-1.3B's transformer and VAE at full size, random weights, built on ``device`` in bf16."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from vpo.backbones.testing import WORDS, tiny_tokenizer

    with torch.device(device):
        transformer = as_loaded_in_bf16(WanTransformer3DModel(**WAN_1_3B))
        vae = as_loaded_in_bf16(AutoencoderKLWan())  # its defaults are Wan2.1's VAE
        text = UMT5EncoderModel(
            UMT5Config(
                vocab_size=len(WORDS) + 3,
                d_model=4096,
                d_kv=64,
                d_ff=256,
                num_layers=1,
                num_heads=8,
                pad_token_id=0,
                eos_token_id=1,
            )
        ).to(torch.bfloat16)
    return WanPipeline(
        tokenizer=tiny_tokenizer(),
        text_encoder=text,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
    )


def as_loaded_in_bf16(model):
    """bf16 as ``from_pretrained(dtype=torch.bfloat16)`` loads it: the modules the class keeps in fp32
    (Wan: rope, time embedder, norms) stay fp32."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    model.to(torch.bfloat16)
    for name, module in model.named_modules():
        if keep & set(name.split(".")):
            module.to(torch.float32)
    return model


def make_backbone(dry: bool, frames: int, height: int, width: int, device: str) -> WanBackbone:
    if dry:
        from vpo.backbones.testing import wan_pipeline

        pipe = wan_pipeline()
    else:
        pipe = full_wan_pipeline(device)
    bb = WanBackbone(pipe, frames, height, width, MemoryOptions.resolve(device))
    bb.transformer.to(device), bb.text_encoder.to(device), bb.vae.to(device)
    decode = bb.decode

    def timed_decode(latents):
        t0 = time.perf_counter()
        video = decode(latents)
        timed_decode.seconds += time.perf_counter() - t0
        return video if dry else video[:, :, ::2, ::2].contiguous()  # the reward sees 2x-subsampled frames

    timed_decode.seconds = 0.0
    bb.decode = timed_decode
    return bb


def config(algorithm: str, p: dict, out: str, **extra) -> TrainConfig:
    return TrainConfig.from_dict(
        {
            "backbone": "wan",
            "algorithm": algorithm,
            "reward": "metrics",
            "dimension": "temporal",
            "steps": 1,
            "prompts_per_step": 1,
            "prompts": "train",
            "num_candidates": p["candidates"],
            "sampling_steps": p["steps"],
            "guidance": 5.0,
            "noise_draws": 2,
            "lora_rank": 32,
            "heldout_every": 0,
            "checkpoint_every": 10**6,
            "out": out,
            **extra,
        }
    )


def peak_gb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def run_row(kind: str, frames: int, depth: int, p: dict, device: str, dry: bool) -> dict:
    row = {"row": kind, "frames": frames, "depth": depth, "status": "ok"}
    bb = None
    try:
        if device == "cuda":
            torch.cuda.empty_cache()
        bb = make_backbone(dry, frames, p["height"], p["width"], device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        base_gb = peak_gb(device)
        sink = Collect()
        with tempfile.TemporaryDirectory() as out:
            if kind == "online-dpo":
                cfg = config("online-dpo", p, out)
            else:
                cfg = config("refl", p, out, sampling_steps=p["refl_steps"], refl_depth=depth)
            t0 = time.perf_counter()
            train(cfg, sink, device=device, backbone=bb)
            if device == "cuda":
                torch.cuda.synchronize()
            row["step_s"] = round(time.perf_counter() - t0, 2)
        values = sink.rows[-1]
        if kind == "online-dpo":
            decode_s = bb.decode.seconds
            row.update(
                sample_s=round(values["perf/sample_s"] - decode_s, 2),
                decode_s=round(decode_s, 2),
                score_s=round(values["perf/score_s"], 2),
                update_s=round(values["perf/update_s"], 2),
                videos_per_s=round(p["candidates"] / values["perf/sample_s"], 4),
            )
        row["peak_gb"] = None if base_gb is None else round(peak_gb(device), 2)
        row["weights_gb"] = None if base_gb is None else round(base_gb, 2)
    except torch.cuda.OutOfMemoryError:
        row["status"] = "OOM"
    except Exception as e:  # a row that fails must not hide the others
        row["status"] = f"error: {type(e).__name__}: {str(e)[:200]}"
    finally:
        del bb
        if device == "cuda":
            torch.cuda.empty_cache()
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny random Wan pipeline, reduced size")
    parser.add_argument("--budget-s", type=float, default=450, help="skip rows that would end past this (default 450)")
    args = parser.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.py: error: no CUDA device (use --dry-run on a CPU)", file=sys.stderr)
        return 2
    p = DRY if args.dry_run else FULL
    cpu = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    machine = torch.cuda.get_device_name() if device == "cuda" else cpu
    t_start, rows, per_frame_s = time.perf_counter(), [], {}
    few, many = p["frames"]
    # the longest row last: if the budget runs short, it is the one skipped
    plan = (
        [("online-dpo", few, 0)]
        + [("refl", f, d) for f in (few, many) for d in p["depths"]]
        + [("online-dpo", many, 0)]
    )
    for kind, frames, depth in plan:
        elapsed = time.perf_counter() - t_start
        known = [(f, s) for (k, d, f), s in per_frame_s.items() if (k, d) == (kind, depth)]
        estimate = max((s * forward_flops(frames, p) / forward_flops(f, p) for f, s in known), default=0.0)
        if elapsed + estimate > args.budget_s:
            rows.append(
                {
                    "row": kind,
                    "frames": frames,
                    "depth": depth,
                    "status": f"skipped (time budget: {elapsed:.0f} s + est. {estimate:.0f} s)",
                }
            )
            continue
        t0 = time.perf_counter()
        row = run_row(kind, frames, depth, p, device, args.dry_run)
        per_frame_s[(kind, depth, frames)] = time.perf_counter() - t0
        rows.append(row)
        took = per_frame_s[(kind, depth, frames)]
        print(f"  {kind} {frames} frames depth {depth}: {row['status']} ({took:.0f} s)", file=sys.stderr, flush=True)
    print_table(rows, machine, p, args.dry_run)
    print(
        json.dumps(
            {
                "benchmark": "gpu",
                "machine": machine,
                "dry_run": args.dry_run,
                "height": p["height"],
                "width": p["width"],
                "candidates": p["candidates"],
                "steps": p["steps"],
                "rows": rows,
                "total_s": round(time.perf_counter() - t_start, 1),
            }
        )
    )
    return 0


def forward_flops(frames: int, p: dict) -> float:
    """FLOPs of one Wan2.1-1.3B forward on one video: 2 x params x tokens for the linear layers plus
    4 x layers x tokens^2 x width for attention — to extrapolate a row's time to more frames."""
    tokens = ((frames - 1) // 4 + 1) * (p["height"] // 16) * (p["width"] // 16)
    return 2 * 1.42e9 * tokens + 4 * 30 * tokens**2 * 1536


def print_table(rows: list[dict], machine: str, p: dict, dry: bool) -> None:
    model = "tiny random Wan pipeline (dry run)" if dry else "Wan2.1-1.3B architecture, random weights"
    print(f"{model}, {p['height']}x{p['width']}, N = {p['candidates']} x {p['steps']} steps with CFG; {machine}")
    cols = (
        "row",
        "frames",
        "depth",
        "status",
        "step_s",
        "sample_s",
        "decode_s",
        "score_s",
        "update_s",
        "videos_per_s",
        "peak_gb",
    )
    print(" | ".join(f"{c:>12}" for c in cols))
    for r in rows:
        print(" | ".join(f"{'-' if r.get(c) is None else r.get(c)!s:>12}" for c in cols))


if __name__ == "__main__":
    sys.exit(main())
