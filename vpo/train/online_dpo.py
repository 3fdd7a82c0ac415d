"""``online-dpo``: OnlineVPO (Zhang et al., "OnlineVPO", Sec. 2.3, Fig. 2).

Each step, for each prompt: sample N candidates from the *current* policy, score them on the
chosen dimension, take the best as winner and the worst as loser (skip the prompt if their scores
differ by less than ``tie_tolerance`` — a tie teaches nothing), and update the policy with the
Flow-DPO loss (``loss.py``). Every K steps the reference becomes the current policy (the paper's
curriculum reference update; K = 0 keeps it fixed at the base).

Deviation from the paper: the reward is whatever source and dimension the config names (the
paper uses VideoScore); N, K and the sampling steps are smaller defaults sized for a CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from vpo.train.keys import (
    DPO_GRAD_NORM,
    GUARD_VETOED,
    PAIRS,
    PHASE_SAMPLING,
    PHASE_SCORING,
    PHASE_UPDATING,
    REWARD_MARGIN,
    REWARD_MAX,
    REWARD_MEAN,
    REWARD_MIN,
    SAMPLE_S,
    SCORE_S,
    SKIPPED_PROMPTS,
    STEP_S,
    UPDATE_S,
)
from vpo.train.loss import flow_dpo_loss, per_video_mse
from vpo.train.runner import Run


def dpo_update(
    run: Run,
    winners: torch.Tensor,
    losers: torch.Tensor,
    prompts: list[str],
    step: int,
    indices: list[int] | None = None,
    images: torch.Tensor | None = None,
) -> dict:
    """One Flow-DPO optimizer step on latent pairs (P, ...) with their prompts (and, image-to-video,
    their first frames ``images``, uint8 (P, H, W, 3)); ``indices`` are the pairs' prompt indices
    among the step's prompts of all ranks (default 0..P-1: one process).
    Every rank calls it, also one without a pair (P = 0): the gradients are summed over the ranks.

    The loss is an expectation over sigma and eps (``docs/algorithm.md``, Eq. 3); it is estimated
    with ``noise_draws`` draws per pair, each draw shared by the pair's winner and loser (one draw
    gives too noisy a gradient: ``docs/training-probes.md``). Each draw is back-propagated on its
    own and the gradients add up, so memory does not grow with the draws."""
    p, draws = len(prompts), run.cfg.noise_draws
    # the loss is the mean over the step's pairs on all ranks: each rank's share is its pairs' sum
    # over the total, and Run.apply_gradients sums the ranks' gradients
    share = p / run.ranks.sum(p)
    run.optimizer.zero_grad(set_to_none=True)
    if p == 0:
        return {DPO_GRAD_NORM: run.apply_gradients()}
    # a pair's noise is drawn from its prompt's index, so it is the same on whichever rank and
    # beside whichever pairs it is trained (index 0 keeps the purpose one-prompt runs always had)
    gens = [run.generator(step, "dpo" if i == 0 else f"dpo-{i}") for i in (indices or range(p))]

    def conditioning() -> torch.Tensor:  # the winners' and the losers': the same
        cond = run.backbone.conditioning(prompts, images)
        return torch.cat([cond, cond])

    text = ref_text = conditioning()
    if run.physencoder is not None:
        with run.reference():  # the reference head's tokens
            ref_text = conditioning()
    x0 = torch.cat([winners, losers])
    parts = []
    for draw in range(draws):
        run.phase(PHASE_UPDATING, draw, draws)
        if draw and run.physencoder is not None:  # the head's tokens: a new graph for each backward
            text = conditioning()
        # the same sigma and the same eps for a pair's winner and loser (docs/algorithm.md, Eq. 2)
        sigma = torch.cat([run.backbone.training_sigmas(1, g) for g in gens]).to(winners.device)
        eps = torch.cat([torch.randn((1, *winners.shape[1:]), generator=g) for g in gens]).to(winners.device)
        noise, s = torch.cat([eps, eps]), torch.cat([sigma, sigma])
        s5 = s.view(-1, *[1] * (x0.ndim - 1))
        x_t = (1 - s5) * x0 + s5 * noise
        target = noise - x0
        with run.backbone.autocast():
            mse_w, mse_l = per_video_mse(run.backbone.predict_velocity(x_t, s, text), target).chunk(2)
            with run.reference():
                ref_w, ref_l = per_video_mse(run.backbone.predict_velocity(x_t, s, ref_text), target).chunk(2)
        loss, stats = flow_dpo_loss(mse_w, mse_l, ref_w, ref_l, run.cfg.beta)
        run.check_finite("the DPO loss", loss)
        (loss * share / draws).backward()
        parts.append(stats)
    stats = {k: sum(part[k] for part in parts) / draws for k in parts[0]}
    stats[DPO_GRAD_NORM] = run.apply_gradients()
    return stats


def pick_pairs(scores: torch.Tensor, tolerance: float) -> list[tuple[int, int, int]]:
    """(prompt index, winner, loser) for every prompt whose score spread reaches ``tolerance``."""
    pairs = []
    for i, row in enumerate(scores):
        w, l = int(row.argmax()), int(row.argmin())
        if row[w] - row[l] >= tolerance:
            pairs.append((i, w, l))
    return pairs


@dataclass
class Candidates:
    """One step's candidates: P prompts, N videos each, in one batch."""

    prompts: list[str]  # (P,)
    flat_prompts: list[str]  # (P * N,): each prompt N times, in the videos' order
    videos: torch.Tensor  # uint8 (P * N, F, H, W, C)
    latents: torch.Tensor  # (P * N, ...)
    scores: torch.Tensor  # (P, N) on the chosen dimension, what winners and losers are picked by (Scored.ranking)
    reward: torch.Tensor  # (P, N) the same as reported: without the subject veto's shift (Scored.reward)
    vetoed: torch.Tensor | None  # (P, N) the candidates the subject veto moved below the others, or None
    images: torch.Tensor | None  # image-to-video: the prompts' first frames, uint8 (P, H, W, 3)
    first: int  # the step's index of this rank's first prompt (seeds count prompts across ranks)
    sample_s: float
    score_s: float

    def reward_values(self) -> dict[str, float]:
        """The step's reward over every candidate: mean, max, min (the source's scores: a vetoed
        candidate counts with its own score, not the veto's shift), and how many were vetoed."""
        r = self.reward
        values = {REWARD_MEAN: r.mean().item(), REWARD_MAX: r.max().item(), REWARD_MIN: r.min().item()}
        if self.vetoed is not None:
            values[GUARD_VETOED] = int(self.vetoed.sum())
        return values

    def margin(self, pairs: list[tuple[int, int, int]]) -> float:
        """Winner minus loser reward, averaged over ``pairs`` (negative where a vetoed loser scored higher)."""
        return float(sum(self.reward[i, w] - self.reward[i, l] for i, w, l in pairs) / len(pairs))

    def labels(self, chosen: dict[int, str]) -> list[str]:
        """Each candidate's label on the candidates panel: ``chosen``'s (flat index -> "winner", ...),
        with "vetoed" added where the subject veto moved it."""
        vetoed = [] if self.vetoed is None else self.vetoed.flatten().tolist()
        out = []
        for i in range(len(self.flat_prompts)):
            words = [chosen.get(i, "")] + (["vetoed"] if vetoed and vetoed[i] else [])
            out.append(" ".join(w for w in words if w))
        return out

    def timings(self, t0: float, t_scored: float) -> dict[str, float]:
        """Where the step's time went: sampling, scoring, the update since ``t_scored``, all since
        ``t0``; taken before the videos are written, which the step's time leaves out."""
        now = time.perf_counter()
        return {SAMPLE_S: self.sample_s, SCORE_S: self.score_s, UPDATE_S: now - t_scored, STEP_S: now - t0}

    def log(self, run: Run, step: int, labels: list[str]) -> None:
        """Every candidate's video with its score and label (winner/loser, best) on the
        dashboard's candidates panel, every ``heldout_every`` steps (``step`` counted from 1)."""
        if run.cfg.heldout_every and step % run.cfg.heldout_every == 0:
            n = run.cfg.num_candidates
            run.sink.samples(
                step,
                "candidates",
                self.videos.numpy(),
                self.flat_prompts,
                self.reward.flatten().tolist(),
                labels,
                run.backbone.spec.fps,
                images=None if self.images is None else self.images.repeat_interleave(n, 0).numpy(),
            )


