"""PhysEncoder (issue 17, item 3; PhysMaster): a physical representation of an image-to-video
backbone's first frame, as K tokens appended to its conditioning.

``PhysEncoder`` = a **frozen** feature extractor of the clean first frame + a **trainable head**
(``PhysHead``) that turns its features into ``K`` tokens of the conditioning's width. The tokens
follow the text and image tokens in the one conditioning tensor (``Backbone.image_condition``), so
sampling, classifier-free guidance (which drops the text only: the tokens stay in both halves) and
the training losses see them without further code. ``TrainConfig.trainable`` chooses what a run
trains: the generator's LoRA adapter, this head, or both (``vpo/train/runner.py``).

The frozen extractor, per backbone:

- ``tiny-i2v``: ``TinyFeatures``, the tiny denoiser's own pretrained patch embedding and first
  ``FEATURE_DEPTH`` blocks applied to the clean frame (as a still video at sigma = 0 with the null
  text). Why: the physics world has no pretrained image encoder of its own, and this denoiser,
  pretrained on the world, is the one model that has learnt what its floors, ramps and balls look
  like. It is a *copy* taken before any LoRA adapter is added, so training the generator's adapter
  (``trainable = "both"``) does not move the features.
- ``wan-i2v``: ``VisionFeatures`` over the backbone's own frozen CLIP vision model; the class takes
  any ``transformers`` vision model from a local folder (``CLIPVisionModel``, ``Dinov2Model``...).
  PhysMaster's frozen encoder is Depth Anything; none is shipped here and nothing is downloaded.

The head starts with a zero output projection, so a fresh PhysEncoder gives K zero tokens, and each
backbone reads zero tokens as no change at all: ``wan-i2v`` puts them in the text's zero padding,
``tiny-i2v`` adds their own cross-attention less that of zero tokens (``tiny.SpaceTimeBlock``).
A fresh head thus leaves every sample unchanged, exactly (``tests/test_physencoder.py``), while the
gradient reaches the output projection from the first step.

DPO's reference model holds a frozen copy of the head (``reference_head``), which the curriculum
update overwrites with the policy's head, as it does for the LoRA adapter.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from vpo.video import CLIP_MEAN, CLIP_STD

TOKENS = 4  # K: the PhysEncoder's tokens in the conditioning
HIDDEN = 128  # the head's width
FEATURE_DEPTH = 2  # tiny-i2v: the denoiser's blocks the frozen features run through
HEAD, REFERENCE_HEAD = "physencoder.head.", "physencoder.reference_head."  # checkpoint key prefixes


class PhysHead(nn.Module):
    """Frozen features (B, N, F) -> K tokens (B, K, width): LayerNorm and a GELU projection per
    feature, K learned queries that pool the features by attention (one token per query: where
    the bodies are, the floor, the ramp...), a zero-initialised output projection."""

    def __init__(self, feature_dim: int, width: int, tokens: int = TOKENS, hidden: int = HIDDEN):
        super().__init__()
        self.shape = {"feature_dim": feature_dim, "width": width, "tokens": tokens, "hidden": hidden}
        self.norm = nn.LayerNorm(feature_dim)
        self.proj = nn.Sequential(nn.Linear(feature_dim, hidden), nn.GELU())
        self.queries = nn.Parameter(torch.randn(tokens, hidden) / hidden**0.5)
        self.out = nn.Linear(hidden, width)
        nn.init.zeros_(self.out.weight)  # a fresh head gives zero tokens: the backbone is unchanged
        nn.init.zeros_(self.out.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = self.proj(self.norm(features.float()))
        weights = torch.einsum("kh,bnh->bkn", self.queries.to(h.dtype), h) * h.shape[-1] ** -0.5
        return self.out(torch.einsum("bkn,bnh->bkh", weights.softmax(-1), h))


class PhysEncoder(nn.Module):
    """uint8 first frames (B, H, W, 3) -> K tokens (B, K, width). ``features`` is frozen; the
    policy's ``head`` trains; ``reference_head`` (after ``add_reference``) is DPO's reference."""

    def __init__(self, features: nn.Module, feature_dim: int, width: int, tokens: int = TOKENS):
        super().__init__()
        self.features = features.requires_grad_(False).eval()
        self.head = PhysHead(feature_dim, width, tokens)
        self.reference_head: PhysHead | None = None
        self.use_reference = False  # Run.reference() sets it while the reference model runs

    @property
    def tokens(self) -> int:
        return int(self.head.shape["tokens"])

    def train(self, mode: bool = True) -> PhysEncoder:
        super().train(mode)
        self.features.eval()  # frozen: always in inference mode
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.features(images)
        head = self.reference_head if self.use_reference and self.reference_head is not None else self.head
        return head(features)

    # --- DPO's reference ----------------------------------------------------------------------
    def add_reference(self) -> None:
        """The reference head: a frozen copy of the policy's head (equal to it at the start)."""
        self.reference_head = copy.deepcopy(self.head).requires_grad_(False)

    @torch.no_grad()
    def update_reference(self) -> None:
        assert self.reference_head is not None, "add_reference() first"
        for ref, p in zip(self.reference_head.parameters(), self.head.parameters(), strict=True):
            ref.copy_(p)

    # --- persistence (in a training checkpoint's adapter.safetensors) --------------------------
    def head_tensors(self) -> dict[str, torch.Tensor]:
        """The heads' parameters under ``HEAD`` / ``REFERENCE_HEAD`` prefixes."""
        out = {HEAD + k: p for k, p in self.head.named_parameters()}
        if self.reference_head is not None:
            out.update({REFERENCE_HEAD + k: p for k, p in self.reference_head.named_parameters()})
        return out


