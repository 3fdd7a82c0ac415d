"""``online-rwr``: Flow-RWR, reward-weighted regression for flow models (VideoAlign, Liu et al.,
"Improving Video Generation with Human Feedback", 2025, Sec. "Flow-RWR"), run online.

Each step, for each prompt: sample N candidates from the *current* policy (as ``online-dpo`` does),
score them on the chosen dimension, and regress the policy's velocity on every candidate with the
plain flow-matching loss weighted by softmax(r_i / tau) within the prompt's group
(``loss.flow_rwr_loss``, ``docs/algorithm.md`` Eq. 8). VideoAlign's offline Flow-RWR weights each
video by exp(r); normalising the weights within a prompt's group (Flow-GRPO's appendix) makes them
independent of the prompt's reward level, so ``rwr_temperature`` alone sets how sharp they are:
tau -> 0 trains on the best candidate only, tau -> infinity is plain flow matching on the policy's
own samples.

There is no reference model and no pair: every candidate is used, and a prompt whose candidates
tie is not skipped (equal rewards give equal weights: plain flow matching). ``ref_update_every``,
``beta`` and ``tie_tolerance`` belong to DPO and are ignored here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from vpo.train.keys import (
    PHASE_UPDATING,
    REWARD_MARGIN,
    RWR_GRAD_NORM,
)
from vpo.train.loss import flow_rwr_loss, per_video_mse
from vpo.train.online_dpo import sample_and_score
from vpo.train.runner import Run


def rwr_update(
    run: Run,
    latents: torch.Tensor,
    rewards: torch.Tensor,
    prompts: list[str],
    step: int,
    images: torch.Tensor | None = None,
) -> dict:
    """One Flow-RWR optimizer step on (P, N, ...) latents with their (P, N) rewards and P prompts
    (and, image-to-video, their P first frames).

    The loss is an expectation over sigma and eps (``docs/algorithm.md``, Eq. 3 for DPO, the same
    here); each update averages ``noise_draws`` draws, every video getting its own sigma and eps
    (there is no pair to share them with). Each draw is back-propagated on its own, so memory does
    not grow with the draws."""
    p, n = rewards.shape
    draws, bb = run.cfg.noise_draws, run.backbone
    # the loss is the mean over the step's prompts on all ranks (vpo/train/distributed.py): each
    # rank's share is its prompts over the total, and Run.apply_gradients sums the ranks' gradients
    share = p / run.ranks.sum(p)
    g = run.generator(step, "rwr" if run.first_prompt == 0 else f"rwr-{run.first_prompt}")
    flat_prompts = [prompt for prompt in prompts for _ in range(n)]
    flat_images = None if images is None else images.repeat_interleave(n, 0)
    text = bb.conditioning(flat_prompts, flat_images)
    x0 = latents.reshape(p * n, *latents.shape[2:])
    run.optimizer.zero_grad(set_to_none=True)
    parts = []
    for draw in range(draws):
        run.phase(PHASE_UPDATING, draw, draws)
        if draw and run.physencoder is not None:  # the head's tokens: a new graph for each backward
            text = bb.conditioning(flat_prompts, flat_images)
        sigma = bb.training_sigmas(p * n, g).to(x0.device)
        eps = torch.randn(x0.shape, generator=g).to(x0.device)
        s = sigma.view(-1, *[1] * (x0.ndim - 1))
        x_t = (1 - s) * x0 + s * eps  # docs/algorithm.md, Eq. 1a
        target = eps - x0  # Eq. 1b: the velocity of the straight path, as in pretraining and Flow-DPO
        with bb.autocast():
            mse = per_video_mse(bb.predict_velocity(x_t, sigma, text), target).view(p, n)
        loss, stats = flow_rwr_loss(mse, rewards, run.cfg.rwr_temperature)
        run.check_finite("the RWR loss", loss)
        (loss * share / draws).backward()
        parts.append(stats)
    stats = {k: sum(part[k] for part in parts) / draws for k in parts[0]}
    stats[RWR_GRAD_NORM] = run.apply_gradients()
    return stats


def train_run(run: Run, stop: Callable[[], bool] | None, resume: bool) -> Path:
    """Train ``run`` (algorithm ``online-rwr``); returns the folder of the last checkpoint."""
    n = run.cfg.num_candidates

    def one_step(step: int) -> dict:
        t0 = time.perf_counter()
        # 1. sample N candidates per prompt from the current policy; 2. score them (the same
        # candidates online-dpo draws at this step)
        c = sample_and_score(run, step)
        prompts, scores, latents = c.prompts, c.scores, c.latents
        t_score = time.perf_counter()

        # 3. reward-weighted flow matching on every candidate
        values = {
            **c.reward_values(),
            # best minus worst reward per prompt: the spread the temperature is compared with
            REWARD_MARGIN: (c.reward.max(1).values - c.reward.min(1).values).mean().item(),
        }
        values.update(
            rwr_update(run, latents.view(len(prompts), n, *latents.shape[1:]), scores, prompts, step, c.images)
        )

        # 4. log, held-out monitor, sample videos, checkpoint (run.end_step); the step's time leaves
        # out writing its videos
        values.update(c.timings(t0, t_score))
        best = set((scores.argmax(1) + torch.arange(len(prompts)) * n).tolist())
        c.log(run, step + 1, c.labels(dict.fromkeys(best, "best")))
        return values

    return run.loop(run.begin(resume), stop, one_step)