def sample_and_score(run: Run, step: int) -> Candidates:
    """Steps 1 and 2, shared with ``online-rwr`` (which so starts from the same candidates): the
    step's prompts, N candidates per prompt from the *current* policy, all in one batch, then their
    scores on the chosen dimension."""
    cfg, n = run.cfg, run.cfg.num_candidates
    t0 = time.perf_counter()
    picked = run.pick_indices(step)  # this rank's share of the step's prompts
    prompts, images = [run.prompts[i] for i in picked], run.images_at(picked)
    first = run.first_prompt
    flat_prompts = [p for p in prompts for _ in range(n)]
    seeds = [s for i in range(len(prompts)) for s in run.candidate_seeds(step, first + i, n)]
    videos, latents = run.backbone.sample(
        flat_prompts,
        seeds,
        steps=cfg.sampling_steps,
        guidance=cfg.guidance,
        return_latents=True,
        progress=run.sampling_progress(PHASE_SAMPLING),
        sampler=cfg.sampler,
        images=None if images is None else images.repeat_interleave(n, 0),
    )
    t_sample = time.perf_counter()
    run.phase(PHASE_SCORING)
    scored = run.score(videos, flat_prompts)
    return Candidates(
        prompts,
        flat_prompts,
        videos,
        latents,
        scored.ranking.view(len(prompts), n),
        scored.reward.view(len(prompts), n),
        None if scored.vetoed is None else scored.vetoed.view(len(prompts), n),
        images,
        first,
        t_sample - t0,
        time.perf_counter() - t_sample,
    )


