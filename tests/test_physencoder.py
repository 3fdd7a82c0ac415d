"""PhysEncoder (issue 17, item 3): frozen first-frame features + a trainable head giving K tokens of
the conditioning, and ``TrainConfig.trainable`` choosing what a run trains (LoRA, head, both)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import as_if_pretrained

from vpo.backbones.physencoder import HEAD, REFERENCE_HEAD, TOKENS, PhysEncoder, VisionFeatures, new_physencoder
from vpo.backbones.tiny import TEXT_DIM, TEXT_TOKENS, TinyBackbone, TinyConfig
from vpo.backbones.tiny_i2v import TinyI2VBackbone
from vpo.cli import main
from vpo.data.prompts import IMAGE_SETS, read_image_prompts, read_prompts
from vpo.train import online_dpo, online_rwr
from vpo.train.checkpoints import POLICY, load_policy
from vpo.train.config import ConfigError, TrainConfig
from vpo.train.runner import Run
from vpo.train.sinks import JsonlSink


@pytest.fixture(scope="module")
def heldout_frames():
    captions, frames = read_image_prompts("physics-heldout")
    return captions[:2], torch.from_numpy(frames[:2].copy())


@pytest.fixture
def small_i2v(tiny):
    """A small random tiny-i2v of the real classes (every path perturbed away from its zero init,
    as if pretrained), fresh for each test."""

    def make():
        torch.manual_seed(0)
        config = TinyConfig(dim=32, heads=2, depth=2, mlp_ratio=2, first_frame=True)
        return as_if_pretrained(TinyI2VBackbone(config, text_encoder=tiny.text_encoder).eval())

    return make


def cfg_for(tmp_path, **kw):
    base = dict(
        backbone="tiny-i2v",
        prompts="physics-train",
        heldout_prompts="physics-heldout",
        steps=1,
        num_candidates=3,
        sampling_steps=3,
        noise_draws=2,
        heldout_count=2,
        heldout_every=0,
        checkpoint_every=1,
        tie_tolerance=0.0,
        lr=1e-2,
        out=str(tmp_path / "run"),
    )
    return TrainConfig.from_dict({**base, **kw})


def snapshot(bb) -> dict[str, torch.Tensor]:
    """Every parameter of the generator (base and both LoRA adapters) and of the PhysEncoder."""
    out = {f"transformer.{k}": v.detach().clone() for k, v in bb.transformer.named_parameters()}
    if bb.physencoder is not None:
        out.update({f"physencoder.{k}": v.detach().clone() for k, v in bb.physencoder.named_parameters()})
    return out


def changed(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


def one_step(cfg, bb, algorithm=online_dpo) -> tuple[Run, set[str]]:
    """A Run of ``cfg`` on ``bb`` (which adds the adapters and, for a PhysEncoder run, the head),
    then its first training step; returns the run and the names of the parameters that changed."""
    run = Run(cfg, JsonlSink(cfg.out, cfg.steps, progress=False), backbone=bb)
    before = snapshot(bb)
    try:
        algorithm.train_run(run, None, False)
    finally:
        run.sink.close()
    return run, changed(before, snapshot(bb))


def test_the_sink_gets_each_video_s_first_frame_and_writes_it_beside_the_video(tmp_path, small_i2v):
    """Candidates and held-out videos alike (what the web dashboard shows next to each video)."""
    import json

    from vpo.video import read_image

    cfg = cfg_for(tmp_path, heldout_every=1, num_candidates=2, noise_draws=1)
    run, _ = one_step(cfg, small_i2v())
    for kind in ("heldout", "candidates"):
        folder = Path(cfg.out) / "samples" / f"step_000001_{kind}"
        videos = json.loads((folder / "samples.json").read_text())["videos"]
        assert [v["image"] for v in videos] == [f"{i:02d}.png" for i in range(2)]
        for v in videos:
            frame = read_image(folder / v["image"])
            caption = read_image_prompts(cfg.heldout_prompts if kind == "heldout" else cfg.prompts)[0]
            assert v["prompt"] in caption and frame.shape == (32, 32, 3)
    heldout = Path(cfg.out) / "samples" / "step_000001_heldout"
    assert np.array_equal(read_image(heldout / "00.png"), run.heldout_images[0].numpy())


# --- a fresh PhysEncoder changes nothing --------------------------------------------------------
def test_a_fresh_head_leaves_the_shipped_tiny_i2v_sampling_unchanged(tiny, heldout_frames):
    captions, images = heldout_frames
    bb = TinyI2VBackbone.load(text_encoder=tiny.text_encoder).eval()
    seeds = [3, 4]
    before = bb.sample(captions, seeds, steps=4, images=images)
    bb.attach_physencoder(new_physencoder(bb))
    cond = bb.conditioning(captions, images)
    assert cond.shape == (2, TEXT_TOKENS + bb.image_tokens + TOKENS, TEXT_DIM)  # K tokens after the image's
    assert torch.equal(cond[:, -TOKENS:], torch.zeros_like(cond[:, -TOKENS:]))  # a fresh head: zero tokens
    assert torch.equal(bb.sample(captions, seeds, steps=4, images=images), before)
    # classifier-free guidance keeps the tokens in the unconditional half (it drops the text only)
    guided = bb.guidance_text(captions, 4.0, images)
    assert torch.equal(guided[2:, TEXT_TOKENS:], guided[:2, TEXT_TOKENS:])
    # and a head that is no longer zero does change the samples
    with torch.no_grad():
        bb.physencoder.head.out.weight.normal_(0, 0.5)
    assert not torch.equal(bb.sample(captions, seeds, steps=4, images=images), before)


def test_the_frozen_features_do_not_move_with_the_generators_lora(small_i2v, heldout_frames, tmp_path):
    """tiny-i2v's features are a copy of its denoiser's first blocks taken from the base weights:
    training the LoRA adapter (trainable = both) leaves them where they were."""
    bb = small_i2v()
    run, _ = one_step(cfg_for(tmp_path, trainable="both"), bb)
    _, images = heldout_frames
    features = run.physencoder.features(images)
    fresh = new_physencoder(small_i2v()).features(images)  # same seed: the same base weights, no adapter
    assert features.shape == (2, 64, 32)
    assert torch.equal(features, fresh)


# --- what a run trains ---------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", [online_dpo, online_rwr], ids=["online-dpo", "online-rwr"])
def test_trainable_physencoder_changes_only_head_parameters(tmp_path, small_i2v, algorithm):
    name = algorithm.__name__.rsplit(".", 1)[1].replace("_", "-")
    run, moved = one_step(cfg_for(tmp_path, trainable="physencoder", algorithm=name), small_i2v(), algorithm)
    assert moved, "the step changed nothing"
    assert all(k.startswith("physencoder.head.") for k in moved), sorted(moved)[:5]
    assert "physencoder.head.out.weight" in moved  # the zero output projection gets the gradient first
    # the optimizer holds the head alone; the generator's adapters take no gradient
    assert {id(p) for p in run.trained} == {id(p) for p in run.physencoder.head.parameters()}
    assert not any(p.requires_grad for p in run.adapter_params(POLICY).values())


def test_trainable_lora_changes_no_head_parameter(tmp_path, small_i2v):
    """A run that trains LoRA on a backbone given with a PhysEncoder (PhysMaster's stage II: the
    head trained before) keeps the head as it is."""
    bb = small_i2v()
    bb.attach_physencoder(new_physencoder(bb))
    with torch.no_grad():
        bb.physencoder.head.out.weight.normal_(0, 0.1)  # a trained head: its tokens count
    _, moved = one_step(cfg_for(tmp_path, trainable="lora"), bb)
    assert moved and not any(k.startswith("physencoder.") for k in moved)
    assert any(f".{POLICY}." in k and "lora_B" in k for k in moved)
    assert all(f".{POLICY}." in k for k in moved)  # not the base, not the reference


def test_the_curriculum_update_of_a_lora_run_keeps_its_frozen_head(tmp_path, small_i2v):
    """The curriculum update of a LoRA run on a backbone with a PhysEncoder it does not train (no
    reference head: the one frozen head serves both models) moves the adapter and leaves the head."""
    bb = small_i2v()
    bb.attach_physencoder(new_physencoder(bb))
    with torch.no_grad():
        bb.physencoder.head.out.weight.normal_(0, 0.1)
    run, moved = one_step(cfg_for(tmp_path, trainable="lora", ref_update_every=1), bb)
    assert run.physencoder.reference_head is None
    assert not any(k.startswith("physencoder.") for k in moved)
    ref = run.adapter_params("ref")
    assert all(torch.equal(p, ref[k.replace(f".{POLICY}.", ".ref.")]) for k, p in run.adapter_params(POLICY).items())


def test_trainable_both_changes_the_head_and_the_adapter(tmp_path, small_i2v):
    _, moved = one_step(cfg_for(tmp_path, trainable="both"), small_i2v())
    assert any(k.startswith("physencoder.head.") for k in moved)
    assert any(f".{POLICY}." in k and "lora_B" in k for k in moved)
    frozen = [k for k in moved if not (k.startswith("physencoder.head.") or f".{POLICY}." in k)]
    assert not frozen, frozen[:5]  # no base weight, no reference, no feature extractor


def test_the_reference_holds_a_copy_of_the_head_moved_by_the_curriculum_update(tmp_path, small_i2v):
    bb = small_i2v()
    run, _ = one_step(cfg_for(tmp_path, trainable="physencoder", ref_update_every=0), bb)
    encoder = run.physencoder
    head = dict(encoder.head.named_parameters())
    ref = dict(encoder.reference_head.named_parameters())
    assert not torch.equal(head["out.weight"], ref["out.weight"])  # the reference stayed at the fresh head
    assert torch.equal(ref["out.weight"], torch.zeros_like(ref["out.weight"]))
    _, images = read_image_prompts("physics-train")
    frames = torch.from_numpy(images[:1].copy())
    with run.reference():
        assert torch.equal(bb.physencoder(frames), torch.zeros(1, TOKENS, TEXT_DIM))
    assert not torch.equal(bb.physencoder(frames), torch.zeros(1, TOKENS, TEXT_DIM))  # the policy's again
    run.update_reference()
    assert all(torch.equal(head[k], ref[k]) for k in head)


# --- checkpoints -----------------------------------------------------------------------------------
def test_the_head_round_trips_through_a_checkpoint(tmp_path, small_i2v, heldout_frames):
    bb = small_i2v()
    run, _ = one_step(cfg_for(tmp_path, trainable="physencoder"), bb)
    folder = run.last_checkpoint
    from vpo.train.checkpoints import read_safetensors

    saved = read_safetensors(folder / "adapter.safetensors")
    assert {k[len(HEAD) :] for k in saved if k.startswith(HEAD)} == dict(run.physencoder.head.named_parameters()).keys()
    assert any(k.startswith(REFERENCE_HEAD) for k in saved)
    # sampling from the checkpoint (what `vpo sample --checkpoint` calls) gets the trained head
    fresh = small_i2v()
    cfg = load_policy(fresh, folder)
    assert cfg["trainable"] == "physencoder" and fresh.physencoder is not None
    for k, p in run.physencoder.head.named_parameters():
        assert torch.equal(dict(fresh.physencoder.head.named_parameters())[k], p), k
    captions, images = heldout_frames
    assert torch.equal(
        fresh.sample(captions, [0, 1], steps=2, images=images), bb.sample(captions, [0, 1], steps=2, images=images)
    )
    # resuming loads the head and its reference too
    cfg2 = cfg_for(tmp_path, trainable="physencoder")
    resumed = Run(cfg2, JsonlSink(cfg2.out, 1, progress=False), backbone=small_i2v())
    try:
        assert resumed.resume() == 1
    finally:
        resumed.sink.close()
    for k, p in run.physencoder.head_tensors().items():
        assert torch.equal(resumed.physencoder.head_tensors()[k], p), k


# --- config ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"trainable": "head"}, "trainable", "unknown trainable 'head'; valid: lora, physencoder, both"),
        ({"trainable": "physencoder"}, "trainable", "backbone 'tiny' has none: use trainable = 'lora'"),
        ({"trainable": "both"}, "trainable", "image-to-video backbone's first frame"),
        ({"backbone": "tiny-i2v", "heldout_prompts": "physics-heldout"}, "prompts", "image prompt set"),
        ({"backbone": "tiny-i2v", "prompts": "physics-train"}, "heldout_prompts", "got 'heldout64'"),
        ({"prompts": "physics-train"}, "prompts", "backbone 'tiny' is text-to-video and takes none"),
        ({"heldout_prompts": "physics-heldout"}, "heldout_prompts", "an image prompt set"),
        (
            {
                "backbone": "tiny-i2v",
                "prompts": "physics-train",
                "heldout_prompts": "physics-heldout",
                "algorithm": "refl",
            },
            "algorithm",
            "refl does not take first frames",
        ),
    ],
)
def test_config_refusals_name_their_field(fields, field, message):
    with pytest.raises(ConfigError, match=message) as e:
        TrainConfig.from_dict(fields)
    assert e.value.field == field
    assert field in {problem.field for problem in TrainConfig.check(fields)}  # what the web form shows


def test_config_accepts_each_trainable_on_an_image_to_video_backbone(tmp_path):
    for trainable in ("lora", "physencoder", "both"):
        cfg = TrainConfig.from_dict(
            {
                "backbone": "tiny-i2v",
                "prompts": "physics-train",
                "heldout_prompts": "physics-heldout",
                "trainable": trainable,
            }
        )
        (tmp_path / "run.toml").write_text(cfg.to_toml())
        assert TrainConfig.from_toml(tmp_path / "run.toml") == cfg
    assert TrainConfig().trainable == "lora"  # today's behaviour by default


def test_vpo_train_refuses_a_physencoder_on_a_text_to_video_backbone(capsys):
    assert main(["train", "--trainable", "physencoder", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "trainable 'physencoder'" in err and "backbone 'tiny'" in err and "Traceback" not in err


# --- the image prompt sets and real backbones' features ------------------------------------------
def test_image_prompt_sets_give_a_rendered_first_frame_per_caption():
    for name, n in IMAGE_SETS.items():
        captions, frames = read_image_prompts(name)
        assert len(captions) == n and frames.shape == (n, 32, 32, 3) and frames.dtype == np.uint8
        assert read_prompts(name) == captions  # a text-to-video run reads the captions alone
    with pytest.raises(ValueError, match="no image prompt set 'train'"):
        read_image_prompts("train")


def test_vision_features_from_a_local_transformers_model(tmp_path):
    """Real backbones' frozen features: any transformers vision model from a local folder (here a
    tiny random CLIPVisionModel, saved and reloaded); a fresh head's tokens are zero, and one
    backward reaches the head alone."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8
    )
    CLIPVisionModel(config).save_pretrained(tmp_path / "vision")
    features = VisionFeatures.from_pretrained(tmp_path / "vision")
    encoder = PhysEncoder(features, features.dim, width=24)
    images = torch.randint(0, 256, (2, 40, 40, 3), dtype=torch.uint8)
    tokens = encoder(images)
    assert tokens.shape == (2, TOKENS, 24) and torch.equal(tokens, torch.zeros_like(tokens))
    assert features(images).shape == (2, 5, 16)  # (16 / 8)^2 patches + the class token
    (encoder(images) * torch.randn(2, TOKENS, 24)).sum().backward()
    assert encoder.head.out.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in features.parameters())
    with pytest.raises(FileNotFoundError, match="no vision model"):
        VisionFeatures.from_pretrained(tmp_path / "missing")


