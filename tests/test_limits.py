"""Upper bounds on the training config, and clean errors for bad TOML and damaged checkpoints: a
run that would not fit is refused before it is queued, at the CLI (one line, exit 2) and in the
web form (next to the field); a damaged or foreign checkpoint is a message, never a traceback or
code run while loading it."""

import shutil

import pytest
import torch
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from test_cli import vpo

from vpo.backbones import SIZING
from vpo.train.checkpoints import load_state
from vpo.train.config import LIMITS, ConfigError, TrainConfig

TOO_BIG = {
    "num_candidates": 10_000,
    "lora_rank": 100_000,
    "prompts_per_step": 100_000,
    "noise_draws": 100_000,
    "sampling_steps": 100_000,
    "steps": 10**22,
    "heldout_count": 100_000,
}


@pytest.mark.parametrize("name", sorted(TOO_BIG))
def test_every_resource_sizing_field_has_an_upper_bound_named_in_the_error(name, monkeypatch):
    monkeypatch.setenv("VPO_WORKER_MEMORY_MB", str(10**7))  # these bounds hold whatever the memory
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict({name: TOO_BIG[name]})
    assert e.value.field == name and f"{name} must be <= " in str(e.value)
    bound = LIMITS.get(name) or SIZING["tiny"].lora_width
    assert f"<= {bound:,}" in str(e.value)
    TrainConfig.from_dict({name: bound})  # the bound itself is allowed


def test_the_lora_rank_bound_is_the_backbones_layer_width():
    from vpo.backbones.tiny import TinyConfig

    assert SIZING["tiny"].lora_width == TinyConfig().dim


def test_a_run_that_would_not_fit_in_the_workers_memory_is_refused_naming_a_field_and_its_bound(monkeypatch):
    monkeypatch.setenv("VPO_WORKER_MEMORY_MB", "4000")
    assert TrainConfig().peak_memory_mb() < 4000  # the defaults fit a small worker
    with pytest.raises(ConfigError) as e:
        TrainConfig(num_candidates=64, prompts_per_step=64)  # 4,096 videos sampled at once
    most = int(str(e.value).rsplit("must be <= ", 1)[1].split()[0].replace(",", ""))
    assert e.value.field in ("num_candidates", "prompts_per_step") and "VPO_WORKER_MEMORY_MB" in str(e.value)
    fits = TrainConfig(**{"num_candidates": 64, "prompts_per_step": 64, e.value.field: most})  # the bound it names fits
    assert fits.peak_memory_mb() <= 4000
    with pytest.raises(ConfigError, match="refl_depth must be <= "):
        TrainConfig(algorithm="refl", sampling_steps=64, refl_depth=64)
    monkeypatch.setenv("VPO_WORKER_MEMORY_MB", "100000")
    TrainConfig(num_candidates=64, prompts_per_step=64)  # a bigger worker takes it


def test_the_cli_refuses_a_run_that_would_not_fit_in_one_line(tmp_path):
    r = vpo("train", "--num-candidates", "10000", "--out", str(tmp_path / "r"))
    assert one_line_error(r)
    assert "num_candidates must be <= 64, got 10,000" in r.stderr
    toml = tmp_path / "big.toml"
    toml.write_text("steps = 10000000000000000\n")
    r = vpo("train", "--config", str(toml), "--print-config")
    assert r.returncode == 2 and "steps must be <= 100,000" in r.stderr and not (tmp_path / "r").exists()


def test_deeply_nested_or_broken_toml_is_one_line_and_exit_2(tmp_path):
    for text in (
        "a = " + "[" * 20_000 + "]" * 20_000,
        "steps = " + "{a = " * 20_000 + "1" + "}" * 20_000,
        "steps = [[[1]]]",
        "steps = ",
        "\x00",
    ):
        toml = tmp_path / "c.toml"
        toml.write_text(text)
        r = vpo("train", "--config", str(toml), "--print-config")
        assert one_line_error(r), (text[:20], r.stderr)
        assert str(toml) in r.stderr or "steps must be int" in r.stderr


