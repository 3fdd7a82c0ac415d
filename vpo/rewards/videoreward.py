"""``videoreward``: VideoAlign's VideoReward (Liu et al., "Improving Video Generation with Human
Feedback", 2025), a Qwen2-VL-2B with a linear reward head read at three special tokens: visual
quality (VQ), motion quality (MQ) and text alignment (TA) -> our dimensions ``visual``,
``temporal`` and ``alignment``.

Weights load from a local folder, never from a hub: ``VPO_VIDEOREWARD_DIR`` (layout in
``vpo/rewards/local.py`` and ``docs/metrics.md``). The released checkpoint was trained with
transformers 4.45, peft and a LoRA adapter, and saved as the whole PEFT model's state dict in
``checkpoint-<step>/model.pth``. The port to the installed transformers (``port_state_dict``):

* key layout: 4.45's ``visual.*`` and ``model.*`` (the language model) became
  ``model.visual.*`` and ``model.language_model.*``; the PEFT wrapper's ``base_model.model.``
  prefix goes, ``lm_head`` is dropped (a reward model generates nothing);
* LoRA is merged: ``W = W_base + (alpha / r) * B @ A`` with r and alpha from
  ``model_config.json`` (``alpha / sqrt(r)`` with rsLoRA), so no peft at scoring time;
* the embedding keeps the checkpoint's size (VideoAlign resized it to the tokenizer with the three
  reward tokens added, 151,660 rows, below Qwen2-VL's 151,936);
* positions: VideoAlign's forward bypasses Qwen2-VL's 3D rotary positions (M-RoPE) and the text
  model numbers every token 0, 1, 2, ... — video tokens included. The checkpoint was trained so,
  and so it is run here (``forward``); the installed Qwen2-VL would otherwise give the video tokens
  3D positions the model never saw.

Input (what VideoAlign's inference feeds, from uint8 frames, no decord, no torchvision): frames
sampled uniformly at ``fps`` (2) by qwen-vl-utils' rule (an even count, at least 4, at most the
video's), each resized (bicubic, antialiased) to multiples of 28 pixels with at least 128 x 28 x 28
and at most ``max_frame_pixels`` (448 x 448) pixels, rounded back to 0..255, normalised with the
processor's mean and std, and cut into Qwen2-VL's 14-pixel, 2-frame patches; the chat template
of the base model wraps the video and ``prompt_template.txt``. The head's three outputs are
Bradley-Terry rewards on an open scale; they are standardised with the mean and std in
``model_config.json`` (``inference_config``) when present, and mapped to [0, 1] by the logistic
function: 0.5 is a video of average reward, as likely to win as to lose against an average one.
bf16 on GPU, fp32 on CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vpo.device import pick_device
from vpo.rewards.base import RewardSource, ScoreResult, check_videos
from vpo.rewards.local import REWARD_TOKENS, SETTINGS, folder, newest_checkpoint, videoreward_problem
from vpo.video import CLIP_MEAN, CLIP_STD

SETTING = SETTINGS["videoreward"]
OUTPUTS = ("VQ", "MQ", "TA")  # in the order of REWARD_TOKENS and of the source's dimensions
# qwen-vl-utils' video defaults, which VideoAlign's data pipeline uses (its vision_process.py)
FPS, MAX_FRAME_PIXELS, MIN_FRAME_PIXELS = 2.0, 448 * 448, 128 * 28 * 28
MIN_FRAMES, MAX_FRAMES = 4, 768
OLD_PREFIX = "base_model.model."  # the PEFT wrapper's


def _model_class():
    # imported lazily: transformers' Qwen2-VL is heavy and only this source needs it
    from transformers import Qwen2VLModel

    class VideoRewardModel(nn.Module):
        """Qwen2-VL (vision tower + language model, no LM head) and VideoReward's bias-free linear
        head, applied at the three reward tokens."""

        def __init__(self, config, outputs: int):
            super().__init__()
            self.config = config
            self.model = Qwen2VLModel(config)
            self.rm_head = nn.Linear(config.text_config.hidden_size, outputs, bias=False)

        def forward(self, input_ids, attention_mask, pixel_values_videos, video_grid_thw, token_ids):
            lm = self.model.language_model
            embeds = lm.embed_tokens(input_ids)
            video = self.model.visual(pixel_values_videos.to(embeds.dtype), grid_thw=video_grid_thw).pooler_output
            mask = (input_ids == self.config.video_token_id).unsqueeze(-1)
            if int(mask.sum()) != len(video):
                raise ValueError(f"{int(mask.sum())} video tokens in the text for {len(video)} video features")
            embeds = embeds.masked_scatter(mask, video.to(embeds.dtype))
            # 1D positions for every token, video included: what VideoAlign's forward gives the model
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand(len(input_ids), -1)
            hidden = lm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions).last_hidden_state
            found = torch.stack([(input_ids == t).sum(1) for t in token_ids], 1)
            if not (found == 1).all():
                raise ValueError("every text must hold each reward token exactly once")
            rows = torch.arange(len(input_ids), device=input_ids.device)
            at = torch.stack([(input_ids == t).int().argmax(1) for t in token_ids], 1)  # (B, 3) positions
            logits = F.linear(hidden[rows[:, None], at].float(), self.rm_head.weight.float())  # (B, 3, outputs)
            # a 3-output head gives each token its own output (VideoAlign's diagonal); a 1-output head
            # is read at each of the three tokens
            return logits.diagonal(dim1=1, dim2=2) if logits.shape[-1] == 3 else logits[..., 0]

    return VideoRewardModel


# --- the checkpoint: released (transformers 4.45 + peft) layout -> this transformers' ----------------
def lora_scale(model_config: dict) -> float:
    lora = model_config.get("peft_lora_config") or {}
    r, alpha = float(lora.get("lora_r", 16)), float(lora.get("lora_alpha", 32))
    return alpha / math.sqrt(r) if lora.get("use_rslora") else alpha / r


def port_state_dict(old: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """The released state dict (PEFT-wrapped Qwen2-VL of transformers 4.45 + ``rm_head``) as the
    keys of ``VideoRewardModel`` here, every LoRA adapter merged into its base weight."""
    new: dict[str, torch.Tensor] = {}
    lora: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in old.items():
        if not key.startswith(OLD_PREFIX):
            raise ValueError(f"unexpected key {key!r}: the released checkpoint's keys start with {OLD_PREFIX!r}")
        key = key.removeprefix(OLD_PREFIX)
        if key.startswith("lm_head."):
            continue
        if ".lora_embedding_" in key or ".lora_magnitude" in key:
            raise ValueError(f"unsupported adapter weight {key!r} (only LoRA on linear layers is ported)")
        for part in (".lora_A.", ".lora_B."):
            if part in key:  # "<module>.lora_A.default.weight"
                module = key.split(part)[0]
                lora.setdefault(module, {})[part.strip(".")] = value
                break
        else:
            key = key.replace(".base_layer.", ".")
            if key.startswith("visual."):
                key = "model." + key
            elif key.startswith("model."):
                key = "model.language_model." + key.removeprefix("model.")
            elif not key.startswith("rm_head."):
                raise ValueError(f"unexpected key {OLD_PREFIX + key!r} in the released checkpoint")
            new[key] = value
    for module, ab in lora.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise ValueError(f"LoRA of {module!r} lacks {'lora_B' if 'lora_A' in ab else 'lora_A'}")
        name = ("model." + module if module.startswith("visual.") else "model.language_model." + module[6:]) + ".weight"
        if name not in new:
            raise ValueError(f"LoRA of {module!r} has no base weight")
        base = new[name]
        delta = scale * (ab["lora_B"].float() @ ab["lora_A"].float())
        new[name] = (base.float() + delta).to(base.dtype)
    return new


# --- input: uint8 frames -> Qwen2-VL's video patches ------------------------------------------------
def frame_indices(total: int, video_fps: float, fps: float = FPS) -> np.ndarray:
    """Which frames qwen-vl-utils samples at ``fps``: an even count, at least 4 (fewer if the video
    has fewer), spread uniformly, first and last included."""
    most = max(2, min(MAX_FRAMES, total) // 2 * 2)
    n = min(max(total / video_fps * fps, MIN_FRAMES), most)
    n = min(max(2, round(n / 2) * 2), total)
    return np.linspace(0, total - 1, n).round().astype(int)


def smart_size(height: int, width: int, min_pixels: int, max_pixels: int, factor: int = 28) -> tuple[int, int]:
    """The frame size Qwen2-VL is fed: multiples of ``factor``, the aspect ratio kept, the pixel
    count within [min_pixels, max_pixels] (qwen-vl-utils' ``smart_resize``)."""
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def video_patches(
    video: np.ndarray, video_fps: float, vision, mean, std, fps: float = FPS, max_pixels: int = MAX_FRAME_PIXELS
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """uint8 (F, H, W, 3) -> (patches (t * h * w, 3 * T * p * p), grid (t, h, w)) in the order of
    Qwen2-VL's processor: temporal groups, then 2 x 2 merge windows row by row, then the pixels."""
    p, tp, m = vision.patch_size, vision.temporal_patch_size, vision.spatial_merge_size
    frames = torch.from_numpy(video[frame_indices(len(video), video_fps, fps)]).permute(0, 3, 1, 2).float()
    if pad := -len(frames) % tp:  # an odd count: the last frame repeated, as the processor does
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
    h, w = smart_size(frames.shape[-2], frames.shape[-1], MIN_FRAME_PIXELS, max_pixels, factor=p * m)
    frames = F.interpolate(frames, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    frames = frames.clamp(0, 255).round() / 255
    frames = (frames - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    t, gh, gw = len(frames) // tp, h // p, w // p
    x = frames.view(t, tp, 3, gh // m, m, p, gw // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(t * gh * gw, 3 * tp * p * p), (t, gh, gw)


class VideoRewardSource(RewardSource):
    name = "videoreward"

    def __init__(self, directory=None, device: str | None = None, video_fps: float | None = None, batch_size: int = 2):
        path = folder(self.name, directory)
        if path is None:
            raise ValueError(
                f"the videoreward reward source needs its weights in a local directory: set {SETTING} to it "
                "(nothing is downloaded)"
            )
        problem = videoreward_problem(path)
        if problem:
            raise ValueError(problem)
        self.directory, self.batch_size = path, batch_size
        if video_fps is not None:
            self.video_fps = video_fps
        self.template = (path / "prompt_template.txt").read_text(encoding="utf-8")
        self.settings = json.loads((path / "model_config.json").read_text(encoding="utf-8"))
        data = self.settings.get("data_config") or {}
        self.fps = float(data.get("fps") or FPS)
        self.max_pixels = int(data.get("max_frame_pixels") or MAX_FRAME_PIXELS)
        self.norm = self.settings.get("inference_config") or {}
        self.device = torch.device(pick_device(device))
        try:
            self._load(path)
        except (OSError, KeyError, RuntimeError, json.JSONDecodeError) as e:
            raise ValueError(f"{SETTING}={path}: VideoReward does not load: {e}") from None

    def _load(self, path: Path) -> None:
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.add_tokens(list(REWARD_TOKENS), special_tokens=True)  # as VideoAlign adds them
        self.token_ids = self.tokenizer.convert_tokens_to_ids(list(REWARD_TOKENS))
        self.chat_template = self.tokenizer.chat_template or _chat_template(path)
        processor = json.loads((path / "preprocessor_config.json").read_text(encoding="utf-8"))
        self.mean = tuple(processor.get("image_mean", CLIP_MEAN))
        self.std = tuple(processor.get("image_std", CLIP_STD))
        checkpoint = newest_checkpoint(path)
        old = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(old, dict) or not all(isinstance(v, torch.Tensor) for v in old.values()):
            raise ValueError(f"{checkpoint} is not a state dict of tensors")
        state = port_state_dict(old, lora_scale(self.settings))
        config = AutoConfig.from_pretrained(path)
        if config.model_type != "qwen2_vl":
            raise ValueError(f"{path / 'config.json'} is a {config.model_type!r} model, not Qwen2-VL")
        embed = state.get("model.language_model.embed_tokens.weight")
        head = state.get("rm_head.weight")
        if embed is None or head is None:
            raise ValueError(f"{checkpoint} has no {'embed_tokens' if embed is None else 'rm_head'} weight")
        config.text_config.vocab_size = len(embed)  # resized by VideoAlign to its tokenizer
        if max(self.token_ids) >= len(embed):
            raise ValueError(
                f"the reward tokens' ids {self.token_ids} do not fit the checkpoint's {len(embed)} embeddings: "
                "the tokenizer files are not the ones VideoReward was trained with"
            )
        if len(head) not in (1, len(OUTPUTS)):
            raise ValueError(f"{checkpoint}: expected a reward head of 1 or 3 outputs, found {len(head)}")
        with init_empty_weights():  # parameters on the meta device until the checkpoint's replace them
            model = _model_class()(config, len(head))
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        if missing or unexpected:
            raise ValueError(
                f"{checkpoint} does not fit Qwen2-VL as {path / 'config.json'} describes it: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = model.to(self.device, dtype).eval()

    # --- scoring -----------------------------------------------------------------------------
    def text(self, prompt: str, video_tokens: int) -> str:
        """The chat the checkpoint reads: the video, then the template with the prompt; the video's
        one placeholder token expanded to one per merged patch."""
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "video"},
                    {"type": "text", "text": self.template.replace("{text_prompt}", prompt)},
                ],
            }
        ]
        chat = self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
        )
        pad = self.tokenizer.convert_ids_to_tokens(self.model.config.video_token_id)
        if chat.count(pad) != 1:
            raise ValueError(f"the chat template gives {chat.count(pad)} {pad} tokens for one video")
        return chat.replace(pad, pad * video_tokens)

    @torch.no_grad()
    def raw_scores(self, videos: np.ndarray, prompts: list[str]) -> torch.Tensor:
        """(B, 3): VQ, MQ, TA rewards as the head gives them (before standardising)."""
        vision = self.model.config.vision_config
        merged = vision.spatial_merge_size**2
        pixels, grids, texts = [], [], []
        for video, prompt in zip(videos, prompts):
            x, grid = video_patches(video, self.video_fps, vision, self.mean, self.std, self.fps, self.max_pixels)
            pixels.append(x)
            grids.append(grid)
            texts.append(self.text(prompt, math.prod(grid) // merged))
        self.tokenizer.padding_side = "right"  # VideoAlign's; positions stay 0, 1, 2, ... for real tokens
        tokens = self.tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        return self.model(
            tokens["input_ids"].to(self.device),
            tokens["attention_mask"].to(self.device),
            torch.cat(pixels).to(self.device, dtype),
            torch.tensor(grids, device=self.device),
            self.token_ids,
        ).cpu()

    def score(self, videos, prompts: list[str]) -> ScoreResult:
        videos = check_videos(videos, prompts).numpy()
        raw = torch.cat(
            [
                self.raw_scores(videos[i : i + self.batch_size], prompts[i : i + self.batch_size])
                for i in range(0, len(videos), self.batch_size)
            ]
        )
        z = torch.stack(
            [
                (raw[:, i] - self.norm.get(f"{o}_mean", 0.0)) / self.norm.get(f"{o}_std", 1.0)
                for i, o in enumerate(OUTPUTS)
            ],
            1,
        )
        result = ScoreResult(
            scores={d: torch.sigmoid(z[:, i]) for i, d in enumerate(self.dimensions)},
            raw={**{f"videoreward_{o}": raw[:, i] for i, o in enumerate(OUTPUTS)}, "videoreward_overall": z.sum(1)},
        )
        return self.with_global(result)


def _chat_template(path: Path) -> str:
    """The base model's chat template when its tokenizer carries none: chat_template.jinja or
    chat_template.json (the processor's) in the folder."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text(encoding="utf-8")
    if (path / "chat_template.json").is_file():
        return json.loads((path / "chat_template.json").read_text(encoding="utf-8"))["chat_template"]
    raise ValueError(f"{path}: no chat template (tokenizer_config.json, chat_template.jinja or chat_template.json)")
