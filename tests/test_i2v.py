"""Image-to-video (issue 17, item 2): the Backbone interface's image condition, ``tiny-i2v`` with its
shipped weights, ``wan-i2v`` at toy size through the image branch, and ``vpo sample --image/--images``."""

import json

import numpy as np
import pytest
import torch

from vpo.backbones import load_backbone
from vpo.backbones.testing import TINY_SIZES
from vpo.backbones.tiny import TEXT_TOKENS, TinyBackbone
from vpo.backbones.tiny_i2v import I2V_WEIGHTS, TinyI2VBackbone
from vpo.backbones.wan_i2v import WAN_TEXT_TOKENS
from vpo.cli import main
from vpo.data import physics
from vpo.video import write_image

SIZE_LIMIT = 20 * 10**6  # shipped weights: <= 20 MB (issue 1, as tiny's)


@pytest.fixture(scope="module")
def i2v(tiny):
    return TinyI2VBackbone.load(text_encoder=tiny.text_encoder).eval()


@pytest.fixture(scope="module")
def scenes():
    held = physics.heldout_scenes(3)
    return held, np.stack([s.render() for s in held])


def test_shipped_weights_fit_the_size_limit_and_load_as_tiny_i2v():
    assert I2V_WEIGHTS.is_file() and I2V_WEIGHTS.stat().st_size < SIZE_LIMIT
    with pytest.raises(ValueError, match="not a 'tiny' backbone checkpoint"):
        TinyBackbone.load(I2V_WEIGHTS)


def test_t2v_refuses_an_image_and_i2v_refuses_none_or_a_wrong_one(i2v, scenes):
    _, videos = scenes
    image = torch.from_numpy(videos[:1, 0].copy())
    t2v = TinyBackbone(text_encoder=i2v.text_encoder)
    with pytest.raises(ValueError, match="'tiny' is text-to-video: it takes no image"):
        t2v.sample(["a red ball"], [0], steps=1, images=image)
    with pytest.raises(ValueError, match="'tiny-i2v' is image-to-video: give a first frame"):
        i2v.sample(["a red ball"], [0], steps=1)
    with pytest.raises(ValueError, match=r"images must be uint8 \(1, 32, 32, 3\)"):
        i2v.sample(["a red ball"], [0], steps=1, images=image.float())
    with pytest.raises(ValueError, match=r"images must be uint8 \(2, 32, 32, 3\)"):
        i2v.sample(["a red ball", "a box"], [0, 1], steps=1, images=image)
    # a T2V backbone's conditioning is its text, as before the image condition existed
    assert torch.equal(
        t2v.guidance_text(["a red ball"], 4.0), torch.cat([t2v.encode_prompts(["a red ball"]), t2v.null_text(1)])
    )


def test_guidance_drops_the_text_and_keeps_the_image(i2v, scenes):
    held, videos = scenes
    images = torch.from_numpy(videos[:2, 0].copy())
    cond = i2v.guidance_text([s.caption for s in held[:2]], 4.0, images)
    assert cond.shape == (4, TEXT_TOKENS + i2v.image_tokens, 384)
    text, uncond = cond[:2], cond[2:]
    assert torch.equal(uncond[:, :TEXT_TOKENS], torch.zeros_like(uncond[:, :TEXT_TOKENS]))  # text dropped
    assert torch.equal(uncond[:, TEXT_TOKENS:], text[:, TEXT_TOKENS:])  # the same image in both halves
    _, frame, extra = i2v.split_conditioning(cond)
    assert extra is None  # no PhysEncoder: no token after the image's
    assert torch.allclose(frame[:2], images.permute(0, 3, 1, 2).float() / 127.5 - 1)


