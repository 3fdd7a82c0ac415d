"""The real backbones (wan, cogvideox, ltx) on CPU: tiny randomly initialised diffusers pipelines
(``vpo.backbones.testing``, sizes as in diffusers' own pipeline tests) saved with
``save_pretrained`` and loaded back through ``--model-dir`` / ``$VPO_MODELS_DIR`` — the path real
weights take."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from vpo.backbones import load_backbone
from vpo.backbones.testing import TINY_SIZES
from vpo.train.config import ConfigError, TrainConfig

REAL = ("wan", "cogvideox", "ltx")
PROMPTS = ["a red ball moving right", "a blue box falling"]


def size(name: str) -> dict:
    frames, height, width = TINY_SIZES[name]
    return {"frames": frames, "height": height, "width": width}


@pytest.fixture(scope="module")
def loaded(tiny_models):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_backbone(name, tiny_models / name, **size(name))
        return cache[name]

    get.folder = tiny_models
    return get


@pytest.mark.parametrize("name", REAL)
def test_seeded_sampling_is_deterministic_batch_independent_uint8(loaded, name):
    bb = loaded(name)
    frames, height, width = TINY_SIZES[name]
    videos = bb.sample(PROMPTS, [3, 4], steps=3, guidance=4.0)
    assert videos.dtype == torch.uint8 and videos.shape == (2, frames, height, width, 3)
    again = bb.sample(PROMPTS, [3, 4], steps=3, guidance=4.0)
    assert torch.equal(videos, again)
    alone = bb.sample(PROMPTS[1:], [4], steps=3, guidance=4.0)
    # bf16 kernels (CPUs with native bf16) may block a batch of 2 differently from 1: rounding, not change
    assert (alone[0].float() - videos[1].float()).abs().mean() < 1.0
    other_seed = bb.sample(PROMPTS[1:], [5], steps=3, guidance=4.0)
    assert (other_seed[0].float() - videos[1].float()).abs().mean() > 1.0


def test_a_missing_or_incomplete_folder_is_one_clear_line(tmp_path, tiny_models):
    with pytest.raises(FileNotFoundError, match=r"model_index.json, transformer/, vae/, text_encoder/, tokenizer/"):
        load_backbone("wan", tmp_path / "nothing")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"missing transformer/, vae/, text_encoder/, tokenizer/, scheduler/"):
        load_backbone("wan", broken)
    with pytest.raises(FileNotFoundError, match="holds a 'CogVideoXPipeline' pipeline, not 'WanPipeline'"):
        load_backbone("wan", tiny_models / "cogvideox")
    with pytest.raises(ValueError, match=r"frames must be 4 \* k \+ 1"):
        load_backbone("wan", tiny_models / "wan", frames=6, height=16, width=16)
    with pytest.raises(ValueError, match="height must be a multiple of 16"):
        load_backbone("wan", tiny_models / "wan", frames=5, height=24, width=16)
    with pytest.raises(ValueError, match="tiny: height is fixed at 32"):
        load_backbone("tiny", height=64)


def test_the_cli_refuses_a_missing_folder_with_exit_status_2_and_no_traceback(tmp_path):
    env = {**os.environ, "VPO_MODELS_DIR": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-m", "vpo", "train", "--backbone", "wan", "--steps", "2", "--out", str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        (
            f"vpo train: error: backbone 'wan' has no weights at {tmp_path / 'wan'}: expected a diffusers folder with "
            "model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/"
        )
    ]


def run_for(bb, tmp_path, **overrides):
    from vpo.train.runner import Run
    from vpo.train.sinks import JsonlSink

    cfg = TrainConfig.from_dict(
        {
            "backbone": bb.name,
            "prompts": "demo",
            "num_candidates": 2,
            "sampling_steps": 2,
            "heldout_every": 0,
            "out": str(tmp_path),
            **size(bb.name),
            **overrides,
        }
    )
    return Run(cfg, JsonlSink(tmp_path, 1, progress=False), backbone=bb)


def test_an_online_dpo_step_trains_only_the_policy_lora(tiny_models, tmp_path):
    from vpo.train.online_dpo import dpo_update

    bb = load_backbone("wan", tiny_models / "wan", **size("wan"))
    run = run_for(bb, tmp_path)
    before = {k: p.detach().clone() for k, p in bb.transformer.named_parameters()}
    frozen = [{k: p.detach().clone() for k, p in m.named_parameters()} for m in (bb.text_encoder, bb.vae)]
    _, latents = bb.sample(["a red ball moving right"] * 2, [0, 1], steps=2, return_latents=True)
    stats = dpo_update(run, latents[:1], latents[1:], ["a red ball moving right"], step=0)
    assert stats["dpo/grad_norm"] > 0
    changed = {k for k, p in bb.transformer.named_parameters() if not torch.equal(p, before[k])}
    policy = set(run.adapter_params("policy"))
    assert changed and changed <= policy  # every changed tensor is a policy LoRA tensor...
    assert any(".lora_B.policy." in k for k in changed)  # ...and B moved off zero
    for module, saved in zip((bb.text_encoder, bb.vae), frozen):
        assert all(torch.equal(p, saved[k]) for k, p in module.named_parameters())
    # the LoRA wraps every attention projection, to_out.0 included (to_out is a ModuleList in Wan)
    assert any(".to_out.0.lora_A.policy." in k for k in policy) and any(".to_q.lora_A.policy." in k for k in policy)


@pytest.mark.parametrize("name", ["cogvideox", "ltx"])
def test_a_dpo_update_trains_the_other_real_backbones_too(tiny_models, tmp_path, name):
    from vpo.train.online_dpo import dpo_update

    bb = load_backbone(name, tiny_models / name, **size(name))
    run = run_for(bb, tmp_path)
    _, latents = bb.sample(PROMPTS, [0, 1], steps=2, return_latents=True)
    policy = {k: p.detach().clone() for k, p in run.adapter_params("policy").items()}
    stats = dpo_update(run, latents[:1], latents[1:], PROMPTS[:1], step=0)
    assert math.isfinite(stats["dpo/loss"]) and stats["dpo/grad_norm"] > 0
    assert any(not torch.equal(p, policy[k]) for k, p in run.adapter_params("policy").items())


def test_gradient_checkpointing_saves_memory_without_changing_the_gradient(tiny_models, tmp_path):
    from vpo.train.online_dpo import dpo_update

    norms = []
    for switch in ("off", "on"):
        bb = load_backbone("wan", tiny_models / "wan", gradient_checkpointing=switch, vae_tiling=switch, **size("wan"))
        assert bb.transformer.is_gradient_checkpointing == (switch == "on") and bb.memory.vae_tiling == (switch == "on")
        run = run_for(bb, tmp_path / switch)
        _, latents = bb.sample(PROMPTS, [0, 1], steps=2, return_latents=True)
        norms.append(dpo_update(run, latents[:1], latents[1:], PROMPTS[:1], step=0)["dpo/grad_norm"])
    assert norms[0] == pytest.approx(norms[1], rel=1e-4)


def test_on_bf16_weights_the_adapters_train_in_fp32(tiny_models, tmp_path):
    from vpo.train.online_dpo import dpo_update

    bb = load_backbone("wan", tiny_models / "wan", weights_dtype="bf16", **size("wan"))  # CUDA's default
    assert bb.transformer.dtype == torch.bfloat16
    run = run_for(bb, tmp_path)
    assert {p.dtype for p in run.adapter_params("policy").values()} == {torch.float32}
    _, latents = bb.sample(PROMPTS, [0, 1], steps=2, return_latents=True)
    stats = dpo_update(run, latents[:1], latents[1:], PROMPTS[:1], step=0)
    assert math.isfinite(stats["dpo/loss"]) and stats["dpo/grad_norm"] > 0


def test_the_loss_on_a_pair_with_winner_equal_to_loser_is_log_2(loaded, tmp_path):
    from vpo.train.online_dpo import dpo_update

    bb = loaded("wan")
    bb.transformer.__dict__.pop("peft_config", None)  # a fresh pair of adapters below
    run = run_for(bb, tmp_path, noise_draws=3)
    _, latents = bb.sample(["a red ball moving right"], [7], steps=2, return_latents=True)
    stats = dpo_update(run, latents, latents.clone(), ["a red ball moving right"], step=0)
    assert stats["dpo/loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert stats["dpo/mse_w"] == stats["dpo/mse_l"]


def vpo(*args, env=None):
    from vpo.cli import main

    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        return main([str(a) for a in args])
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_train_save_resume_and_sample_a_checkpoint(tiny_models, tmp_path):
    from vpo.train.sinks import read_metrics

    common = [
        "--backbone",
        "wan",
        "--model-dir",
        tiny_models / "wan",
        "--frames",
        5,
        "--height",
        16,
        "--width",
        16,
        "--num-candidates",
        2,
        "--sampling-steps",
        2,
        "--heldout-every",
        0,
        "--checkpoint-every",
        1,
        "--prompts",
        "demo",
    ]
    assert vpo("train", *common, "--steps", 2, "--out", tmp_path / "straight") == 0
    # the same run stopped after its first step (as a worker that shuts down stops it), then resumed
    from vpo.train import train
    from vpo.train.sinks import JsonlSink

    cfg = TrainConfig.from_dict(
        {
            "backbone": "wan",
            "model_dir": str(tiny_models / "wan"),
            **size("wan"),
            "num_candidates": 2,
            "sampling_steps": 2,
            "heldout_every": 0,
            "checkpoint_every": 1,
            "prompts": "demo",
            "steps": 2,
            "out": str(tmp_path / "resumed"),
        }
    )
    stops = iter([False, True])
    sink = JsonlSink(cfg.out, 2, progress=False)
    train(cfg, sink, stop=lambda: next(stops))
    sink.close()
    assert (tmp_path / "resumed" / "checkpoints" / "latest").read_text() == "step_000001"
    assert vpo("train", *common, "--steps", 2, "--out", tmp_path / "resumed", "--resume") == 0
    keys = ("reward/mean", "dpo/loss", "dpo/mse_w", "dpo/grad_norm")
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [[m[k] for k in keys] for m in straight] == [[m[k] for k in keys] for m in resumed]
    checkpoint = tmp_path / "resumed" / "checkpoints" / "step_000002"
    config = (checkpoint / "config.toml").read_text()
    assert 'backbone = "wan"' in config and "lora_rank = 32" in config and "frames = 5" in config
    # vpo sample takes the backbone, its folder and the size from the checkpoint
    assert (
        vpo(
            "sample",
            "--checkpoint",
            checkpoint,
            "--prompt",
            "a red ball",
            "--seed",
            0,
            "--steps",
            2,
            "--out",
            tmp_path / "s",
        )
        == 0
    )
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert (manifest["backbone"], manifest["frames"], manifest["height"], manifest["width"]) == ("wan", 5, 16, 16)
    # evaluation loads the backbone as the checkpoint was trained (folder, size) too
    from vpo.eval import compare

    result = compare("wan", checkpoint, PROMPTS, steps=2)
    assert {"base", "checkpoint", "difference"} <= set(result)


def test_vpo_train_wan_from_model_dir_runs_end_to_end(tiny_models, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vpo",
            "train",
            "--backbone",
            "wan",
            "--model-dir",
            str(tiny_models / "wan"),
            "--steps",
            "2",
            "--frames",
            "5",
            "--height",
            "16",
            "--width",
            "16",
            "--num-candidates",
            "2",
            "--sampling-steps",
            "2",
            "--heldout-every",
            "0",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "last checkpoint" in r.stdout
    assert (tmp_path / "checkpoints" / "step_000002" / "adapter.safetensors").is_file()


def test_cogvideox_in_rectified_flow_terms_reproduces_its_ddim_scheduler(tiny_models):
    """Euler steps on (x_rf, sigma) through the backbone's velocity are CogVideoXDDIMScheduler's
    deterministic steps on (x, t) with the same transformer, to float64 precision."""
    from diffusers import CogVideoXDDIMScheduler

    bb = load_backbone("cogvideox", tiny_models / "cogvideox", **size("cogvideox"))
    bb.transformer.double()
    text = bb.encode_prompts(["a red ball moving right"]).double()
    steps = 4  # divides 1000: DDIM's next step is the next listed timestep
    ddim = CogVideoXDDIMScheduler.from_config(bb.ddim_config)
    ddim.set_timesteps(steps)
    x = torch.randn(1, *bb.latent_shape(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_rf, sigmas = x.clone(), bb.ddim_sigmas(steps)
    assert sigmas[0] == 1.0  # zero terminal SNR: sampling starts from pure noise, x_rf = x
    with torch.no_grad():
        for i, t in enumerate(ddim.timesteps):
            v = bb.transformer(
                hidden_states=x.permute(0, 2, 1, 3, 4),
                encoder_hidden_states=text,
                timestep=t.double().expand(1),
                return_dict=False,
            )[0].permute(0, 2, 1, 3, 4)
            x = ddim.step(v, t, x, eta=0.0).prev_sample
            velocity = bb.predict_velocity(x_rf, sigmas[i].expand(1), text)
            x_rf = x_rf + (sigmas[i + 1] - sigmas[i]) * velocity
            a, s = (c for c in __import__("vpo.backbones.cogvideox", fromlist=["x"]).vp_coefficients(sigmas[i + 1]))
            assert torch.allclose(x_rf * (a + s), x, atol=1e-12, rtol=0), (i, (x_rf * (a + s) - x).abs().max())
    assert torch.allclose(x_rf, x, atol=1e-12, rtol=0)  # sigma = 0: x_rf is the sample itself
    # the float32 schedule sampling uses is the same one
    assert torch.allclose(bb.make_scheduler(steps).sigmas.double(), sigmas, atol=1e-6)


def test_training_sigmas_follow_each_backbone(loaded):
    def g():
        return torch.Generator().manual_seed(0)

    wan = loaded("wan").training_sigmas(20000, g())
    assert wan.min() > 0 and wan.max() < 1
    assert wan.median() > 0.75  # logit-normal median 0.5, shifted by 5: 5 * 0.5 / (1 + 4 * 0.5) = 0.833
    cog = loaded("cogvideox")
    drawn = cog.training_sigmas(1000, g())
    assert torch.isin(drawn, cog.sigma_grid.float()).all()  # on its 1000-step grid, nowhere else
    ltx = loaded("ltx")
    assert ltx.training_sigmas(5, g()).shape == (5,)
    assert torch.allclose(ltx.make_scheduler(4).sigmas[0], torch.tensor(1.0))
    # LTX's shift grows with the latent sequence length: a larger video is sampled and trained noisier
    larger = load_backbone("ltx", loaded.folder / "ltx", frames=17, height=64, width=64)
    assert larger.mu > ltx.mu
    assert larger.make_scheduler(4).sigmas[1] > ltx.make_scheduler(4).sigmas[1]
    assert larger.training_sigmas(1000, g()).mean() > ltx.training_sigmas(1000, g()).mean()


def test_config_takes_the_backbones_defaults_and_checks_its_new_fields():
    wan = TrainConfig.from_dict({"backbone": "wan"})
    assert (wan.lora_rank, wan.sampling_steps, wan.guidance) == (32, 30, 5.0)
    assert TrainConfig.from_dict({"backbone": "wan", "lora_rank": 4}).lora_rank == 4  # the user's value wins
    assert TrainConfig.from_dict({}).lora_rank == TrainConfig().lora_rank  # tiny keeps the global defaults
    with pytest.raises(ConfigError, match="unknown vae_tiling 'maybe'; valid: auto, on, off"):
        TrainConfig(vae_tiling="maybe")
    with pytest.raises(ConfigError, match="frames must be >= 0"):
        TrainConfig(frames=-1)
    # CogVideoX samples on the VP schedule it was trained on: a flow shift is refused before loading anything
    with pytest.raises(ConfigError, match="cogvideox has no flow shift") as e:
        TrainConfig(backbone="cogvideox", flow_shift=3.0)
    assert e.value.field == "flow_shift" and TrainConfig(backbone="cogvideox", flow_shift=0.0).flow_shift == 0
    from vpo.backbones import load_for_checkpoint
    from webapp.experiments.forms import EvaluationForm

    with pytest.raises(ValueError, match="cogvideox has no flow shift"):
        load_for_checkpoint("cogvideox", None, flow_shift=2.0)  # vpo eval --flow-shift 2 on a cogvideox run
    good = {"checkpoint": "step_000001", "prompts": "demo", "suite": "builtin", "sampling_steps": 50, "guidance": 6}
    form = EvaluationForm({**good, "flow_shift": 2}, checkpoints=["step_000001"], backbone="cogvideox")
    assert not form.is_valid() and "cogvideox has no flow shift" in form.errors["flow_shift"][0]
    assert EvaluationForm({**good, "flow_shift": 0}, checkpoints=["step_000001"], backbone="cogvideox").is_valid()


def test_the_registry_and_the_weights_check_import_no_torch(tmp_path):
    code = (
        "import sys, vpo.backbones, vpo.backbones.real, vpo.models, vpo.train.config;"
        "vpo.models.report(); assert 'torch' not in sys.modules and 'diffusers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_vpo_models_lists_every_real_backbone_as_missing_with_its_path(tmp_path, tiny_models, capsys):
    assert vpo("models", env={"VPO_MODELS_DIR": str(tmp_path)}) == 0
    out = capsys.readouterr().out
    for name in REAL:
        assert f"backbone 'wan' has no weights at {tmp_path / 'wan'}" in out
        line = next(row for row in out.splitlines() if row.split()[:2] == ["backbone", name])
        assert line.split()[2] == "no" and str(tmp_path / name) in line
    assert vpo("models", "--json", env={"VPO_MODELS_DIR": str(tiny_models)}) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert all(rows[name]["ok"] and rows[name]["status"] == "present" for name in REAL)
    assert rows["videoscore"]["kind"] == "reward"


def test_the_gpu_benchmark_dry_run_prints_its_table_on_cpu():
    from conftest import ROOT

    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("tiny random Wan pipeline (dry run), 16x16, N = 2 x 2 steps with CFG")
    assert lines[1].split(" | ")[0].strip() == "row" and "peak_gb" in lines[1]
    result = json.loads(lines[-1])
    assert [(r["row"], r["frames"], r["depth"]) for r in result["rows"]] == [
        ("online-dpo", 5, 0),
        ("refl", 5, 1),
        ("refl", 5, 2),
        ("refl", 5, 4),
        ("refl", 9, 1),
        ("refl", 9, 2),
        ("refl", 9, 4),
        ("online-dpo", 9, 0),
    ]
    assert all(r["status"] == "ok" for r in result["rows"]), result["rows"]
    dpo = result["rows"][0]
    assert dpo["sample_s"] > 0 and dpo["decode_s"] > 0 and dpo["update_s"] > 0 and dpo["videos_per_s"] > 0
