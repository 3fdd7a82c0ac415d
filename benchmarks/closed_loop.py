"""The closed loop on the tiny backbone: study votes -> reward model -> training run -> next study.

Simulated volunteers stand in for people. They share a hidden rule — they prefer the brighter
video (mean Rec. 601 luma of all frames, in [0, 1]) — and each vote adds their own Gaussian noise
to the difference of the two videos' values; a difference under the tie margin is a tie
("Can't tell"). Every vote is a function of (seed, volunteer, trial): the run is deterministic.

0. run A: a short online-DPO run on the ``metrics`` source (``temporal``): the run whose videos a
   first study compares with the base model's;
1. study 1: base vs run A on (prompt, seed) pairs of the ``train`` prompts, every trial voted by
   every volunteer; the votes become a pairs file (``vpo/pairs.py``);
2. a reward model trained on those pairs (``vpo reward-model train``): its held-out accuracy
   against the votes and, on the same held-out trials, against the hidden rule itself;
3. run B: online DPO from the base model with reward source ``learned`` (that model);
4. study 2: base vs run B on fresh seeds, the same volunteers: run B's win rate with its Wilson
   95% interval (the goal: above 50%).

    python benchmarks/closed_loop.py                  # the figures in README.md and docs/reward-model.md
    python benchmarks/closed_loop.py --quick          # a minute-long pass through every stage
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from vpo.pairs import Pair, write_pairs
from vpo.stats import pairwise
from vpo.studies import render_system
from vpo.train import train
from vpo.train.config import TrainConfig
from vpo.train.sinks import JsonlSink

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def rule(video: np.ndarray) -> float:
    """The volunteers' hidden rule: mean luma of the video, in [0, 1]."""
    return float((video.astype(np.float32) @ LUMA).mean() / 255)


def vote(seed: int, volunteer: int, trial: str, va: float, vb: float, noise: float, tie: float) -> str:
    """One simulated volunteer's choice between videos of rule values ``va`` and ``vb``."""
    rng = np.random.default_rng([seed, volunteer, zlib.crc32(trial.encode())])
    u = va - vb + rng.normal(0, noise)
    return "tie" if abs(u) < tie else "a" if u > 0 else "b"