def test_tiny_i2v_samples_start_from_the_image_and_follow_it(i2v, scenes):
    held, videos = scenes
    images = torch.from_numpy(videos[:, 0].copy())
    out = i2v.sample([s.caption for s in held], [s.seed for s in held], steps=8, images=images)
    assert out.shape == (3, 16, 32, 32, 3)
    # frame 0 is the given image (its velocity is exact: only float rounding is left)
    assert (out[:, 0].float() - images.float()).abs().mean() < 0.5
    # and the rest of the video depends on it: the same caption and seed from another first frame
    other = i2v.sample([held[0].caption], [held[0].seed], steps=8, images=images[1:2])
    assert (other[0, 1:].float() - out[0, 1:].float()).abs().mean() > 2.0


def test_extra_tokens_reach_the_velocity_and_zero_ones_change_nothing(i2v, scenes):
    _, videos = scenes
    cond = i2v.conditioning(["a red ball falls"], torch.from_numpy(videos[:1, 0].copy()))
    extra = torch.randn(1, 3, 384)
    context, _, split = i2v.split_conditioning(torch.cat([cond, extra], 1))
    assert torch.equal(context, cond[:, :TEXT_TOKENS]) and torch.equal(split, extra)
    x, sigma = torch.randn(1, 3, 16, 32, 32), torch.tensor([0.7])
    v = i2v.predict_velocity(x, sigma, cond)
    assert not torch.allclose(v, i2v.predict_velocity(x, sigma, torch.cat([cond, extra], 1)))
    # zero tokens (a fresh PhysEncoder's) leave the velocity exactly as without them
    assert torch.equal(v, i2v.predict_velocity(x, sigma, torch.cat([cond, torch.zeros_like(extra)], 1)))


# --- wan-i2v ---------------------------------------------------------------------------------
def test_tiny_wan_i2v_samples_through_the_image_branch(tiny_models):
    frames, height, width = TINY_SIZES["wan-i2v"]
    bb = load_backbone("wan-i2v", tiny_models / "wan-i2v", frames=frames, height=height, width=width)
    # the toy tokenizer stops at 16 tokens: the text states are padded to Wan's hard-coded 512, so
    # diffusers' split (image = context[:, :L - 512]) hands the image branch the CLIP states
    assert bb.text_len == 16
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, height, width, 3), dtype=torch.uint8, generator=g)
    prompts = ["a red ball falling", "a blue box moving left"]
    cond = bb.conditioning(prompts, images)
    text, states, latent = bb.split_conditioning(cond)
    assert text.shape[1] == WAN_TEXT_TOKENS and states.shape == (2, 17, 4) and latent.shape == (2, 20, 2, 2, 2)
    assert torch.equal(latent[:, :4, 0], torch.ones_like(latent[:, :4, 0]))  # the mask: frame 0 given
    # the image branch is live: changing only the CLIP states changes the velocity
    x, sigma = bb.initial_noise([0, 1]), torch.tensor([0.5, 0.5])
    clip = slice(WAN_TEXT_TOKENS, WAN_TEXT_TOKENS + 3)  # 17 x 4 CLIP values packed 32 a token
    swapped = cond.clone()
    swapped[:, clip] = cond[[1, 0], clip]
    v, v_swapped = bb.predict_velocity(x, sigma, cond), bb.predict_velocity(x, sigma, swapped)
    assert (v - v_swapped).abs().mean() > 1e-4
    # and sampling goes through it: other first frames, other videos; none: a clear refusal
    a, latents_a = bb.sample(prompts, [3, 4], steps=2, images=images, return_latents=True)
    _, latents_b = bb.sample(prompts, [3, 4], steps=2, images=images.flip(0), return_latents=True)
    assert a.shape == (2, frames, height, width, 3)
    # latents: the random toy VAE decodes most latents to nearly the same pixels
    assert (latents_a - latents_b).abs().mean() > 0.01
    with pytest.raises(ValueError, match="'wan-i2v' is image-to-video"):
        bb.sample(prompts, [3, 4], steps=2)
    t2v = load_backbone("wan", tiny_models / "wan", frames=frames, height=height, width=width)
    with pytest.raises(ValueError, match="'wan' is text-to-video"):
        t2v.sample(prompts, [3, 4], steps=2, images=images)


