"""What every algorithm's loop shares: the policy and reference adapters on one frozen backbone,
the optimizer, the reward source, per-step random generators, the held-out monitor, checkpoints
and the NaN guard. The loops themselves live in ``online_dpo.py``, ``offline_dpo.py``, ``refl.py``.

Policy = backbone + LoRA adapter ``policy`` (trainable). Reference = the same backbone with a
second adapter ``ref`` (frozen), which starts as zero (B = 0), so the reference equals the base
until the first curriculum update copies the policy into it. No second copy of the base weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from vpo.backbones import load_backbone
from vpo.data.prompts import read_prompts
from vpo.rewards import load_reward
from vpo.train.config import TrainConfig

POLICY, REF = "policy", "ref"


class TrainingDiverged(ValueError):
    """A NaN or inf reward or loss: the run stops, the last good checkpoint stays."""


def add_policy_and_ref(transformer, lora: dict) -> None:
    """The policy and the reference: two LoRA adapters on the one frozen base (no second copy)."""
    with warnings.catch_warnings():
        # peft warns on a model's second adapter; two adapters are the design here
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        for name in (POLICY, REF):
            transformer.add_adapter(LoraConfig(**lora), adapter_name=name)


class Run:
    def __init__(self, cfg: TrainConfig, sink, device: str = "cpu", backbone=None):
        self.cfg, self.sink = cfg, sink
        self.out = Path(cfg.out)
        self.backbone = backbone if backbone is not None else load_backbone(cfg.backbone, device=device)
        self.transformer = self.backbone.transformer
        lora = dict(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_rank,
            target_modules=list(self.backbone.lora_target_modules),
            init_lora_weights=True,
        )
        add_policy_and_ref(self.transformer, lora)  # freezes the base
        self.transformer.set_adapter(POLICY)
        self.optimizer = torch.optim.AdamW(self.adapter_params(POLICY).values(), lr=cfg.lr, weight_decay=0.0)
        self.reward = load_reward(cfg.reward)
        self.reward.check_dimension(cfg.dimension)
        self.prompts = read_prompts(cfg.prompts)
        self.heldout = read_prompts(cfg.heldout_prompts)[: cfg.heldout_count]
        self.monitor = self.reward if cfg.reward == "metrics" else load_reward("metrics")
        self.step = 0
        self.last_checkpoint: Path | None = None

    # --- adapters ----------------------------------------------------------------------------
    def adapter_params(self, name: str) -> dict[str, torch.nn.Parameter]:
        return {k: p for k, p in self.transformer.named_parameters() if f".{name}." in k and "lora_" in k}

    @contextlib.contextmanager
    def reference(self):
        """Run the reference model inside this block (no gradients)."""
        self.transformer.set_adapter(REF)
        try:
            with torch.no_grad():
                yield
        finally:
            self.transformer.set_adapter(POLICY)  # also makes the policy adapter trainable again

    @torch.no_grad()
    def update_reference(self) -> None:
        """Curriculum reference update (OnlineVPO Sec. 2.3): the reference becomes the policy."""
        ref = self.adapter_params(REF)
        for k, p in self.adapter_params(POLICY).items():
            ref[k.replace(f".{POLICY}.", f".{REF}.")].copy_(p)

    # --- randomness: every draw is a function of (seed, step, purpose) -----------------------
    def generator(self, step: int, purpose: str) -> torch.Generator:
        return torch.Generator().manual_seed(_mix(self.cfg.seed, step, purpose))

    def candidate_seeds(self, step: int, prompt_index: int, n: int) -> list[int]:
        base = _mix(self.cfg.seed, step, f"candidates-{prompt_index}") % (2**31)
        return [base + i for i in range(n)]

    def pick_prompts(self, step: int) -> list[str]:
        rng = random.Random(_mix(self.cfg.seed, step, "prompts"))
        return [rng.choice(self.prompts) for _ in range(self.cfg.prompts_per_step)]

    # --- scoring and checks ------------------------------------------------------------------
    def score(self, videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        result = self.reward.score(videos, prompts)
        scores = result.scores[self.cfg.dimension]
        if not torch.isfinite(scores).all():
            bad = int((~torch.isfinite(scores)).nonzero()[0])
            why = result.unavailable.get(bad, "the reward source returned a non-finite score")
            raise self.diverged(
                f"reward {self.cfg.reward}/{self.cfg.dimension} is {scores[bad].item()} "
                f"for prompt {prompts[bad]!r} ({why})"
            )
        return scores

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
        """Clip the policy's accumulated gradients and step; returns the norm before clipping."""
        norm = torch.nn.utils.clip_grad_norm_(list(self.adapter_params(POLICY).values()), self.cfg.grad_clip)
        self.optimizer.step()
        return float(norm)

    # --- the start and the end of every step, whatever the algorithm -------------------------
    def begin(self, resume: bool, extra: dict | None = None) -> int:
        """Load the latest checkpoint when resuming; returns the first step to run. A fresh run logs
        step 0 once: ``extra`` and the base model's held-out check, which is what the dashboard shows
        as "base" beside the model being trained."""
        start = self.resume() if resume else 0
        if start == 0:
            values = dict(extra or {})
            if self.cfg.heldout_every:
                values.update(self.heldout_check(0))
            if values:
                self.sink.metrics(0, values)
        return start

    def maybe_update_reference(self, done: int, values: dict) -> None:
        """Step 5 of DPO: the curriculum reference update every K steps (K = 0: never)."""
        if self.cfg.ref_update_every and done % self.cfg.ref_update_every == 0:
            self.update_reference()
            values["train/ref_updated"] = 1.0

    def end_step(self, done: int, values: dict) -> None:
        """Step 6: held-out check every E steps, metrics to the sink, checkpoint every C steps."""
        values["perf/peak_mem_mb"] = peak_memory_mb(self.backbone.device)
        if self.cfg.heldout_every and done % self.cfg.heldout_every == 0:
            values.update(self.heldout_check(done))
        self.sink.metrics(done, values)
        self.step = done
        if done % self.cfg.checkpoint_every == 0:
            self.save_checkpoint(done)

    def finish(self) -> Path:
        """Keep the work of a run that stopped early or ended between checkpoints."""
        if self.last_checkpoint is None or self.last_checkpoint.name != f"step_{self.step:06d}":
            self.save_checkpoint(self.step)
        return self.last_checkpoint

    # --- held-out monitor: the reward-hacking alarm -----------------------------------------
    def heldout_check(self, step: int) -> dict[str, float]:
        """Fixed held-out prompts and seeds, sampled from the policy and scored with ``metrics`` on
        every dimension — including those not trained on."""
        seeds = [1_000_003 * (i + 1) for i in range(len(self.heldout))]
        videos = self.backbone.sample(self.heldout, seeds, steps=self.cfg.sampling_steps, guidance=self.cfg.guidance)
        result = self.monitor.score(videos, self.heldout)
        values = {f"heldout/{d}": float(torch.nanmean(s)) for d, s in result.scores.items()}
        values["heldout/temporal_flickering"] = float(result.raw["temporal_flickering"].mean())
        self.sink.samples(
            step,
            "heldout",
            videos.numpy(),
            self.heldout,
            result.scores["global"].tolist(),
            ["heldout"] * len(seeds),
            self.backbone.spec.fps,
        )
        return values

    # --- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, step: int) -> Path:
        folder = self.out / "checkpoints" / f"step_{step:06d}"
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tensors = {
            k: p.detach().cpu().contiguous() for name in (POLICY, REF) for k, p in self.adapter_params(name).items()
        }
        save_file(
            tensors,
            str(tmp / "adapter.safetensors"),
            metadata={"backbone": self.cfg.backbone, "step": str(step), "config": json.dumps(self.cfg.to_dict())},
        )
        torch.save(
            {
                "step": step,
                "config": self.cfg.to_dict(),
                "optimizer": self.optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "numpy_rng": np.random.get_state(),
            },
            tmp / "state.pt",
        )
        (tmp / "config.toml").write_text(self.cfg.to_toml())
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        # the pointer moves only once the checkpoint is complete: a crash never leaves a bad "latest"
        pointer = self.out / "checkpoints" / "latest"
        pointer.with_suffix(".tmp").write_text(folder.name)
        os.replace(pointer.with_suffix(".tmp"), pointer)
        self.last_checkpoint = folder
        return folder

    def resume(self) -> int:
        """Load the latest checkpoint of ``cfg.out``; returns the step to continue from."""
        folder = latest_checkpoint(self.out)
        if folder is None:
            return 0
        state = torch.load(folder / "state.pt", weights_only=False)
        if state["config"] != self.cfg.to_dict():
            diff = {k: (v, self.cfg.to_dict()[k]) for k, v in state["config"].items() if self.cfg.to_dict()[k] != v}
            raise ValueError(f"cannot resume from {folder}: it was trained with other settings {diff}")
        load_adapters(self.transformer, folder / "adapter.safetensors")
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        self.last_checkpoint = folder
        self.step = state["step"]
        return state["step"]