def test_a_damaged_checkpoint_is_one_line_and_exit_2(tmp_path, quick_checkpoint):
    good = quick_checkpoint(tmp_path / "run")
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    data = (bad / "adapter.safetensors").read_bytes()
    (bad / "adapter.safetensors").write_bytes(data[:8] + b"{garbage" + data[16:])  # the header is damaged
    for args in (
        (
            "sample",
            "--prompt",
            "a red ball",
            "--out",
            str(tmp_path / "o"),
            "--seed",
            "0",
            "--steps",
            "2",
            "--checkpoint",
            str(bad),
        ),
        ("eval", "--checkpoint", str(bad), "--prompts", "demo", "--steps", "2"),
    ):
        r = vpo(*args)
        assert one_line_error(r), r.stderr
        assert "adapter.safetensors is not a readable safetensors file" in r.stderr
    (bad / "adapter.safetensors").write_bytes(data[: len(data) // 2])  # cut short
    r = vpo("sample", "--prompt", "a red ball", "--out", str(tmp_path / "o"), "--seed", "0", "--checkpoint", str(bad))
    assert one_line_error(r) and "not a readable safetensors file" in r.stderr


def one_line_error(r) -> bool:
    """Exit 2 with one ``vpo CMD: error: ...`` line, last, and no traceback (progress bars may come
    before it on stderr)."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("vpo ")]
    return r.returncode == 2 and len(ours) == 1 and lines[-1] == ours[0] and "Traceback" not in r.stderr


class Payload:
    """What a malicious checkpoint could carry: unpickling it with weights_only=False runs code."""

    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_resume_loads_state_with_weights_only_and_refuses_other_objects(tmp_path, quick_checkpoint):
    good = quick_checkpoint(tmp_path / "run")
    state = load_state(good / "state.pt")  # a real checkpoint's state loads (NumPy RNG state included)
    assert state["step"] == 1 and state["numpy_rng"][0] == "MT19937"
    torch.save({**state, "extra": Payload()}, good / "state.pt")
    with pytest.raises(ValueError, match=r"state\.pt is not a readable checkpoint state"):
        load_state(good / "state.pt")
    (good / "state.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"state\.pt is not a readable checkpoint state"):
        load_state(good / "state.pt")
    cfg = TrainConfig.from_toml(good / "config.toml")
    r = vpo("train", "--config", str(good / "config.toml"), "--resume", "--steps", str(cfg.steps))
    assert one_line_error(r) and "state.pt is not a readable checkpoint state" in r.stderr, r.stderr


def test_the_web_form_refuses_a_run_that_would_not_fit_next_to_the_field(db):
    client = Client()
    client.force_login(get_user_model().objects.create_user("alice"))
    page = client.get(reverse("experiments:new"))
    data = {name: field.initial for name, field in page.context["form"].fields.items() if field.initial is not None}
    data.update(name="too big", num_candidates=10_000)
    r = client.post(reverse("experiments:new"), data)
    assert r.status_code == 400 and "Candidates per prompt (N) must be &lt;= 64" in r.content.decode()
    assert r.context["form"].errors["num_candidates"]
    from webapp.experiments.models import Experiment

    assert not Experiment.objects.exists()  # nothing queued


def test_every_backbone_has_sizing_and_real_ones_are_bounded_without_memory_figures():
    from vpo.backbones import ALL_BACKBONES

    assert set(SIZING) == set(ALL_BACKBONES)  # every backbone a config accepts, image-to-video ones too
    cfg = TrainConfig.from_dict({"backbone": "wan", "lora_rank": 32, "num_candidates": 6})
    assert cfg.lora_rank == 32  # no memory figures yet: only LIMITS and the LoRA width apply
    with pytest.raises(ConfigError, match="lora_rank must be <= 1536"):
        TrainConfig.from_dict({"backbone": "wan", "lora_rank": 2048})
