"""The closed loop on the tiny backbone: study votes -> reward model -> training run -> next study,
with a shuffled-vote control that tells whether the final win came through the votes.

Simulated volunteers stand in for people. They share a hidden rule — they prefer the brighter
video (mean Rec. 601 luma of all frames, in [0, 1]) — and each vote adds their own Gaussian noise
to the difference of the two videos' values; a difference under the tie margin is a tie
("Can't tell"). Every vote is a function of (seed, volunteer, trial): the run is deterministic.

1. study 1, as a first study before any training: the base model's videos of ``--seeds1`` seeds
   per ``train`` prompt, every two seeds of one prompt a trial (two seeds of one prompt differ in
   brightness far more than the base model and a few-step run do), every trial voted by every
   volunteer -> a pairs file (``vpo/pairs.py``); the volunteers' agreement with their rule;
2. two reward models (``vpo reward-model train``, its defaults) on the SAME pairs:
   ``votes`` on the votes as cast, ``shuffled`` on the votes with their trials permuted (each
   trial receives the whole vote list of another trial, one fixed permutation): the counts of
   a / b / tie and of unanimous and split trials stay as they were, only the link between a
   trial's videos and its votes is broken. Each model's accuracy against the hidden rule on fresh
   pairs it never saw (two seeds of the base model per prompt, the seeds of study 2) and on its
   own held-out trials;
3. run B (on ``votes``) and the control run B' (on ``shuffled``): online DPO from the base model
   with reward source ``learned``, the same budget and seed;
4. study 2: base vs run B and base vs run B' on the same fresh (prompt, seed) trials, the same
   volunteers: each run's win rate over base (non-tie votes, Wilson 95%) and the difference
   B - B' with a paired bootstrap 95% interval (prompts resampled with replacement, each with all
   its trials and votes of both comparisons, 10,000 resamples, percentile interval).

Verdict, fixed before any figure was seen: "the win came through the votes" holds only if run B's
Wilson interval lies above 0.5 AND the bootstrap interval of B - B' lies above 0; otherwise the
script says which condition failed.

    python benchmarks/closed_loop.py                  # the figures in README.md and docs/reward-model.md
    python benchmarks/closed_loop.py --quick          # a quick pass through every stage at toy size
"""

from __future__ import annotations

import argparse
import itertools
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
BOOTSTRAP = 10_000


def rule(video: np.ndarray) -> float:
    """The volunteers' hidden rule: mean luma of the video, in [0, 1]."""
    return float((video.astype(np.float32) @ LUMA).mean() / 255)


def vote(seed: int, volunteer: int, trial: str, va: float, vb: float, noise: float, tie: float) -> str:
    """One simulated volunteer's choice between videos of rule values ``va`` and ``vb``."""
    rng = np.random.default_rng([seed, volunteer, zlib.crc32(trial.encode())])
    u = va - vb + rng.normal(0, noise)
    return "tie" if abs(u) < tie else "a" if u > 0 else "b"


