"""``refl``: reward-gradient baseline (ReFL, Xu et al., "ImageReward", 2023), as OnlineVPO compares
against it (Sec. 3, Fig. 3).

Per prompt: denoise *without* gradients from pure noise down to a random step, then run the last
``refl_depth`` denoising steps *with* gradients, predict x0 from the final velocity
(``x0 = x_t - sigma * v`` in rectified flow), decode, and maximise the differentiable reward:
``loss = -reward(x0)``. Memory grows with ``refl_depth`` (every step kept for backprop) and with
video size — the scalability point of OnlineVPO's Fig. 3. Needs a differentiable reward source.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import torch

from vpo.backbones.base import euler_step
from vpo.train.keys import (
    PHASE_SAMPLING,
    PHASE_UPDATING,
    REFL_GRAD_NORM,
    REFL_GRAD_STEPS,
    REFL_LOSS,
    REFL_STOP_INDEX,
    REWARD_MAX,
    REWARD_MEAN,
    REWARD_MIN,
)
from vpo.train.runner import Run, derive_seed


def reward_gradient_step(run: Run, prompts: list[str], step: int) -> dict:
    cfg, bb = run.cfg, run.backbone
    b = len(prompts)
    # seeds by the prompt's index over all ranks (runner.Run.pick_prompts)
    x = bb.initial_noise(run.candidate_seeds(step, 0, b * run.ranks.world)[run.first_prompt :][:b])
    text = bb.guidance_text(prompts, cfg.guidance)
    scheduler = bb.make_scheduler(cfg.sampling_steps)
    timesteps = scheduler.timesteps
    # stop the no-grad phase at a random step, leaving refl_depth steps to differentiate through
    rng = random.Random(derive_seed(cfg.seed, step, "refl-stop"))
    last = rng.randrange(max(cfg.refl_depth, len(timesteps) // 2), len(timesteps) + 1)
    grad_from = last - cfg.refl_depth
    with bb.autocast():
        for i, t in enumerate(timesteps[:last]):
            run.phase(PHASE_SAMPLING if i < grad_from else PHASE_UPDATING, i, last)
            sigma = (t / scheduler.config.num_train_timesteps).expand(b)
            with torch.set_grad_enabled(i >= grad_from):
                v = bb.guided_velocity(x, sigma, text, cfg.guidance)  # the same CFG as Backbone.sample
                if i == last - 1:
                    x0 = x - sigma.view(-1, *[1] * (x.ndim - 1)) * v  # one-step x0 prediction
                else:
                    x = euler_step(scheduler, i, x, v)  # the same Euler step as Backbone.sample
    videos = bb.decode_differentiable(x0)
    reward = run.reward.score_differentiable(videos, prompts, cfg.dimension)
    run.check_finite("the differentiable reward", reward)
    loss = -reward.mean()
    # the ranks' gradients are summed (Run.apply_gradients): each contributes its share of the mean
    norm = run.optimizer_step(loss / run.ranks.world)
    return {
        REWARD_MEAN: reward.mean().item(),
        REWARD_MAX: reward.max().item(),
        REWARD_MIN: reward.min().item(),
        REFL_LOSS: loss.item(),
        REFL_GRAD_NORM: norm,
        REFL_GRAD_STEPS: float(cfg.refl_depth),
        REFL_STOP_INDEX: float(last),
    }


def train_run(run: Run, stop: Callable[[], bool] | None, resume: bool) -> Path:
    # TrainConfig checked that the reward is differentiable
    # 1.-4. per step: denoise, differentiate the reward through the last steps, update; 6. (run.loop)
    # log, held-out monitor, checkpoint. ReFL has no reference model: no step 5.
    return run.loop(run.begin(resume), stop, lambda step: reward_gradient_step(run, run.pick_prompts(step), step))
