"""``offline-dpo``: the paper's offline baseline (OnlineVPO Table 4d). Preference pairs are sampled
and scored *once*, from the base model, before training — one pair per training prompt, N
candidates each — and then the same Flow-DPO loss is applied to that fixed set. Compared with
``online-dpo`` at equal steps, the difference is only where the pairs come from.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import torch

from vpo.train.keys import OFFLINE_MARGIN, OFFLINE_PAIRS, PAIRS, PHASE_PAIRS, REWARD_MARGIN
from vpo.train.online_dpo import dpo_update, pick_pairs
from vpo.train.runner import Run, derive_seed


def build_pairs(run: Run) -> tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor, list[int]]:
    """Winner latents, loser latents, prompts, margins and prompt indices (into ``run.prompts``:
    image-to-video, their first frames) of the fixed set, from the base model
    (the policy adapter is still zero when this runs). Deterministic in the seed, so a resumed run
    rebuilds exactly the same set."""
    cfg, n = run.cfg, run.cfg.num_candidates
    winners, losers, prompts, margins, sources = [], [], [], [], []
    for i, prompt in enumerate(run.prompts):
        run.phase(PHASE_PAIRS, i, len(run.prompts), step=0)
        seeds = run.candidate_seeds(-1, i, n)  # step -1: before training
        videos, latents = run.backbone.sample(
            [prompt] * n,
            seeds,
            steps=cfg.sampling_steps,
            guidance=cfg.guidance,
            return_latents=True,
            sampler=cfg.sampler,
            images=None if run.images is None else run.images[[i] * n],
        )
        scored = run.score(videos, [prompt] * n)
        for _, w, l in pick_pairs(scored.ranking[None], cfg.tie_tolerance):
            winners.append(latents[w])
            losers.append(latents[l])
            prompts.append(prompt)
            margins.append(float(scored.reward[w] - scored.reward[l]))
            sources.append(i)
    if not prompts:
        raise ValueError("offline-dpo found no pair: every prompt's candidates tied within tie_tolerance")
    return torch.stack(winners), torch.stack(losers), prompts, torch.tensor(margins), sources


def train_run(run: Run, stop: Callable[[], bool] | None, resume: bool) -> Path:
    cfg = run.cfg
    # the pairs come from the base model: build them before loading any trained adapter
    winners, losers, pair_prompts, margins, sources = build_pairs(run)
    start = run.begin(resume, {OFFLINE_PAIRS: len(pair_prompts), OFFLINE_MARGIN: margins.mean().item()})

    def one_step(step: int) -> dict:
        # 1.-3. take this step's pairs from the fixed set (no sampling, no scoring)
        # (every rank builds the same set and draws the step's pairs of all ranks; it takes its share)
        rng = random.Random(derive_seed(cfg.seed, step, "offline-pairs"))
        drawn = [rng.randrange(len(pair_prompts)) for _ in range(cfg.prompts_per_step * run.ranks.world)]
        first = run.first_prompt
        idx = drawn[first : first + cfg.prompts_per_step]
        # 4. the same Flow-DPO update as online-dpo
        values = dpo_update(
            run,
            winners[idx],
            losers[idx],
            [pair_prompts[i] for i in idx],
            step,
            list(range(first, first + len(idx))),
            run.images_at([sources[i] for i in idx]),
        )
        values[PAIRS] = len(idx)
        values[REWARD_MARGIN] = margins[idx].mean().item()
        # 5. curriculum reference update every K steps; 6. (run.loop) log, held-out monitor, checkpoint
        run.maybe_update_reference(step + 1, values)
        return values

    return run.loop(start, stop, one_step)