def render(systems: dict[str, Path | None], jobs: list[tuple[str, int]], folder: Path, steps: int) -> dict:
    """Sample every (prompt, seed) job from each system (None: the base model) -> {label: .npy paths}."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for label, checkpoint in systems.items():
        paths: list[Path] = [folder / f"{label}-{i:04d}.npy" for i in range(len(jobs))]

        def saved(i: int, video: np.ndarray, fps: int, paths=paths) -> None:
            np.save(paths[i], video)

        render_system("tiny", checkpoint, jobs, saved, steps=steps)
        out[label] = paths
    return out


def wilson(right: int, wrong: int) -> dict:
    r = pairwise("right", "wrong", right, wrong, 0)
    return {"n": right + wrong, "rate": r.win_rate_a, "low": r.ci_low, "high": r.ci_high}


def fmt(d: dict) -> str:
    if d["rate"] is None:
        return f"- (n = {d['n']})"
    return f"{d['rate']:.3f} [{d['low']:.3f}, {d['high']:.3f}] (n = {d['n']})"


def study1(jobs: list[tuple[str, int]], paths: list[Path], args) -> tuple[list[Pair], list[tuple], dict]:
    """Every two seeds of one prompt are a trial (sides: the lower seed is a); every volunteer votes."""
    by_prompt: dict[str, list[int]] = {}
    for i, (prompt, _) in enumerate(jobs):
        by_prompt.setdefault(prompt, []).append(i)
    trials, votes = [], []  # trials: (prompt, path a, path b, value a, value b); votes: a list per trial
    counts = {"a": 0, "b": 0, "tie": 0}
    agree = decided = 0
    diffs = []
    for prompt, idx in by_prompt.items():
        for i, j in itertools.combinations(idx, 2):
            va, vb = rule(np.load(paths[i])), rule(np.load(paths[j]))
            diffs.append(abs(va - vb))
            name = f"study1:{prompt}:{jobs[i][1]}:{jobs[j][1]}"
            choices = [vote(args.seed, v, name, va, vb, args.noise, args.tie) for v in range(args.volunteers)]
            for c in choices:
                counts[c] += 1
                if c != "tie" and va != vb:
                    decided += 1
                    agree += (c == "a") == (va > vb)
            trials.append((prompt, paths[i], paths[j], va, vb))
            votes.append(choices)
    pairs = [Pair(t[0], t[1], t[2], c) for t, cs in zip(trials, votes) for c in cs]
    figures = {
        "trials": len(trials),
        "votes": len(pairs),
        **counts,
        "agreement": agree / max(decided, 1),
        "decisive": decided,
        "abs_luma_diff_mean": float(np.mean(diffs)),
        "abs_luma_diff_median": float(np.median(diffs)),
    }
    print(
        f"  {len(trials)} trials x {args.volunteers} volunteers = {len(pairs)} votes: a {counts['a']}, "
        f"b {counts['b']}, ties {counts['tie']}; |luma difference| of a trial's two videos: mean "
        f"{figures['abs_luma_diff_mean']:.4f}, median {figures['abs_luma_diff_median']:.4f} (volunteers' noise sd "
        f"{args.noise}); the volunteers agree with the rule on {figures['agreement']:.1%} of their {decided} "
        f"decisive votes"
    )
    return pairs, votes, figures


def shuffled_pairs(pairs: list[Pair], votes: list[list[str]], seed: int) -> list[Pair]:
    """The control's pairs: the same trials in the same order, each carrying the vote list of
    another trial (one permutation of the trials, seeded)."""
    perm = np.random.default_rng([seed, 7]).permutation(len(votes))
    n = len(votes[0])
    trials = [pairs[k * n] for k in range(len(votes))]
    return [Pair(t.prompt, t.a, t.b, c) for t, k in zip(trials, perm) for c in votes[k]]


@torch.no_grad()
def rule_accuracy(model, triples: list[tuple[str, Path, Path]]) -> dict:
    """Share of (prompt, a, b) trials whose brighter video gets the higher reward (sigma 0;
    trials of two equal values left out), Wilson 95%."""
    right = wrong = 0
    for prompt, pa, pb in triples:
        a, b = np.load(pa), np.load(pb)
        if rule(a) == rule(b):
            continue
        r = model.score(model.latents(np.stack([a, b])), torch.zeros(2), [prompt] * 2)[model.head_names[0]]
        ok = bool(r[0] > r[1]) == (rule(a) > rule(b))
        right, wrong = right + ok, wrong + (not ok)
    return wilson(right, wrong)


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


def win_rate(w: np.ndarray) -> np.ndarray:
    """(..., prompts, 2) counts of (the run's wins, base's wins) -> the run's win rate over all prompts."""
    s = w.sum(-2)
    return s[..., 0] / np.maximum(s[..., 0] + s[..., 1], 1)


def paired_bootstrap(first: np.ndarray, second: np.ndarray, seed: int) -> tuple[float, float, float]:
    """Win rate of ``first`` minus that of ``second`` (each (prompts, 2) counts on the same prompts)
    and its 95% percentile interval over ``BOOTSTRAP`` resamples of the prompts with replacement;
    a drawn prompt brings both comparisons' votes (the pairing)."""
    diff = float(win_rate(first) - win_rate(second))
    idx = np.random.default_rng([seed, 11]).integers(0, len(first), size=(BOOTSTRAP, len(first)))
    boot = win_rate(first[idx]) - win_rate(second[idx])
    low, high = (float(x) for x in np.percentile(boot, [2.5, 97.5]))
    return diff, low, high


