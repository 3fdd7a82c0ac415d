"""Training checkpoints: the policy and reference adapter names, writing a checkpoint atomically,
finding the latest, and loading adapters back (to resume, or to sample from a trained policy).

A checkpoint is a folder ``<out>/checkpoints/step_NNNNNN/`` with ``adapter.safetensors`` (both
adapters, and a PhysEncoder's policy and reference heads where the run has one, keys
``physencoder.*``; the run's config in its metadata), ``state.pt`` (step, config, optimizer and RNG states)
and ``config.toml``; ``<out>/checkpoints/latest`` names the newest complete one.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from vpo.train.config import TrainConfig

POLICY, REF = "policy", "ref"


def add_policy_and_ref(transformer: Any, lora: dict[str, Any]) -> None:
    """The policy and the reference: two LoRA adapters on the one frozen base (no second copy)."""
    with warnings.catch_warnings():
        # peft warns on a model's second adapter; two adapters are the design here
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        for name in (POLICY, REF):
            transformer.add_adapter(LoraConfig(**lora), adapter_name=name)


def save_checkpoint(
    out: str | Path,
    step: int,
    cfg: TrainConfig,
    adapters: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    extra: dict | None = None,
) -> Path:
    """Write step ``step``'s checkpoint under ``out/checkpoints`` and point ``latest`` at it
    (``extra``: more of the run's state, in ``state.pt``). The folder is written under a temporary
    name and renamed, and the pointer moves only once the folder is complete: a crash never leaves a
    bad ``latest``."""
    folder = checkpoint_folder(out, step)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {k: p.detach().cpu().contiguous() for k, p in adapters.items()}
    save_file(
        tensors,
        str(tmp / "adapter.safetensors"),
        metadata={"backbone": cfg.backbone, "step": str(step), "config": json.dumps(cfg.to_dict())},
    )
    torch.save(
        {
            "step": step,
            "config": cfg.to_dict(),
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            **(extra or {}),
        },
        tmp / "state.pt",
    )
    (tmp / "config.toml").write_text(cfg.to_toml())
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    pointer = Path(out) / "checkpoints" / "latest"
    pointer.with_suffix(".tmp").write_text(folder.name)
    os.replace(pointer.with_suffix(".tmp"), pointer)
    return folder


def checkpoint_folder(out: str | Path, step: int) -> Path:
    return Path(out) / "checkpoints" / f"step_{step:06d}"


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest complete checkpoint folder of the run in ``out``, or None."""
    pointer = Path(out) / "checkpoints" / "latest"
    return Path(out) / "checkpoints" / pointer.read_text().strip() if pointer.exists() else None


def check_same_nproc(folder: Path, saved: dict[str, Any], nproc: int) -> dict[str, Any]:
    """A checkpoint's config (a field added since it was written has its default), if it was
    trained on ``nproc`` ranks; a ValueError saying so otherwise: a step's prompts and seeds depend
    on the number of ranks, so a run resumes with the number it started with."""
    from dataclasses import fields

    config = {f.name: f.default for f in fields(TrainConfig)} | saved
    if config["nproc"] != nproc:
        raise ValueError(
            f"cannot resume from {folder} with nproc = {nproc}: it was trained on {config['nproc']} "
            f"rank(s), and a step's prompts and seeds depend on the number of ranks; resume it with "
            f"nproc = {config['nproc']}"
        )
    return config


def load_state(path: Path) -> dict[str, Any]:
    """A checkpoint's ``state.pt`` with ``weights_only=True``: tensors, containers, numbers and the
    NumPy RNG state's array, never arbitrary pickled objects (a checkpoint folder may come from
    elsewhere). A damaged file is a ValueError naming it."""
    try:
        from numpy._core.multiarray import _reconstruct  # NumPy >= 2
    except ImportError:
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    arrays = [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]  # np.random.get_state()'s key array
    try:
        with torch.serialization.safe_globals(arrays):
            return torch.load(path, weights_only=True)
    except pickle.UnpicklingError:  # torch's own text would suggest weights_only=False: not for a file we cannot trust
        raise ValueError(
            f"{path} is not a readable checkpoint state: it is damaged, or holds objects other than "
            "tensors, containers and numbers"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ValueError(
            f"{path} is not a readable checkpoint state ({type(e).__name__}: {' '.join(str(e).split())[:160]})"
        ) from None


def read_safetensors(path: str | Path, metadata_only: bool = False) -> Any:
    """The tensors (or the metadata) of a safetensors file; a damaged one is a ValueError naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        if metadata_only:
            with safe_open(str(path), framework="pt") as f:
                return f.metadata() or {}
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from None


def load_adapters(transformer: Any, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Copy a checkpoint's adapter tensors (``read_safetensors`` of its ``path``) into a transformer
    that has the same adapters (a PhysEncoder's head, in the same file, is ``physencoder.load_head``'s)."""
    saved = {k: v for k, v in tensors.items() if not k.startswith("physencoder.")}
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


def load_policy(backbone: Any, checkpoint: str | Path) -> dict[str, Any]:
    """Give ``backbone`` the trained policy adapter of a training checkpoint folder (or its
    ``adapter.safetensors``), and the PhysEncoder's head where the run had one; returns the run's
    config."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / "adapter.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {checkpoint} (expected a folder with adapter.safetensors)")
    meta = read_safetensors(path, metadata_only=True)
    if "config" not in meta:
        raise ValueError(f"{path} is not a training checkpoint (no config in its metadata)")
    cfg: dict[str, Any] = json.loads(meta["config"])
    if cfg["backbone"] != backbone.name:
        raise ValueError(f"{path} was trained on backbone {cfg['backbone']!r}, not {backbone.name!r}")
    lora = dict(r=cfg["lora_rank"], lora_alpha=cfg["lora_rank"], target_modules=list(backbone.lora_target_modules))
    add_policy_and_ref(backbone.transformer, lora)
    saved = read_safetensors(path)
    load_adapters(backbone.transformer, saved, path)
    backbone.transformer.set_adapter(POLICY)
    backbone.transformer.requires_grad_(False)
    if any(k.startswith("physencoder.") for k in saved):  # the run had a PhysEncoder: its policy head
        from vpo.backbones.physencoder import load_head, new_physencoder

        encoder = backbone.physencoder or new_physencoder(backbone)
        load_head(encoder, saved, path)
        backbone.attach_physencoder(encoder.requires_grad_(False))
    return cfg
