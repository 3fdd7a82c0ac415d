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
import time

import torch

from vpo.train.runner import Run, _mix


def reward_gradient_step(run: Run, prompts: list[str], step: int) -> dict:
    cfg, bb = run.cfg, run.backbone
    b = len(prompts)
    x = bb.initial_noise(run.candidate_seeds(step, 0, b))
    cond = bb.encode_prompts(prompts)
    text = torch.cat([cond, bb.null_text(b)])
    scheduler = bb.make_scheduler(cfg.sampling_steps)
    timesteps = scheduler.timesteps
    # stop the no-grad phase at a random step, leaving refl_depth steps to differentiate through
    rng = random.Random(_mix(cfg.seed, step, "refl-stop"))
    last = rng.randrange(max(cfg.refl_depth, len(timesteps) // 2), len(timesteps) + 1)
    grad_from = last - cfg.refl_depth
    with bb.autocast():
        for i, t in enumerate(timesteps[:last]):
            sigma = (t / scheduler.config.num_train_timesteps).expand(b)
            with torch.set_grad_enabled(i >= grad_from):
                v_cond, v_uncond = (
                    bb.predict_velocity(torch.cat([x, x]), torch.cat([sigma, sigma]), text).float().chunk(2)
                )
                v = v_uncond + cfg.guidance * (v_cond - v_uncond)
                if i == last - 1:
                    x0 = x - sigma.view(-1, *[1] * (x.ndim - 1)) * v  # one-step x0 prediction
                else:
                    x = x + (scheduler.sigmas[i + 1] - scheduler.sigmas[i]) * v  # Euler, as the scheduler
    videos = bb.decode_differentiable(x0)
    reward = run.reward.score_differentiable(videos, prompts, cfg.dimension)
    run.check_finite("the differentiable reward", reward)
    loss = -reward.mean()
    norm = run.optimizer_step(loss)
    return {
        "reward/mean": reward.mean().item(),
        "reward/max": reward.max().item(),
        "reward/min": reward.min().item(),
        "refl/loss": loss.item(),
        "refl/grad_norm": norm,
        "refl/grad_steps": float(cfg.refl_depth),
        "refl/stop_index": float(last),
    }


def train(cfg, sink, stop=None, resume: bool = False, device: str = "cpu", backbone=None):
    run = Run(cfg, sink, device, backbone)  # TrainConfig checked that the reward is differentiable
    start = run.begin(resume)
    for step in range(start, cfg.steps):
        if stop is not None and stop():
            break
        run.step = step
        t0 = time.perf_counter()
        # 1.-4. denoise, differentiate the reward through the last steps, update
        values = reward_gradient_step(run, run.pick_prompts(step), step)
        done = step + 1
        # 6. log, held-out monitor, checkpoint (ReFL has no reference model: no step 5)
        values["perf/step_s"] = time.perf_counter() - t0
        run.end_step(done, values)
    return run.finish()