def study2(jobs, base: list[Path], others: dict[str, list[Path]], args) -> dict:
    """Base vs each run on the same trials (a = base, b = the run); each run's win rate over base
    (Wilson 95%) and the difference of the first two with a paired bootstrap over prompts."""
    prompts = sorted({p for p, _ in jobs})
    # per prompt and run: (run's wins, base's wins), summed over its trials and volunteers
    wins = {label: np.zeros((len(prompts), 2), np.int64) for label in others}
    figures: dict = {"trials": len(jobs), "luma_base": float(np.mean([rule(np.load(p)) for p in base]))}
    for label, paths in others.items():
        counts = {"a": 0, "b": 0, "tie": 0}
        values = []
        for (prompt, seed), pa, pb in zip(jobs, base, paths):
            va, vb = rule(np.load(pa)), rule(np.load(pb))
            values.append(vb)
            for v in range(args.volunteers):
                c = vote(args.seed, v, f"study2:{label}:{prompt}:{seed}", va, vb, args.noise, args.tie)
                counts[c] += 1
                if c != "tie":
                    wins[label][prompts.index(prompt), 0 if c == "b" else 1] += 1
        r = pairwise(label, "base", counts["b"], counts["a"], counts["tie"])
        figures[label] = {
            "won": counts["b"],
            "base_won": counts["a"],
            "ties": counts["tie"],
            "rate": r.win_rate_a,
            "low": r.ci_low,
            "high": r.ci_high,
            "p": r.p_value,
            "luma": float(np.mean(values)),
        }
        print(
            f"  base vs {label}: {label} won {counts['b']}, base won {counts['a']}, ties {counts['tie']}; mean luma "
            f"base {figures['luma_base']:.4f}, {label} {figures[label]['luma']:.4f}; {label}'s win rate "
            f"{r.win_rate_a:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] (Wilson 95%, non-tie votes), p = {r.p_value:.2g}"
        )
    first, second = list(others)[:2]
    diff, low, high = paired_bootstrap(wins[first], wins[second], args.seed)
    figures["difference"] = {"value": diff, "low": low, "high": high, "resamples": BOOTSTRAP, "clusters": len(prompts)}
    print(
        f"  difference {first} - {second}: {diff:+.3f} [{low:+.3f}, {high:+.3f}] (paired bootstrap 95% over "
        f"{len(prompts)} prompts, {BOOTSTRAP} resamples)"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/closed_loop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=32, help="train prompts in each study")
    parser.add_argument("--seeds1", type=int, default=4, help="study 1: base videos per prompt (each two a trial)")
    parser.add_argument("--seeds2", type=int, default=2, help="study 2: trials per prompt")
    parser.add_argument("--volunteers", type=int, default=3)
    parser.add_argument("--noise", type=float, default=0.01, help="sd of a volunteer's noise on the luma difference")
    parser.add_argument("--tie", type=float, default=0.004, help="tie margin on the noisy luma difference")
    parser.add_argument("--steps-b", type=int, default=16, help="steps of run B and of the control run B' (learned)")
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--sampling-steps", type=int, default=20, help="denoising steps of the runs and the studies")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--noise-draws", type=int, default=8, help="DPO noise draws per pair")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: on a shared CPU a second thread waits for a core)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that every stage runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.prompts, args.volunteers, args.steps_b, args.sampling_steps = 6, 2, 1, 4
    if args.seeds1 < 2 or args.seeds2 < 2 or args.prompts < 1:
        parser.error("--seeds1 and --seeds2 must be >= 2 and --prompts >= 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from vpo.data.prompts import read_prompts

    prompts = read_prompts("train")[: args.prompts]
    # study seeds far from the runs' own candidate seeds; study 2 (and the fresh rule pairs) on new ones
    jobs1 = [(p, 50_000_000 + 100 * i + k) for i, p in enumerate(prompts) for k in range(args.seeds1)]
    jobs2 = [(p, 60_000_000 + 100 * i + k) for i, p in enumerate(prompts) for k in range(args.seeds2)]
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, bf16 {bf16}")
    with open("/proc/loadavg") as f:
        print(f"load average at start: {f.read().split()[:3]}")
    figures: dict = {"args": vars(args)}
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    print(f"1. study 1: {args.seeds1} base videos for each of {len(prompts)} prompts, every two of one prompt a trial")
    base1 = render({"base": None}, jobs1, out / "study1", args.sampling_steps)["base"]
    pairs, votes, figures["study1"] = study1(jobs1, base1, args)
    pairs_file = write_pairs(pairs, out / "study1" / "pairs.jsonl")
    control_file = write_pairs(shuffled_pairs(pairs, votes, args.seed), out / "study1" / "pairs_shuffled.jsonl")
    # study 2's base videos now: they are the fresh pairs the reward models are checked on
    base2 = render({"base": None}, jobs2, out / "study2", args.sampling_steps)["base"]
    fresh = [
        (jobs2[i][0], base2[i], base2[j])
        for i, j in itertools.combinations(range(len(jobs2)), 2)
        if jobs2[i][0] == jobs2[j][0]
    ]
    figures["study1_s"] = time.perf_counter() - t0
    print(f"  pairs -> {pairs_file}, control -> {control_file} ({figures['study1_s']:.0f} s)")

    from vpo.reward_model.train import format_figures, train_reward_model

    models = {}
    for label, path in (("votes", pairs_file), ("shuffled", control_file)):
        t0 = time.perf_counter()
        print(f"2. reward model '{label}' on {path.name}")
        trained = train_reward_model(path, out / f"reward_model_{label}", progress=False)
        print("  " + format_figures(trained.meta).replace("\n", "\n  "))
        held = list(dict.fromkeys((p.prompt, p.a, p.b) for p in trained.heldout))
        figures[f"reward_model_{label}"] = {
            "figures": trained.meta["figures"],
            "best_epoch": trained.meta["best_epoch"],
            "epochs": trained.meta["epochs"],
            "rule_fresh": rule_accuracy(trained.model, fresh),
            "rule_heldout": rule_accuracy(trained.model, held),
            "s": time.perf_counter() - t0,
        }
        m = figures[f"reward_model_{label}"]
        print(
            f"  against the hidden rule: fresh base pairs (never voted on) {fmt(m['rule_fresh'])}; "
            f"its held-out trials {fmt(m['rule_heldout'])} ({m['s']:.0f} s)"
        )
        models[label] = out / f"reward_model_{label}"

    checkpoints = {}
    for label, name in (("votes", "run_b"), ("shuffled", "run_b_control")):
        t0 = time.perf_counter()
        print(f"3. {name}: online-dpo on learned/overall (reward model '{label}'), {args.steps_b} steps")
        checkpoints[name] = run(
            name, out, args.steps_b, args, reward="learned", reward_model=str(models[label]), dimension="overall"
        )
        figures[f"{name}_s"] = time.perf_counter() - t0
        print(f"  -> {checkpoints[name]} ({figures[f'{name}_s']:.0f} s)")

    t0 = time.perf_counter()
    print(f"4. study 2: base vs run B and base vs run B' (control), {len(jobs2)} trials on fresh seeds")
    rendered = render(
        {"B": checkpoints["run_b"], "B'": checkpoints["run_b_control"]}, jobs2, out / "study2", args.sampling_steps
    )
    figures["study2"] = s2 = study2(jobs2, base2, rendered, args)
    figures["study2_s"] = time.perf_counter() - t0
    b, d = s2["B"], s2["difference"]
    figures["verdict"] = through = bool(b["low"] is not None and b["low"] > 0.5 and d["low"] > 0)
    print(f"  ({figures['study2_s']:.0f} s)")
    print(
        f"verdict (rule fixed in advance: run B's Wilson interval above 0.5 and the interval of B - B' above 0): "
        f"B's interval above 0.5: {'yes' if b['low'] is not None and b['low'] > 0.5 else 'NO'}; "
        f"B - B' above 0: {'yes' if d['low'] > 0 else 'NO'} -> "
        + ("the win came through the votes" if through else "NOT shown that the win came through the votes")
    )
    figures["total_s"] = time.perf_counter() - t_all
    with open("/proc/loadavg") as f:
        print(f"load average at the end: {f.read().split()[:3]}")
    print(f"total {figures['total_s'] / 60:.1f} min")
    (out / "figures.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