class TinyFeatures(nn.Module):
    """tiny-i2v's frozen features of a first frame: a copy of its denoiser's patch embedding and
    first ``depth`` blocks (module docstring: why), run on the frame as a still video at sigma = 0
    with the null text; the first time slice's tokens (B, GH * GW, dim)."""

    def __init__(self, backbone, depth: int = FEATURE_DEPTH):
        super().__init__()
        # the base weights only: a LoRA-wrapped layer's base is ``...base_layer.weight``
        base = {
            k.replace(".base_layer.", "."): v.detach().clone()
            for k, v in backbone.transformer.state_dict().items()
            if "lora_" not in k
        }
        config = dataclasses.replace(backbone.config, depth=min(depth, backbone.config.depth))
        self.transformer = config.build_transformer()
        missing, unexpected = self.transformer.load_state_dict(base, strict=False)
        assert not missing and all(k.startswith("blocks.") for k in unexpected), (missing, unexpected)
        self.transformer.requires_grad_(False).eval()
        self.c_in = float(backbone.preconditioning(torch.zeros(1))[0])  # EDM's input scale at sigma = 0
        self.dim = config.dim
        self.text_shape = (backbone.null_text(1).shape[1], backbone.null_text(1).shape[2])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.transformer.parameters()).device
        frame = images.to(device).permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, H, W) in [-1, 1]
        frames = self.transformer.config.frames
        still = frame[:, :, None].expand(-1, -1, frames, -1, -1)
        b = len(frame)
        tokens, _ = self.transformer.hidden_states(
            still * self.c_in,
            torch.zeros(b, device=device),
            torch.zeros(b, *self.text_shape, device=device),
            first_frame=frame,
        )
        grid = self.transformer.grid
        return tokens[:, : grid[1] * grid[2]].float()


class VisionFeatures(nn.Module):
    """A frozen ``transformers`` vision model's last hidden states (B, N, hidden) of the first
    frames: resized to the model's ``image_size`` (bilinear) and normalised with its processor's
    mean and standard deviation."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model.requires_grad_(False).eval()
        self.size = int(model.config.image_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.dim = int(model.config.hidden_size)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> VisionFeatures:
        """A vision model saved with ``save_pretrained`` (CLIPVisionModel, Dinov2Model... through
        ``AutoModel``) and its ``preprocessor_config.json``'s mean and std (CLIP's if it has none).
        Local files only."""
        from transformers import AutoModel

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no vision model at {folder} (expected a save_pretrained folder with config.json)")
        model = AutoModel.from_pretrained(folder, local_files_only=True)
        mean, std = CLIP_MEAN, CLIP_STD
        processor = folder / "preprocessor_config.json"
        if processor.is_file():
            cfg = json.loads(processor.read_text())
            mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
        return cls(model, mean, std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        device = self.mean.device
        x = images.to(device).permute(0, 3, 1, 2).float() / 255
        x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = ((x - self.mean) / self.std).to(next(self.model.parameters()).dtype)
        return self.model(pixel_values=x).last_hidden_state.float()


def new_physencoder(backbone, tokens: int = TOKENS) -> PhysEncoder:
    """A fresh PhysEncoder for an image-to-video ``backbone`` (its ``physencoder_features``)."""
    if not backbone.image_conditioned:
        raise ValueError(
            f"backbone {backbone.name!r} is text-to-video: a PhysEncoder reads an image-to-video first frame"
        )
    features, feature_dim, width = backbone.physencoder_features()
    return PhysEncoder(features, feature_dim, width, tokens).to(backbone.device)


def load_head(encoder: PhysEncoder, tensors: dict[str, torch.Tensor], path) -> None:
    """Copy a checkpoint's head (and reference head, where both sides have one) into ``encoder``."""
    own = encoder.head_tensors()
    saved = {k: v for k, v in tensors.items() if k.startswith((HEAD, REFERENCE_HEAD))}
    if not any(k.startswith(HEAD) for k in saved):
        raise ValueError(f"{path} holds no PhysEncoder head")
    with torch.no_grad():
        for k, v in saved.items():
            if k not in own:
                if k.startswith(REFERENCE_HEAD):
                    continue  # sampling loads the policy's head alone
                raise ValueError(f"{path} does not fit this PhysEncoder: no parameter {k}")
            if own[k].shape != v.shape:
                raise ValueError(
                    f"{path} does not fit this PhysEncoder: {k} is {tuple(v.shape)}, expected {tuple(own[k].shape)}"
                )
            own[k].copy_(v)