def render(label: str, checkpoint: Path | None, jobs: list[tuple[str, int]], folder: Path, steps: int) -> list[Path]:
    """Sample every (prompt, seed) job from the base model or a checkpoint -> .npy paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = [folder / f"{label}-{i:04d}.npy" for i in range(len(jobs))]

    def saved(i: int, video: np.ndarray, fps: int) -> None:
        np.save(paths[i], video)

    render_system("tiny", checkpoint, jobs, saved, steps=steps)
    return paths


def study(
    name: str, base: list[Path], other: list[Path], jobs, volunteers: int, args
) -> tuple[list[Pair], dict[str, float]]:
    """Every volunteer votes on every trial (base vs other, sides as stored: a = base)."""
    pairs, counts = [], {"a": 0, "b": 0, "tie": 0}
    agree = decided = 0
    values_base, values_other = [], []
    for (prompt, seed), pa, pb in zip(jobs, base, other):
        va, vb = rule(np.load(pa)), rule(np.load(pb))
        values_base.append(va)
        values_other.append(vb)
        for v in range(volunteers):
            choice = vote(args.seed, v, f"{name}:{prompt}:{seed}", va, vb, args.noise, args.tie)
            counts[choice] += 1
            pairs.append(Pair(prompt, pa, pb, choice))
            if choice != "tie" and va != vb:
                decided += 1
                agree += (choice == "a") == (va > vb)
    result = pairwise("other", "base", counts["b"], counts["a"], counts["tie"])
    print(
        f"  {len(jobs)} trials x {volunteers} volunteers = {len(pairs)} votes: other won {counts['b']}, "
        f"base won {counts['a']}, ties {counts['tie']}; volunteers agree with the rule on "
        f"{agree / max(decided, 1):.1%} of their decisive votes"
    )
    print(
        f"  mean rule value (luma): base {np.mean(values_base):.4f}, other {np.mean(values_other):.4f}; "
        f"other's win rate {result.win_rate_a:.3f} [{result.ci_low:.3f}, {result.ci_high:.3f}] "
        f"(Wilson 95%, non-tie votes), p = {result.p_value:.2g}"
    )
    return pairs, {
        "win_rate": result.win_rate_a,
        "low": result.ci_low,
        "high": result.ci_high,
        "p": result.p_value,
        "ties": counts["tie"],
        "votes": len(pairs),
        "luma_base": float(np.mean(values_base)),
        "luma_other": float(np.mean(values_other)),
    }


def run(name: str, out: Path, steps: int, args, **fields) -> Path:
    cfg = TrainConfig.from_dict(
        {
            "prompts": "train",
            "steps": steps,
            "num_candidates": args.candidates,
            "prompts_per_step": args.prompts_per_step,
            "sampling_steps": args.sampling_steps,
            "heldout_every": 0,
            "checkpoint_every": steps,
            "seed": args.seed,
            "lr": args.lr,
            "noise_draws": args.noise_draws,
            **fields,
            "out": str(out / name),
        }
    )
    sink = JsonlSink(cfg.out, cfg.steps)
    try:
        return train(cfg, sink)
    finally:
        sink.close()


@torch.no_grad()
def rule_accuracy(trained, seed_rule=rule) -> dict:
    """The reward model's accuracy against the hidden rule itself on its held-out trials (each
    trial once, whatever the votes said; trials whose two values are equal left out)."""
    model = trained.model
    seen, right, total = set(), 0, 0
    for p in trained.heldout:
        key = (p.prompt, str(p.a), str(p.b))
        if key in seen:
            continue
        seen.add(key)
        a, b = np.load(p.a), np.load(p.b)
        if seed_rule(a) == seed_rule(b):
            continue
        r = model.score(model.latents(np.stack([a, b])), torch.zeros(2), [p.prompt] * 2)[model.head_names[0]]
        right += bool(r[0] > r[1]) == (seed_rule(a) > seed_rule(b))
        total += 1
    result = pairwise("right", "wrong", right, total - right, 0)
    return {"trials": total, "accuracy": result.win_rate_a, "low": result.ci_low, "high": result.ci_high}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/closed_loop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=48, help="train prompts in each study")
    parser.add_argument("--seeds", type=int, default=2, help="videos per prompt in each study")
    parser.add_argument("--volunteers", type=int, default=3)
    parser.add_argument("--noise", type=float, default=0.01, help="sd of a volunteer's noise on the luma difference")
    parser.add_argument("--tie", type=float, default=0.004, help="tie margin on the noisy luma difference")
    parser.add_argument("--steps-a", type=int, default=6, help="run A's steps (metrics/temporal)")
    parser.add_argument("--steps-b", type=int, default=40, help="run B's steps (learned)")
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--sampling-steps", type=int, default=20, help="denoising steps of the runs and the studies")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--noise-draws", type=int, default=8, help="DPO noise draws per pair")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that every stage runs")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.volunteers, args.steps_a, args.steps_b, args.sampling_steps = 8, 2, 1, 2, 6
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from vpo.data.prompts import read_prompts

    prompts = read_prompts("train")[: args.prompts]
    # study seeds far from the runs' own candidate seeds; study 2 on fresh ones
    jobs1 = [(p, 50_000_000 + 100 * i + k) for i, p in enumerate(prompts) for k in range(args.seeds)]
    jobs2 = [(p, 60_000_000 + 100 * i + k) for i, p in enumerate(prompts) for k in range(args.seeds)]
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, bf16 {bf16}")
    figures: dict = {"args": vars(args)}
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    print(f"0. run A: online-dpo on metrics/temporal, {args.steps_a} steps")
    ckpt_a = run("run_a", out, args.steps_a, args, reward="metrics", dimension="temporal")
    figures["run_a_s"] = time.perf_counter() - t0
    print(f"  -> {ckpt_a} ({figures['run_a_s']:.0f} s)")

    t0 = time.perf_counter()
    print(f"1. study 1: base vs run A, {len(jobs1)} trials")
    base1 = render("base", None, jobs1, out / "study1", args.sampling_steps)
    run_a = render("run_a", ckpt_a, jobs1, out / "study1", args.sampling_steps)
    pairs, figures["study1"] = study("study1", base1, run_a, jobs1, args.volunteers, args)
    pairs_file = write_pairs(pairs, out / "study1" / "pairs.jsonl")
    figures["study1_s"] = time.perf_counter() - t0
    print(f"  pairs -> {pairs_file} ({figures['study1_s']:.0f} s)")

    t0 = time.perf_counter()
    print("2. reward model on study 1's votes")
    from vpo.reward_model.train import format_figures, train_reward_model

    trained = train_reward_model(pairs_file, out / "reward_model", progress=True)
    print("  " + format_figures(trained.meta).replace("\n", "\n  "))
    figures["reward_model"] = trained.meta["figures"]
    figures["reward_model_rule"] = acc = rule_accuracy(trained)
    figures["reward_model_s"] = time.perf_counter() - t0
    print(
        f"  against the hidden rule, held-out trials: {acc['accuracy']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}] "
        f"on {acc['trials']} trials ({figures['reward_model_s']:.0f} s)"
    )

    t0 = time.perf_counter()
    print(f"3. run B: online-dpo on learned/overall, {args.steps_b} steps")
    ckpt_b = run(
        "run_b", out, args.steps_b, args, reward="learned", reward_model=str(out / "reward_model"), dimension="overall"
    )
    figures["run_b_s"] = time.perf_counter() - t0
    print(f"  -> {ckpt_b} ({figures['run_b_s']:.0f} s)")

    t0 = time.perf_counter()
    print(f"4. study 2: base vs run B, {len(jobs2)} trials on fresh seeds")
    base2 = render("base", None, jobs2, out / "study2", args.sampling_steps)
    run_b = render("run_b", ckpt_b, jobs2, out / "study2", args.sampling_steps)
    _, figures["study2"] = study("study2", base2, run_b, jobs2, args.volunteers, args)
    figures["study2_s"] = time.perf_counter() - t0
    figures["total_s"] = time.perf_counter() - t_all
    print(f"  ({figures['study2_s']:.0f} s); total {figures['total_s'] / 60:.1f} min")
    (out / "figures.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