# --- the CLI ---------------------------------------------------------------------------------
def test_vpo_sample_with_image_and_images(tmp_path, scenes, capsys):
    held, videos = scenes
    folder = tmp_path / "frames"
    for i, v in enumerate(videos[:2]):
        write_image(v[0], folder / f"{i}.png")
    big = np.repeat(np.repeat(videos[2, 0], 2, 0), 3, 1)  # 64 x 96: resized to 32 x 32
    write_image(big, tmp_path / "big.png")
    prompts = tmp_path / "p.txt"
    prompts.write_text(f"{held[0].caption}\n{held[1].caption}\n")
    common = ["--backbone", "tiny-i2v", "--seed", "0", "--steps", "2"]
    assert (
        main(["sample", *common, "--images", str(folder), "--prompts", str(prompts), "--out", str(tmp_path / "a")]) == 0
    )
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["backbone"] == "tiny-i2v" and len(manifest["videos"]) == 2
    for i, entry in enumerate(manifest["videos"]):
        video = np.load(tmp_path / "a" / entry["frames"])
        assert (tmp_path / "a" / entry["image"]).is_file()
        assert np.abs(video[0].astype(float) - videos[i, 0]).mean() < 0.5
    assert (
        main(
            [
                "sample",
                *common,
                "--image",
                str(tmp_path / "big.png"),
                "--prompt",
                "a ball",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    video = np.load(tmp_path / "b" / "0000.npy")
    assert video.shape == (16, 32, 32, 3) and np.abs(video[0].astype(float) - videos[2, 0]).mean() < 2.0


def test_vpo_sample_refuses_bad_images_with_status_2(tmp_path, capsys):
    (tmp_path / "text.png").write_text("not an image")
    folder = tmp_path / "frames"
    write_image(np.zeros((32, 32, 3), np.uint8), folder / "0.png")
    write_image(np.zeros((32, 32, 3), np.uint8), folder / "1.png")
    out = ["--out", str(tmp_path / "o"), "--seed", "0", "--prompt", "a ball"]
    cases = [
        (["--backbone", "tiny-i2v", "--image", str(tmp_path / "missing.png")], "--image: no image at"),
        (["--backbone", "tiny-i2v", "--image", str(tmp_path / "text.png")], "is not a readable image"),
        (["--backbone", "tiny-i2v", "--images", str(tmp_path / "nowhere")], "--images: no folder at"),
        (["--backbone", "tiny-i2v", "--images", str(folder)], "holds 2 image(s) but there are 1 prompt(s)"),
        (
            ["--backbone", "tiny", "--image", str(folder / "0.png")],
            "backbone 'tiny' is text-to-video and takes no image",
        ),
        (["--backbone", "tiny-i2v"], "backbone 'tiny-i2v' is image-to-video: give the first frame"),
    ]
    for args, message in cases:
        assert main(["sample", *args, *out]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("vpo sample: error: ") and message in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_vpo_sample_with_wan_i2v_from_a_local_folder(tmp_path, tiny_models):
    write_image(np.full((40, 24, 3), 200, np.uint8), tmp_path / "frame.png")  # resized to 16 x 16
    args = ["sample", "--backbone", "wan-i2v", "--model-dir", str(tiny_models / "wan-i2v"), "--frames", "5"]
    args += ["--height", "16", "--width", "16", "--image", str(tmp_path / "frame.png"), "--prompt", "a red ball"]
    assert main([*args, "--seed", "0", "--steps", "2", "--out", str(tmp_path / "o")]) == 0
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["backbone"] == "wan-i2v" and manifest["videos"][0]["image"] == "0000.png"
    assert np.load(tmp_path / "o" / "0000.npy").shape == (5, 16, 16, 3)
