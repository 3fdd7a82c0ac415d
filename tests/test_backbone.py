import pytest
import torch

from vpo.backbones import BACKBONES, load_backbone
from vpo.backbones.tiny import TinyBackbone, TinyConfig

PROMPTS = ["a red ball moving right", "a blue square falling"]


def test_same_seed_gives_the_identical_video(tiny):
    a = tiny.sample(PROMPTS, [1, 2], steps=4)
    b = tiny.sample(PROMPTS, [1, 2], steps=4)
    assert a.dtype == torch.uint8 and tuple(a.shape) == (2, 16, 32, 32, 3)
    assert torch.equal(a, b)


def test_different_seeds_give_different_videos(tiny):
    a = tiny.sample(PROMPTS[:1] * 2, [1, 2], steps=4)
    assert (a[0].float() - a[1].float()).abs().mean() > 5


def test_a_video_depends_on_its_own_seed_not_on_its_batch(tiny):
    alone = tiny.sample(PROMPTS[:1], [5], steps=4)[0].float()
    batched = tiny.sample(PROMPTS, [5, 9], steps=4)[0].float()
    # bf16 kernels may block a batch of 2 differently from a batch of 4: allow rounding, not change
    assert (alone - batched).abs().mean() < 1.0


def test_predict_velocity_keeps_the_latent_shape(tiny):
    x = torch.randn(2, *tiny.latent_shape())
    v = tiny.predict_velocity(x, torch.tensor([0.3, 0.9]), tiny.encode_prompts(PROMPTS))
    assert v.shape == x.shape


def test_lora_targets_name_real_modules(tiny):
    names = [n for n, _ in tiny.transformer.named_modules()]
    for target in tiny.lora_target_modules:
        assert any(n.endswith(target) for n in names), target


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone 'nope'; valid: tiny"):
        load_backbone("nope")
    assert "tiny" in BACKBONES


def test_empty_prompt_list_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="at least one prompt"):
        tiny.sample([], [])


def test_save_then_load_round_trips(tmp_path, tiny):
    path = tmp_path / "w.safetensors"
    tiny.save(path)
    again = TinyBackbone.load(path, text_encoder=tiny.text_encoder)
    for (k, a), b in zip(tiny.transformer.state_dict().items(), again.transformer.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_checkpoint_of_the_wrong_shape_is_a_clear_error(tmp_path, tiny):
    small = TinyBackbone(TinyConfig(dim=64), text_encoder=tiny.text_encoder)
    path = tmp_path / "small.safetensors"
    small.save(path)
    # claim the default architecture in the metadata while the tensors are the small model's
    import json
    from dataclasses import asdict

    from safetensors.torch import load_file, save_file

    save_file(load_file(path), str(path), metadata={"backbone": "tiny", "config": json.dumps(asdict(TinyConfig()))})
    with pytest.raises(ValueError, match=r"does not fit this backbone: shape of .* is \(\d+.*expected"):
        load_backbone("tiny", path)


def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_backbone("tiny", junk)
    with pytest.raises(FileNotFoundError, match="no tiny backbone weights"):
        load_backbone("tiny", tmp_path / "missing.safetensors")


def test_config_rejects_indivisible_sizes():
    with pytest.raises(ValueError, match="divisible"):
        TinyConfig(dim=130, heads=4)
    with pytest.raises(ValueError, match="height=30 is not divisible by its patch size 4"):
        TinyConfig(height=30)


def test_autocast_follows_vpo_autocast_and_names_the_valid_values(monkeypatch):
    from vpo.backbones.base import autocast_dtype

    try:
        native = torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
        for value, expected in (("fp32", None), ("bf16", torch.bfloat16), ("auto", native), ("", native)):
            monkeypatch.setenv("VPO_AUTOCAST", value)
            autocast_dtype.cache_clear()
            assert autocast_dtype("cpu") is expected, value
        monkeypatch.setenv("VPO_AUTOCAST", "fp8")
        autocast_dtype.cache_clear()
        with pytest.raises(ValueError, match="auto, bf16, fp32"):
            autocast_dtype("cpu")
    finally:
        autocast_dtype.cache_clear()


def test_tiny_samples_on_the_flow_shift_its_run_chose_and_keeps_it_in_the_checkpoint(tmp_path):
    """tiny's sampling schedule follows ``flow_shift`` (SD3's shift, 0 = none), and a checkpoint
    of a run with a shift is evaluated on that schedule, base and tuned alike (``vpo eval``)."""
    from safetensors.torch import save_file

    from vpo.backbones import load_for_checkpoint

    plain = load_backbone("tiny")
    assert plain.flow_shift == 0.0
    steps = 6
    unshifted = plain.make_scheduler(steps).sigmas[:-1]
    assert torch.allclose(unshifted.diff(), unshifted.diff()[0], atol=1e-6)  # evenly spaced: no shift
    shifted = load_backbone("tiny", flow_shift=3.0).make_scheduler(steps).sigmas[:-1]
    # SD3's k s / (1 + (k - 1) s) (diffusers spaces the shifted levels a little differently at the end)
    sd3 = 3 * unshifted / (1 + 2 * unshifted)
    assert torch.allclose(shifted[:-1], sd3[:-1], atol=3e-3)
    assert bool((shifted[1:] > unshifted[1:] + 0.005).all())  # more of the steps at high noise

    folder = tmp_path / "step_000001"
    folder.mkdir()
    save_file(
        {"x": torch.zeros(1)},
        str(folder / "adapter.safetensors"),
        {"config": '{"backbone": "tiny", "flow_shift": 3.0}'},
    )
    assert load_for_checkpoint("tiny", folder).flow_shift == 3.0
    assert load_for_checkpoint("tiny-i2v", folder).flow_shift == 0.0  # another backbone's run: its base