def train_run(run: Run, stop: Callable[[], bool] | None, resume: bool) -> Path:
    """Train ``run`` (algorithm ``online-dpo``); returns the folder of the last checkpoint."""
    cfg, n = run.cfg, run.cfg.num_candidates

    def one_step(step: int) -> dict:
        t0 = time.perf_counter()
        # 1. sample N candidates per prompt from the current policy; 2. score them
        c = sample_and_score(run, step)
        prompts, latents, scores = c.prompts, c.latents, c.scores
        first = c.first
        t_score = time.perf_counter()

        # 3. winner = argmax, loser = argmin; prompts whose spread is under the tolerance are skipped
        pairs = pick_pairs(scores, cfg.tie_tolerance)
        values = {**c.reward_values(), SKIPPED_PROMPTS: len(prompts) - len(pairs), PAIRS: len(pairs)}

        # 4. Flow-DPO update on the pairs (of all ranks: a rank without a pair still takes part)
        if run.ranks.sum(len(pairs)):
            lat = latents.view(len(prompts), n, *latents.shape[1:])
            winners = torch.stack([lat[i, w] for i, w, _ in pairs]) if pairs else latents[:0]
            losers = torch.stack([lat[i, l] for i, _, l in pairs]) if pairs else latents[:0]
            if pairs:
                values[REWARD_MARGIN] = c.margin(pairs)
            chosen = [i for i, _, _ in pairs]
            values.update(
                dpo_update(
                    run,
                    winners,
                    losers,
                    [prompts[i] for i in chosen],
                    step,
                    [first + i for i in chosen],
                    None if c.images is None else c.images[chosen],
                )
            )
        done = step + 1

        # 5. curriculum reference update every K steps
        run.maybe_update_reference(done, values)

        # 6. (with run.end_step) log, held-out monitor, sample videos, checkpoint; the step's time
        # leaves out writing its videos
        values.update(c.timings(t0, t_score))
        marked = {i * n + w: "winner" for i, w, _ in pairs} | {i * n + l: "loser" for i, _, l in pairs}
        c.log(run, done, c.labels(marked))
        return values

    return run.loop(run.begin(resume), stop, one_step)