def test_a_text_to_video_backbone_takes_no_physencoder(tiny):
    with pytest.raises(ValueError, match="'tiny' is text-to-video"):
        new_physencoder(tiny)
    t2v = TinyBackbone(TinyConfig(dim=32, heads=2, depth=1, mlp_ratio=2), text_encoder=tiny.text_encoder)
    with pytest.raises(ValueError, match="'tiny' is text-to-video"):
        t2v.attach_physencoder(PhysEncoder(torch.nn.Identity(), 4, 4))


def test_wan_i2v_reads_a_fresh_head_as_no_change_and_a_trained_one_through_its_text(tiny_models):
    """wan-i2v at toy size: the PhysEncoder reads its frozen CLIP vision model; its K tokens take the
    last, zero-padding places of the 512 text tokens, so zero tokens change nothing, exactly."""
    from vpo.backbones import load_backbone
    from vpo.backbones.testing import TINY_SIZES

    frames, height, width = TINY_SIZES["wan-i2v"]
    bb = load_backbone("wan-i2v", tiny_models / "wan-i2v", frames=frames, height=height, width=width)
    images = torch.randint(0, 256, (2, height, width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    prompts = ["a red ball falling", "a blue box moving left"]
    x, sigma = bb.initial_noise([0, 1]), torch.tensor([0.5, 0.5])
    v = bb.predict_velocity(x, sigma, bb.conditioning(prompts, images))
    bb.attach_physencoder(new_physencoder(bb))
    cond = bb.conditioning(prompts, images)
    assert torch.equal(bb.predict_velocity(x, sigma, cond), v)
    with torch.no_grad():
        bb.physencoder.head.out.weight.normal_(0, 1.0)
    assert (bb.predict_velocity(x, sigma, bb.conditioning(prompts, images)) - v).abs().mean() > 1e-5


def test_vpo_sample_checkpoint_loads_the_trained_head(tmp_path, tiny, heldout_frames, capsys):
    """One physencoder step on the shipped tiny-i2v, then `vpo sample --checkpoint`: the video is
    what the trained model samples, not what the base samples."""
    from vpo.train import train
    from vpo.video import write_image

    bb = TinyI2VBackbone.load(text_encoder=tiny.text_encoder).eval()
    cfg = cfg_for(tmp_path, trainable="physencoder", num_candidates=2, sampling_steps=2, noise_draws=1, lr=0.5)
    sink = JsonlSink(cfg.out, 1, progress=False)
    try:
        folder = train(cfg, sink, backbone=bb)
    finally:
        sink.close()
    captions, images = heldout_frames
    write_image(images[0].numpy(), tmp_path / "frame.png")
    args = ["sample", "--image", str(tmp_path / "frame.png"), "--prompt", captions[0], "--seed", "0", "--steps", "2"]
    assert main([*args, "--checkpoint", str(folder), "--out", str(tmp_path / "trained")]) == 0
    assert main([*args, "--backbone", "tiny-i2v", "--out", str(tmp_path / "base")]) == 0
    trained, base = (np.load(tmp_path / name / "0000.npy") for name in ("trained", "base"))
    expected = bb.sample(captions[:1], [0], steps=2, images=images[:1])[0].numpy()
    assert np.array_equal(trained, expected) and not np.array_equal(trained, base)