def latest_checkpoint(out) -> Path | None:
    pointer = Path(out) / "checkpoints" / "latest"
    return Path(out) / "checkpoints" / pointer.read_text().strip() if pointer.exists() else None


def load_adapters(transformer, path) -> None:
    """Copy saved adapter tensors into a transformer that has the same adapters."""
    saved = load_file(str(path))
    own = dict(transformer.named_parameters())
    missing = [k for k in saved if k not in own]
    if missing:
        raise ValueError(f"{path} does not fit this model: no parameter {missing[0]}")
    with torch.no_grad():
        for k, v in saved.items():
            if own[k].shape != v.shape:
                raise ValueError(
                    f"{path} does not fit this model: {k} is {tuple(v.shape)}, expected {tuple(own[k].shape)}"
                )
            own[k].copy_(v)


def load_policy(backbone, checkpoint) -> dict:
    """Give ``backbone`` the trained policy adapter of a training checkpoint folder (or its
    ``adapter.safetensors``); returns the run's config."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / "adapter.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {checkpoint} (expected a folder with adapter.safetensors)")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path} is not a training checkpoint (no config in its metadata)")
    cfg = json.loads(meta["config"])
    if cfg["backbone"] != backbone.name:
        raise ValueError(f"{path} was trained on backbone {cfg['backbone']!r}, not {backbone.name!r}")
    lora = dict(r=cfg["lora_rank"], lora_alpha=cfg["lora_rank"], target_modules=list(backbone.lora_target_modules))
    add_policy_and_ref(backbone.transformer, lora)
    load_adapters(backbone.transformer, path)
    backbone.transformer.set_adapter(POLICY)
    backbone.transformer.requires_grad_(False)
    return cfg


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory: CUDA's allocator peak, or on the CPU the process's resident high-water mark."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _mix(seed: int, step: int, purpose: str) -> int:
    # stable across processes (unlike hash()): resume must draw exactly what the first run drew
    import zlib

    return (seed * 1_000_003 + step * 7919 + zlib.crc32(purpose.encode())) % (2**63 - 1)
