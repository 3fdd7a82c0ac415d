"""A noise-conditioned video reward model r(x_t, sigma, text): one small head per dimension on the
frozen first blocks of the ``tiny`` backbone (``docs/reward-model.md``).

VideoAlign's Flow-NRG reward model reuses the first blocks of the generator so that it reads
noisy latents directly, without decoding them; this is that design at our size. The blocks see
``x_t`` with the backbone's own input scaling ``c_in(sigma)`` and are modulated by its timestep
and sentence embeddings, so their tokens already depend on the noise level and the prompt. A head
reads four pooled summaries of the tokens — their mean, their mean absolute change from one frame
to the next (what flicker and motion move), their spread within a frame, and the conditioning
embedding (sigma and prompt) — standardised with the training set's statistics, through a
two-layer MLP to one scalar.

Only the heads train; the blocks stay the shipped weights, so the model is small on disk (the heads
and the statistics) and cheap to train on a CPU. ``score`` is differentiable with respect to
``x_t`` (what guidance needs); at ``sigma = 0`` it scores clean videos (the ``learned`` source).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from vpo.reward_model import META, WEIGHTS, read_meta

DEPTH = 2  # frozen blocks of tiny read by the heads (of its 6)
HIDDEN = 128


class NoisyRewardModel(nn.Module):
    def __init__(self, backbone, heads: Sequence[str], depth: int = DEPTH, hidden: int = HIDDEN, dropout: float = 0.1):
        super().__init__()
        if getattr(backbone, "name", "") != "tiny":
            raise ValueError(f"the reward model reads the blocks of the tiny backbone, got {backbone.name!r}")
        if not 1 <= depth <= len(backbone.transformer.blocks):
            raise ValueError(f"depth must be in 1..{len(backbone.transformer.blocks)}, got {depth}")
        if not heads:
            raise ValueError("a reward model needs at least one head")
        # kept out of the module tree: the backbone is frozen, shared, and not saved with the heads
        self.__dict__["backbone"] = backbone.requires_grad_(False)
        self.depth = depth
        width = 4 * backbone.config.dim
        self.register_buffer("feature_mean", torch.zeros(width))
        self.register_buffer("feature_std", torch.ones(width))
        self.heads = nn.ModuleDict(
            {
                h: nn.Sequential(nn.Dropout(dropout), nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, 1))
                for h in heads
            }
        )
        # raw score -> [0, 1] for the ``learned`` source: sigmoid((r - mean) / std) over the training videos
        self.scale: dict[str, tuple[float, float]] = dict.fromkeys(heads, (0.0, 1.0))

    @property
    def head_names(self) -> list[str]:
        return list(self.heads)

    # --- features: frozen, differentiable w.r.t. x_t ------------------------------------------
    def features(self, x_t: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, C, F, H, W) noisy latents at noise levels sigma (B,) with text conditioning -> (B, 4D)."""
        bb = self.backbone
        c_in = bb.preconditioning(sigma)[0]
        with bb.autocast():
            tokens, emb = bb.transformer.hidden_states(x_t * c_in, sigma, text, self.depth)
        tokens, emb = tokens.float(), emb.float()
        t, gh, gw = bb.transformer.grid
        tok = tokens.view(len(tokens), t, gh * gw, -1)  # (B, T, S, D)
        return torch.cat([tok.mean((1, 2)), (tok[:, 1:] - tok[:, :-1]).abs().mean((1, 2)), tok.std(2).mean(1), emb], -1)

    def head_scores(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw scores (B,) of every head from ``features`` (B, 4D)."""
        z = (features - self.feature_mean) / self.feature_std
        return {h: head(z).squeeze(-1) for h, head in self.heads.items()}

    def score(self, x_t: torch.Tensor, sigma: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Raw reward of every head, {dimension: (B,)}, differentiable with respect to ``x_t``."""
        text = self.backbone.encode_prompts(prompts)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x_t.device).expand(len(x_t))
        return self.head_scores(self.features(x_t, sigma, text))

    def normalised(self, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Raw scores -> [0, 1] on the training videos' scale (``scale``)."""
        return {h: torch.sigmoid((r - self.scale[h][0]) / self.scale[h][1]) for h, r in raw.items()}

    # --- videos ----------------------------------------------------------------------------------
    def latents(self, videos) -> torch.Tensor:
        """uint8 videos (B, F, H, W, 3) -> the backbone's pixel latents; an mp4 read at display size
        is averaged back down to the backbone's frame size."""
        videos = torch.as_tensor(videos)
        spec = self.backbone.spec
        if videos.ndim != 5 or videos.shape[-1] != 3:
            raise ValueError(f"videos must have shape (B, F, H, W, 3), got {tuple(videos.shape)}")
        if videos.shape[1] != spec.frames:
            raise ValueError(f"the reward model scores videos of {spec.frames} frames, got {videos.shape[1]}")
        x = videos.float()
        if videos.shape[2:4] != (spec.height, spec.width):
            b, f, h, w, c = x.shape
            frames = x.reshape(b * f, h, w, c).permute(0, 3, 1, 2)
            x = F.interpolate(frames, size=(spec.height, spec.width), mode="area").permute(0, 2, 3, 1)
            x = x.reshape(b, f, spec.height, spec.width, c)
        return (x.permute(0, 4, 1, 2, 3) / 127.5 - 1).to(self.backbone.device)

    # --- persistence -----------------------------------------------------------------------------
    def save(self, directory, meta: dict) -> Path:
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS))
        full = {
            **meta,
            "backbone": "tiny",
            "depth": self.depth,
            "hidden": self.heads[self.head_names[0]][1].out_features,
            "heads": self.head_names,
            "scale": {h: list(s) for h, s in self.scale.items()},
        }
        (folder / META).write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
        return folder


def load_reward_model(directory, device: str = "cpu", backbone=None) -> NoisyRewardModel:
    """The reward model trained into ``directory`` (on the shipped tiny backbone unless
    ``backbone`` is given), in eval mode."""
    meta = read_meta(directory)
    if meta.get("backbone") != "tiny":
        raise ValueError(f"{directory}: a reward model on backbone {meta.get('backbone')!r} is not supported")
    if backbone is None:
        from vpo.backbones import load_backbone

        backbone = load_backbone("tiny", device=device)
    model = NoisyRewardModel(backbone, meta["heads"], depth=int(meta["depth"]), hidden=int(meta["hidden"]))
    try:
        state = load_file(str(Path(directory) / WEIGHTS))
        model.load_state_dict(state)
    except Exception as e:  # safetensors' own errors for a damaged file, or shapes that do not fit
        raise ValueError(f"{Path(directory) / WEIGHTS} does not hold this reward model's heads: {e}") from None
    model.scale = {h: (float(m), float(s)) for h, (m, s) in meta["scale"].items()}
    return model.to(backbone.device).eval()
