"""What every algorithm's loop shares: the policy and reference adapters on one frozen backbone,
the optimizer, the reward source, per-step random generators, the held-out monitor, checkpoints
and the NaN guard. The loops themselves live in ``online_dpo.py``, ``offline_dpo.py``, ``refl.py``.

Policy = backbone + LoRA adapter ``policy`` (trainable). Reference = the same backbone with a
second adapter ``ref`` (frozen), which starts as zero (B = 0), so the reference equals the base
until the first curriculum update copies the policy into it. No second copy of the base weights.

``cfg.trainable`` (issue 17, item 3) chooses what the optimizer trains: ``lora`` the policy
adapter; ``physencoder`` the head of a PhysEncoder attached to an image-to-video backbone
(``vpo/backbones/physencoder.py``), the generator and both adapters frozen; ``both`` the two. With a
PhysEncoder the reference holds a frozen copy of its head too, moved with the adapter.

An image-to-video run reads an image prompt set (``vpo.data.prompts.IMAGE_SETS``): each prompt's
first frame goes with it to sampling, scoring and the updates (``images_at``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import resource
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from vpo.backbones import load_for_config
from vpo.backbones.base import Backbone, resize_images, training_arithmetic
from vpo.backbones.physencoder import HEAD, PhysEncoder, load_head, new_physencoder
from vpo.data.prompts import read_image_prompts, read_prompts
from vpo.rewards import load_reward, prompt_problem
from vpo.rewards.guard import VETO_BELOW, subject_factors, unguardable, veto
from vpo.train.checkpoints import (
    POLICY,
    REF,
    add_policy_and_ref,
    check_same_nproc,
    checkpoint_folder,
    latest_checkpoint,
    load_adapters,
    load_state,
    read_safetensors,
    save_checkpoint,
)
from vpo.train.config import ConfigError, TrainConfig
from vpo.train.distributed import FSDP_NOT_YET, FSDP_ON_CPU, Ranks
from vpo.train.keys import (
    CUDA_PEAK_GB,
    HELDOUT_PREFIX,
    HELDOUT_RAW,
    PEAK_MEM_MB,
    PHASE_CHECKPOINT,
    PHASE_HELDOUT,
    PHASE_LOADING,
    REF_UPDATED,
    STEP_S,
    heldout,
)
from vpo.train.sinks import Sink

log = logging.getLogger(__name__)


class TrainingDiverged(ValueError):
    """A NaN or inf reward or loss: the run stops, the last good checkpoint stays."""


# What a resumed run may change: where its folder is, how long it goes on, how often it checks and
# saves. None of them changes a step's prompts, seeds, candidates or update, so a run paused at step k
# and resumed with more steps trains what one uninterrupted run of that length trains (tests/test_train.py).
RESUME_MAY_CHANGE = ("out", "steps", "heldout_every", "checkpoint_every", "stop_heldout", "stop_drop")


class Scored(NamedTuple):
    """A batch of candidates' scores on the run's dimension. ``ranking``: what winners and losers are
    picked by, the reward guard applied; ``reward``: what the run reports as its reward, the same but
    without the veto's shift, which only reorders (``subject``'s product is the reward itself);
    ``vetoed``: the candidates the ``subject-veto`` guard moved below the others (None without it)."""

    ranking: torch.Tensor
    reward: torch.Tensor
    vetoed: torch.Tensor | None


class Run:
    def __init__(self, cfg: TrainConfig, sink: Sink, device: str = "cpu", backbone: Backbone | None = None):
        self.cfg, self.sink = cfg, sink
        self.out = Path(cfg.out)
        self.ranks = Ranks()  # one process unless started by vpo.train.distributed
        if self.ranks.world != cfg.nproc:
            raise ValueError(f"nproc = {cfg.nproc} but this process is one of {self.ranks.world} ranks")
        if cfg.parallel == "fsdp":
            raise ValueError(FSDP_ON_CPU if not str(device).startswith("cuda") else FSDP_NOT_YET)
        self.step = 0
        self.phase(PHASE_LOADING, step=0)
        self.backbone = backbone if backbone is not None else load_for_config(cfg, device)
        self.transformer = self.backbone.transformer
        lora = dict(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_rank,
            target_modules=list(self.backbone.lora_target_modules),
            init_lora_weights=True,
        )
        with torch.random.fork_rng(devices=[]):  # LoRA A's random init is a function of the seed too
            torch.manual_seed(derive_seed(cfg.seed, 0, "lora-init"))
            add_policy_and_ref(self.transformer, lora)  # freezes the base
        for p in (*self.adapter_params(POLICY).values(), *self.adapter_params(REF).values()):
            p.data = p.data.float()  # on bf16 weights (real backbones on CUDA) the adapters still train in fp32
        # the backbone's PhysEncoder (one given with it, e.g. trained by an earlier run: frozen
        # unless trained here), or for a run that trains one a fresh one (a zero head: the
        # backbone unchanged); its reference head starts as a copy of its head
        self.physencoder: PhysEncoder | None = self.backbone.physencoder
        if self.physencoder is not None:
            self.physencoder.requires_grad_(False)
        if cfg.trainable != "lora":
            if self.physencoder is None:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(derive_seed(cfg.seed, 0, "physencoder-init"))
                    self.physencoder = new_physencoder(self.backbone)
                self.backbone.attach_physencoder(self.physencoder)
            self.physencoder.head.requires_grad_(True)
            self.physencoder.add_reference()
        # what the optimizer trains (cfg.trainable); everything else is frozen
        self.trained = list(self.trained_params().values())
        self.use_policy()
        self.optimizer = torch.optim.AdamW(self.trained, lr=cfg.lr, weight_decay=0.0)
        self.reward = load_reward(cfg.reward, **({"directory": cfg.reward_model} if cfg.reward_model else {}))
        self.reward.video_fps = self.backbone.spec.fps  # sources that sample frames in time need it
        self.reward.check_dimension(cfg.dimension)
        self.prompts = read_prompts(cfg.prompts)
        self.images: torch.Tensor | None = None  # image-to-video: a first frame per prompt
        self.heldout_images: torch.Tensor | None = None
        if self.backbone.image_conditioned:
            self.prompts, self.images = self.image_prompts(cfg.prompts)
        if problem := prompt_problem(cfg.reward, self.prompts):
            raise ConfigError("reward", f"{problem} (prompts {cfg.prompts!r})")
        if cfg.reward_guard != "none" and (bad := unguardable(self.prompts)) is not None:
            raise ConfigError(
                "reward_guard", f"reward_guard {cfg.reward_guard!r} cannot read the prompt {bad!r} of {cfg.prompts!r}"
            )
        self.heldout = read_prompts(cfg.heldout_prompts)[: cfg.heldout_count]
        if self.backbone.image_conditioned:
            self.heldout, self.heldout_images = self.image_prompts(cfg.heldout_prompts, cfg.heldout_count)
        self.monitor = self.reward if cfg.reward == "metrics" else load_reward("metrics")
        self.last_checkpoint: Path | None = None
        self.heldout_base: dict[str, float] | None = None  # the step-0 check's values (the alarm's baseline)
        self.alarm: str | None = None  # why the held-out alarm stopped the run (stop_heldout), once it has

    # --- first frames (image-to-video) -------------------------------------------------------
    def image_prompts(self, name: str, count: int | None = None) -> tuple[list[str], torch.Tensor]:
        """The (first ``count``) captions of image prompt set ``name`` and their first frames at
        the backbone's size, uint8 (count, H, W, 3)."""
        prompts, frames = read_image_prompts(name)
        spec = self.backbone.spec
        return prompts[:count], torch.from_numpy(resize_images(frames[:count], spec.height, spec.width))

    def images_at(self, indices: list[int]) -> torch.Tensor | None:
        """The first frames of the training prompts ``indices`` (None for a text-to-video run)."""
        return None if self.images is None else self.images[indices]

    # --- adapters and the PhysEncoder's head ---------------------------------------------------
    def adapter_params(self, name: str) -> dict[str, torch.nn.Parameter]:
        return {k: p for k, p in self.transformer.named_parameters() if f".{name}." in k and "lora_" in k}

    def trained_params(self) -> dict[str, torch.nn.Parameter]:
        """What the optimizer trains (``cfg.trainable``): the policy adapter, the PhysEncoder's
        head, or both."""
        params = dict(self.adapter_params(POLICY)) if self.cfg.trainable in ("lora", "both") else {}
        if self.physencoder is not None and self.cfg.trainable in ("physencoder", "both"):
            params.update({HEAD + k: p for k, p in self.physencoder.head.named_parameters()})
        return params

    def use_policy(self) -> None:
        """The policy runs: its adapter and head. ``set_adapter`` makes the policy adapter
        trainable; it is frozen again where the run does not train it."""
        self.transformer.set_adapter(POLICY)
        if self.cfg.trainable == "physencoder":
            for p in self.adapter_params(POLICY).values():
                p.requires_grad_(False)
        if self.physencoder is not None:
            self.physencoder.use_reference = False

    @contextlib.contextmanager
    def reference(self):
        """Run the reference model inside this block (no gradients, yet the arithmetic of the
        policy's forward with them: ``training_arithmetic``): the reference adapter and, with a
        PhysEncoder, the reference head."""
        self.transformer.set_adapter(REF)
        if self.physencoder is not None:
            self.physencoder.use_reference = True
        try:
            with torch.no_grad(), training_arithmetic():
                yield
        finally:
            self.use_policy()

    @torch.no_grad()
    def update_reference(self) -> None:
        """Curriculum reference update (OnlineVPO Sec. 2.3): the reference becomes the policy
        (its adapter and, with a PhysEncoder, its head)."""
        ref = self.adapter_params(REF)
        for k, p in self.adapter_params(POLICY).items():
            ref[k.replace(f".{POLICY}.", f".{REF}.")].copy_(p)
        if self.physencoder is not None and self.physencoder.reference_head is not None:
            # (a PhysEncoder the run does not train, e.g. trainable = lora, has no reference head:
            # its one frozen head serves both models)
            self.physencoder.update_reference()

    # --- randomness: every draw is a function of (seed, step, purpose) -----------------------
    def generator(self, step: int, purpose: str) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.cfg.seed, step, purpose))

    def candidate_seeds(self, step: int, prompt_index: int, n: int) -> list[int]:
        """``prompt_index`` counts the step's prompts over all ranks (``first_prompt``)."""
        base = derive_seed(self.cfg.seed, step, f"candidates-{prompt_index}") % (2**31)
        return [base + i for i in range(n)]

    @property
    def first_prompt(self) -> int:
        """The index of this rank's first prompt among the step's prompts of all ranks."""
        return self.ranks.rank * self.cfg.prompts_per_step

    def pick_prompts(self, step: int) -> list[str]:
        """This rank's share of the step's ``prompts_per_step * nproc`` prompts. The draw and every
        seed depend on a prompt's index over all ranks, not on the rank: two ranks of P prompts
        draw what one process of 2P prompts draws."""
        return [self.prompts[i] for i in self.pick_indices(step)]

    def pick_indices(self, step: int) -> list[int]:
        """``pick_prompts``'s prompts as indices into ``self.prompts`` (what ``images_at`` reads)."""
        rng = random.Random(derive_seed(self.cfg.seed, step, "prompts"))
        # randrange(n) draws what choice(prompts) drew: the draws of earlier runs are unchanged
        drawn = [rng.randrange(len(self.prompts)) for _ in range(self.cfg.prompts_per_step * self.ranks.world)]
        return drawn[self.first_prompt : self.first_prompt + self.cfg.prompts_per_step]

    # --- what the step in progress is doing (the dashboard's live line) ----------------------
    def phase(self, name: str, done: int | None = None, total: int | None = None, step: int | None = None) -> None:
        """Tell the sink that the step in progress (``self.step + 1`` unless ``step`` says otherwise;
        0 = before training) is at phase ``name`` (``vpo.train.keys.PHASE_*``), ``done`` of ``total``."""
        self.sink.phase(self.step + 1 if step is None else step, name, done, total)

    def sampling_progress(self, name: str, step: int | None = None) -> Callable[[int, int], None]:
        """``Backbone.sample``'s ``progress``: phase ``name``, denoising step k of S."""
        return lambda done, total: self.phase(name, done, total, step)

    # --- scoring and checks ------------------------------------------------------------------
    def score(self, videos: torch.Tensor, prompts: list[str]) -> Scored:
        result = self.reward.score(videos, prompts)
        scores = result.scores[self.cfg.dimension]
        if not torch.isfinite(scores).all():
            bad = int((~torch.isfinite(scores)).nonzero()[0])
            why = result.unavailable.get(bad, "the reward source returned a non-finite score")
            raise self.diverged(
                f"reward {self.cfg.reward}/{self.cfg.dimension} is {scores[bad].item()} "
                f"for prompt {prompts[bad]!r} ({why})"
            )
        if self.cfg.reward_guard == "none":
            return Scored(scores, scores, None)
        # vpo/rewards/guard.py: deleting or freezing the subject never wins
        factors = torch.tensor(subject_factors(videos.numpy(), prompts, result.raw), dtype=scores.dtype)
        if self.cfg.reward_guard == "subject":
            return Scored(scores * factors, scores * factors, None)
        return Scored(veto(scores, factors), scores, factors < VETO_BELOW)

    def diverged(self, what: str) -> TrainingDiverged:
        kept = (
            f"the last good checkpoint is {self.last_checkpoint}"
            if self.last_checkpoint
            else "no checkpoint was written yet"
        )
        return TrainingDiverged(f"training stopped at step {self.step + 1}: {what}; {kept}")

    def check_finite(self, name: str, value: torch.Tensor) -> None:
        if not torch.isfinite(value).all():
            raise self.diverged(f"{name} is {value.detach().flatten()[0].item()}")

    def optimizer_step(self, loss: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return self.apply_gradients()

    def apply_gradients(self) -> float:
        """Sum the policy's gradients over the ranks, clip them and step; returns the norm before
        clipping (the same on every rank, so every rank's adapter stays the same)."""
        params = self.trained
        self.ranks.all_reduce_grads(params)
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        self.optimizer.step()
        return float(norm)

    # --- the start and the end of every step, whatever the algorithm -------------------------
    def loop(self, start: int, stop: Callable[[], bool] | None, one_step: Callable[[int], dict[str, Any]]) -> Path:
        """The skeleton of every algorithm's loop: from step ``start``, until ``cfg.steps`` or until
        ``stop()`` says so (checked before each step), run ``one_step(step)`` (steps 1-5 of the
        algorithm; returns the step's metrics), time it as ``perf/step_s`` unless the step timed
        itself, then step 6 (``end_step``). Returns the folder of the last checkpoint."""
        for step in range(start, self.cfg.steps):
            # rank 0 alone asks, and holds the held-out alarm; every rank stops at the same step
            if self.ranks.agree(self.ranks.main and (self.alarm is not None or (stop is not None and stop()))):
                break
            self.step = step
            t0 = time.perf_counter()
            values = one_step(step)
            values.setdefault(STEP_S, time.perf_counter() - t0)
            self.end_step(step + 1, values)
        last = self.finish()
        if self.alarm is not None and self.ranks.main:
            log.warning("%s", self.alarm)
            self.sink.stopped(self.step, self.alarm)
        return last

    def begin(self, resume: bool, extra: dict | None = None) -> int:
        """Load the latest checkpoint when resuming; returns the first step to run. A fresh run logs
        step 0 once: ``extra`` and the base model's held-out check, which is what the dashboard shows
        as "base" beside the model being trained."""
        start = self.resume() if resume else 0
        if start == 0:
            values = dict(extra or {})
            if self.cfg.heldout_every and self.ranks.main:
                values.update(self.heldout_check(0))
                self.heldout_base = {k: v for k, v in values.items() if k.startswith(HELDOUT_PREFIX)}
            if values:
                self.sink.metrics(0, values)
        if self.cfg.stop_heldout != "none" and self.ranks.main:
            base = (self.heldout_base or {}).get(heldout(self.cfg.stop_heldout))
            if base is None:
                raise ConfigError(
                    "stop_heldout",
                    f"stop_heldout = {self.cfg.stop_heldout} compares with the base's held-out check, which this "
                    "run's checkpoint does not hold (written before 2026-12-02, or without a check at step 0)",
                )
            if not math.isfinite(base):
                raise ConfigError(
                    "stop_heldout",
                    f"held-out {self.cfg.stop_heldout} is not measured on {self.cfg.heldout_prompts} (the base's is "
                    f"{base}): watch another measure",
                )
        return start

    def maybe_update_reference(self, done: int, values: dict) -> None:
        """Step 5 of DPO: the curriculum reference update every K steps (K = 0: never)."""
        if self.cfg.ref_update_every and done % self.cfg.ref_update_every == 0:
            self.update_reference()
            values[REF_UPDATED] = 1.0

    def end_step(self, done: int, values: dict) -> None:
        """Step 6: held-out check every E steps, metrics to the sink, checkpoint every C steps."""
        values[PEAK_MEM_MB] = peak_memory_mb(self.backbone.device)
        if self.backbone.device.type == "cuda":
            values[CUDA_PEAK_GB] = torch.cuda.max_memory_allocated(self.backbone.device) / 2**30
        values = self.ranks.reduce_metrics(values)  # rank 0 logs the step of all ranks
        if self.cfg.heldout_every and done % self.cfg.heldout_every == 0 and self.ranks.main:
            values.update(self.heldout_check(done))
            self.alarm = self.alarm or self.heldout_alarm(done, values)
        self.sink.metrics(done, values)
        self.step = done
        if done % self.cfg.checkpoint_every == 0:
            self.phase(PHASE_CHECKPOINT, step=done)
            self.save_checkpoint(done)

    def finish(self) -> Path:
        """Keep the work of a run that stopped early or ended between checkpoints."""
        self.ranks.check_same(self.trained)
        if self.last_checkpoint is None or self.last_checkpoint.name != f"step_{self.step:06d}":
            return self.save_checkpoint(self.step)
        return self.last_checkpoint

    # --- held-out monitor: the reward-hacking alarm -----------------------------------------
    def heldout_alarm(self, done: int, values: dict[str, float]) -> str | None:
        """Why the run stops after step ``done``'s held-out check, or None: ``stop_heldout`` more than
        ``stop_drop`` below the base's value (a value no longer measured counts as a fall: the
        subject of every video gone). Names the last checkpoint before the fall, the newest at or
        before the previous check (which passed, or the run would have stopped there)."""
        measure = self.cfg.stop_heldout
        if measure == "none" or self.heldout_base is None:
            return None
        base, value = self.heldout_base[heldout(measure)], values.get(heldout(measure), math.nan)
        if value >= base - self.cfg.stop_drop:
            return None
        previous = max(done - self.cfg.heldout_every, 0)
        folders = Path(self.out) / "checkpoints"
        before = [int(p.name[5:]) for p in folders.glob("step_*") if p.name[5:].isdigit() and p.is_dir()]
        kept = [s for s in before if s <= previous]
        where = checkpoint_folder(self.out, max(kept)).name if kept else "none: the base model"
        return (
            f"held-out alarm at step {done} of {self.cfg.steps}: {measure} {value:.4f} fell more than "
            f"{self.cfg.stop_drop:g} below the base's {base:.4f} (stop_heldout = {measure}), so the run stopped; "
            f"the last checkpoint before the fall (at or before step {previous}): {where}"
        )

    def heldout_check(self, step: int) -> dict[str, float]:
        """Fixed held-out prompts and seeds, sampled from the policy and scored with ``metrics`` on
        every dimension — including those not trained on."""
        seeds = [1_000_003 * (i + 1) for i in range(len(self.heldout))]
        videos = self.backbone.sample(
            self.heldout,
            seeds,
            steps=self.cfg.sampling_steps,
            guidance=self.cfg.guidance,
            progress=self.sampling_progress(PHASE_HELDOUT, step),
            sampler=self.cfg.sampler,
            images=self.heldout_images,
        )
        result = self.monitor.score(videos, self.heldout)
        values = {heldout(d): float(torch.nanmean(s)) for d, s in result.scores.items()}
        # raw measures that can fall while the reward rises: flickering, and whether the prompted
        # object is still there and still moves as prompted (an empty or frozen frame does not flicker)
        for measure in HELDOUT_RAW:
            if measure in result.raw and torch.isfinite(result.raw[measure]).any():
                values[heldout(measure)] = float(torch.nanmean(result.raw[measure]))
        self.sink.samples(
            step,
            "heldout",
            videos.numpy(),
            self.heldout,
            result.scores["global"].tolist(),
            ["heldout"] * len(seeds),
            self.backbone.spec.fps,
            images=None if self.heldout_images is None else self.heldout_images.numpy(),
        )
        return values

    # --- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, step: int) -> Path:
        """Rank 0 writes it (every rank holds the same adapters); the others note its folder."""
        if self.ranks.main:
            adapters = {k: p for name in (POLICY, REF) for k, p in self.adapter_params(name).items()}
            if self.physencoder is not None:  # its policy and reference heads
                adapters.update(self.physencoder.head_tensors())
            extra = {"heldout_base": self.heldout_base}
            self.last_checkpoint = save_checkpoint(self.out, step, self.cfg, adapters, self.optimizer, extra)
            log.info("checkpoint %s written", self.last_checkpoint)
        else:
            self.last_checkpoint = checkpoint_folder(self.out, step)
        return self.last_checkpoint

    def resume(self) -> int:
        """Load the latest checkpoint of ``cfg.out``; returns the step to continue from."""
        folder = latest_checkpoint(self.out)
        if folder is None:
            return 0
        state = load_state(folder / "state.pt")
        saved = check_same_nproc(folder, state["config"], self.cfg.nproc)
        now = self.cfg.to_dict()
        diff = {k: (v, now[k]) for k, v in saved.items() if now.get(k) != v and k not in RESUME_MAY_CHANGE}
        if diff:
            raise ValueError(
                f"cannot resume from {folder}: it was trained with other settings {diff} (saved, asked); "
                f"a resumed run may change only {', '.join(RESUME_MAY_CHANGE)}"
            )
        if self.cfg.steps < state["step"]:
            raise ConfigError(
                "steps",
                f"cannot resume from {folder} with steps = {self.cfg.steps}: it has trained {state['step']} "
                "steps already; ask for at least as many",
            )
        tensors = read_safetensors(folder / "adapter.safetensors")
        load_adapters(self.transformer, tensors, folder)
        if self.physencoder is not None:
            load_head(self.physencoder, tensors, folder)
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        self.last_checkpoint = folder
        self.step = state["step"]
        self.heldout_base = state.get("heldout_base")  # None in checkpoints from before 2026-12-02
        return state["step"]


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory: CUDA's allocator peak, or on the CPU the process's resident high-water mark."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def derive_seed(seed: int, step: int, purpose: str) -> int:
    """The seed of one random draw of a run: a function of (run seed, step, purpose), so that every
    step draws the same whatever ran before it (a resumed run draws exactly what the first run drew)."""
    # crc32, not hash(): stable across processes
    return (seed * 1_000_003 + step * 7919 + zlib.crc32(purpose.encode())) % (2**63 - 1)
