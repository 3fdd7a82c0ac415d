import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import as_if_pretrained

from vpo.backbones.tiny import MiniLM, TinyBackbone, TinyConfig
from vpo.train import ALGORITHMS, train
from vpo.train.checkpoints import POLICY, REF, load_policy
from vpo.train.config import ConfigError, TrainConfig
from vpo.train.loss import flow_dpo_loss, per_video_mse
from vpo.train.online_dpo import dpo_update
from vpo.train.runner import Run, TrainingDiverged
from vpo.train.sinks import JsonlSink, read_metrics


@pytest.fixture(scope="module")
def text_encoder():
    return MiniLM()


@pytest.fixture
def small(text_encoder):
    """A small random backbone of the real classes: fast, and fresh for each test (adapters)."""

    def make():
        torch.manual_seed(0)
        return as_if_pretrained(
            TinyBackbone(TinyConfig(dim=32, heads=2, depth=1, mlp_ratio=2), text_encoder=text_encoder).eval()
        )

    return make


def cfg_for(tmp_path, **kw):
    base = dict(
        steps=2,
        num_candidates=3,
        sampling_steps=3,
        heldout_count=2,
        heldout_every=0,
        checkpoint_every=1,
        tie_tolerance=0.0,
        lr=1e-2,
        out=str(tmp_path / "run"),
    )
    return TrainConfig.from_dict({**base, **kw})


def run_train(cfg, backbone, stop=None, resume=False):
    sink = JsonlSink(cfg.out, cfg.steps, progress=False)
    try:
        return train(cfg, sink, stop=stop, resume=resume, backbone=backbone)
    finally:
        sink.close()


def test_the_loss_equals_a_hand_computed_value():
    loss, stats = flow_dpo_loss(
        torch.tensor([0.5]), torch.tensor([0.7]), torch.tensor([0.6]), torch.tensor([0.6]), beta=10
    )
    # bracket = (0.5 - 0.6) - (0.7 - 0.6) = -0.2; L = -log sigmoid(-10 / 2 * -0.2) = log(1 + e^-1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    assert stats["dpo/implicit_acc"] == 1.0
    loss2, stats2 = flow_dpo_loss(
        torch.tensor([0.7]), torch.tensor([0.5]), torch.tensor([0.6]), torch.tensor([0.6]), beta=10
    )
    assert loss2.item() == pytest.approx(math.log(1 + math.exp(1)), rel=1e-6) and stats2["dpo/implicit_acc"] == 0.0
    assert per_video_mse(torch.ones(2, 3, 4), torch.zeros(2, 3, 4)).tolist() == [1.0, 1.0]


def test_the_reference_is_the_base_before_updates_and_the_policy_after_a_curriculum_update(tmp_path, small):
    bb = small()
    x = torch.randn(2, *bb.latent_shape())
    sigma, text = torch.tensor([0.3, 0.8]), bb.encode_prompts(["a red ball moving left", "a blue box rising"])
    with torch.no_grad():
        base = bb.predict_velocity(x, sigma, text)
    cfg = cfg_for(tmp_path, steps=1)
    run = Run(cfg, JsonlSink(cfg.out, 1, progress=False), backbone=bb)
    with torch.no_grad(), run.reference():
        assert torch.allclose(bb.predict_velocity(x, sigma, text), base, atol=1e-6)
    with torch.no_grad():  # move the policy away from the base
        for p in run.adapter_params(POLICY).values():
            p.add_(0.05 * torch.randn_like(p))
        policy = bb.predict_velocity(x, sigma, text)
    assert not torch.allclose(policy, base, atol=1e-4)
    run.update_reference()
    with torch.no_grad(), run.reference():
        assert torch.allclose(bb.predict_velocity(x, sigma, text), policy, atol=1e-6)
    assert all(p.requires_grad for p in run.adapter_params(POLICY).values())
    assert not any(p.requires_grad for p in run.adapter_params(REF).values())


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_a_step_changes_the_adapter_and_leaves_the_base_untouched(tmp_path, small, algorithm):
    bb = small()
    base_before = {k: v.clone() for k, v in bb.transformer.state_dict().items()}
    cfg = cfg_for(tmp_path, algorithm=algorithm, steps=1, prompts="demo")
    run_train(cfg, bb)
    after = dict(bb.transformer.named_parameters())
    policy = {k: v for k, v in after.items() if f".{POLICY}." in k}
    assert any(v.abs().sum() > 0 for k, v in policy.items() if "lora_B" in k)  # B starts at zero
    base_after = {k.replace(".base_layer", ""): v for k, v in bb.transformer.state_dict().items() if "lora_" not in k}
    assert base_after.keys() == base_before.keys()
    for k, v in base_before.items():
        assert torch.equal(v, base_after[k]), k
    rows = read_metrics(cfg.out)
    assert rows[-1]["step"] == 1 and "perf/step_s" in rows[-1]
    assert any(k.startswith("reward/") for k in rows[-1])  # offline-dpo logs the fixed pairs' margin only


@pytest.mark.parametrize("draws", [1, 3])
def test_every_noise_draw_is_shared_by_winner_and_loser(tmp_path, small, draws):
    """With winner == loser, each draw's bracket is exactly 0 only if the draw's sigma and eps are
    the same for both: the loss is then log 2 whatever the number of draws."""
    sink = JsonlSink(tmp_path / "m", 1, progress=False)
    run = Run(cfg_for(tmp_path, noise_draws=draws), sink, backbone=small())
    run.step = 0
    x = torch.randn(2, *run.backbone.latent_shape())
    other = torch.randn(2, *run.backbone.latent_shape())
    stats = dpo_update(run, x, x.clone(), ["a red ball moving left", "a blue box rising"], step=0)
    assert stats["dpo/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert stats["dpo/mse_w"] == stats["dpo/mse_l"]
    # a policy that differs from the reference and winner != loser: the bracket is no longer 0 (while
    # the policy equals the reference, as at the start, the loss is log 2 for any pair)
    with torch.no_grad():
        for p in run.adapter_params(POLICY).values():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    assert dpo_update(run, x, other, ["a red ball moving left", "a blue box rising"], step=1)[
        "dpo/loss"
    ] != pytest.approx(math.log(2), abs=1e-6)
    sink.close()


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_loss_is_log_2_for_any_pair_while_the_policy_equals_the_reference(tmp_path, small, monkeypatch, dtype):
    """The reference's velocities are computed outside autograd, the policy's inside: the reference
    must still take the policy's arithmetic (``training_arithmetic``), not sampling's shortcuts
    (LoRA folded into its weight, prepacked kernels), or in bf16 their rounding leaves noise in the
    DPO bracket where it is exactly 0 (and the implicit accuracy at the start is a coin toss)."""
    # either dtype, whatever this CPU would pick
    monkeypatch.setattr("vpo.backbones.base.autocast_dtype", lambda device_type: dtype)
    sink = JsonlSink(tmp_path / "m", 1, progress=False)
    run = Run(cfg_for(tmp_path), sink, backbone=small())
    run.step = 0
    with torch.no_grad():  # a policy moved off zero, then copied to the reference (a curriculum update)
        for p in run.adapter_params(POLICY).values():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    run.update_reference()
    g = torch.Generator().manual_seed(1)
    x, other = (torch.randn(2, *run.backbone.latent_shape(), generator=g) for _ in range(2))
    stats = dpo_update(run, x, other, ["a red ball moving left", "a blue box rising"], step=0)
    assert stats["dpo/loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert stats["dpo/implicit_acc"] == 0.0
    sink.close()


def test_online_dpo_logs_namespaced_metrics_and_held_out_measures(tmp_path, small):
    cfg = cfg_for(tmp_path, steps=2, heldout_every=2, ref_update_every=1)
    run_train(cfg, small())
    row = read_metrics(cfg.out)[-1]
    for key in (
        "reward/mean",
        "reward/max",
        "reward/min",
        "reward/margin",
        "dpo/loss",
        "dpo/implicit_acc",
        "dpo/mse_w",
        "dpo/mse_l",
        "dpo/mse_ref_w",
        "dpo/mse_ref_l",
        "perf/step_s",
        "perf/peak_mem_mb",
        "heldout/dynamic",
        "heldout/alignment",
        "heldout/temporal",
        "heldout/presence",
        "heldout/motion_extent",
        "train/ref_updated",
    ):
        assert key in row, key
    samples = json.loads((tmp_path / "run" / "samples" / "step_000002_candidates" / "samples.json").read_text())
    assert sorted(v["label"] for v in samples["videos"]) == ["", "loser", "winner"]


def test_resume_reproduces_an_uninterrupted_run(tmp_path, small):
    straight = cfg_for(tmp_path / "a", steps=4, checkpoint_every=2)
    run_train(straight, small())
    split = cfg_for(tmp_path / "b", steps=4, checkpoint_every=2)
    calls = iter(range(100))
    run_train(split, small(), stop=lambda: next(calls) >= 2)  # stops before step 3, saving step 2
    assert (tmp_path / "b" / "run" / "checkpoints" / "latest").read_text() == "step_000002"
    run_train(split, small(), resume=True)
    a, b = read_metrics(straight.out), read_metrics(split.out)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for key in ("reward/mean", "reward/margin", "dpo/loss", "dpo/mse_w", "dpo/mse_ref_l"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), (ra["step"], key)


def test_a_run_resumed_with_more_steps_in_a_moved_folder_trains_what_one_longer_run_trains(tmp_path, small):
    """Train 2 steps, move the folder, go on to 4 (checking and saving more often): the same steps as
    4 uninterrupted ones. Fewer steps than trained, or another trajectory setting, is refused."""
    straight = cfg_for(tmp_path / "a", steps=4, checkpoint_every=2)
    run_train(straight, small())
    run_train(cfg_for(tmp_path / "b", steps=2, checkpoint_every=2), small())
    (tmp_path / "b").rename(tmp_path / "moved")
    longer = cfg_for(tmp_path / "moved", steps=4, checkpoint_every=1, heldout_every=2)
    last = run_train(longer, small(), resume=True)
    assert last.name == "step_000004" and (tmp_path / "moved" / "run" / "checkpoints" / "step_000003").is_dir()
    a, b = read_metrics(straight.out), read_metrics(longer.out)
    assert [r["step"] for r in b] == [1, 2, 3, 4] and "heldout/temporal" in b[-1]
    for ra, rb in zip(a, b):
        for key in ("reward/mean", "reward/margin", "dpo/loss", "dpo/mse_w", "dpo/mse_ref_l"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), (ra["step"], key)
    with pytest.raises(ConfigError, match="with steps = 3: it has trained 4 steps already") as e:
        run_train(cfg_for(tmp_path / "moved", steps=3), small(), resume=True)
    assert e.value.field == "steps"
    with pytest.raises(ValueError, match=r"other settings \{'beta': \(.*\)\} \(saved, asked\); a resumed run may"):
        run_train(cfg_for(tmp_path / "moved", steps=6, beta=123.0), small(), resume=True)


# the shipped model broken on purpose: one step at lr 0.5 makes its held-out videos fall apart over time,
# and the alarm on the held-out temporal score stops the run at step 1 of 3 (also tests/test_web_continue.py).
# Measured on an AMX Xeon in bf16 with three variants of the sampling arithmetic: temporal 0.948 -> 0.79-0.82
# after the step, 0.13-0.16 down, each time; presence, watched before, went up or down with the rounding
# (0.75 -> 0.5 or 1.0), since the step's pairs depend on it.
ALARMED_RUN = {
    "steps": 3,
    "num_candidates": 2,
    "sampling_steps": 6,
    "flow_shift": 3.0,
    "heldout_count": 4,
    "heldout_every": 1,
    "checkpoint_every": 1,
    "tie_tolerance": 0.0,
    "lr": 0.5,
    "stop_heldout": "temporal",
    "stop_drop": 0.05,
}


def test_the_held_out_alarm_stops_a_run_whose_videos_fall_apart_and_names_the_checkpoint_before(tmp_path):
    """The shipped model, broken on purpose by one step at lr 0.5: its held-out videos fall apart over
    time, so ``stop_heldout = temporal`` stops the run at the first check after the fall."""
    cfg = TrainConfig.from_dict({**ALARMED_RUN, "out": str(tmp_path / "run")})
    sink = JsonlSink(cfg.out, cfg.steps, progress=False)
    try:
        last = train(cfg, sink)
    finally:
        sink.close()
    metrics = read_metrics(cfg.out)
    base, after = metrics[0]["heldout/temporal"], metrics[-1]["heldout/temporal"]
    assert [m["step"] for m in metrics] == [0, 1] and last.name == "step_000001"
    assert base >= 0.5 and after < base - 0.05
    assert sink.stopped_reason.startswith("held-out alarm at step 1 of 3: temporal")
    assert f"below the base's {base:.4f}" in sink.stopped_reason and sink.stopped_reason.endswith(
        "none: the base model"
    )
    assert (tmp_path / "run" / "stopped.txt").read_text().strip() == sink.stopped_reason
    # the alarm may be switched off to go on (what a resumed run may change: RESUME_MAY_CHANGE)
    sink = JsonlSink(cfg.out, cfg.steps, progress=False)
    try:
        last = train(replace(cfg, stop_heldout="none", steps=2), sink, resume=True)
    finally:
        sink.close()
    assert last.name == "step_000002" and not sink.stopped_reason
    for bad, field in (
        ({"stop_heldout": "presence", "heldout_every": 0}, "stop_heldout"),
        ({"stop_heldout": "happiness"}, "stop_heldout"),
        ({"stop_drop": 0.0}, "stop_drop"),
        ({"stop_drop": float("nan")}, "stop_drop"),
    ):
        with pytest.raises(ConfigError) as e:
            TrainConfig.from_dict(bad)
        assert e.value.field == field, bad


def test_a_nan_reward_stops_with_a_clear_error_and_the_last_checkpoint_loads(tmp_path, small):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball moving left\n")
    cfg = cfg_for(tmp_path, steps=4, dimension="alignment", prompts=str(prompts))
    calls = iter(range(100))
    run_train(cfg, small(), stop=lambda: next(calls) >= 2)
    prompts.write_text("a photo of a cat\n")  # alignment is unavailable (NaN) for this prompt
    with pytest.raises(
        TrainingDiverged,
        match=r"step 3: reward metrics/alignment is nan for prompt 'a photo of a cat'"
        r".*last good checkpoint is .*step_000002",
    ):
        run_train(cfg, small(), resume=True)
    bb = small()
    assert load_policy(bb, tmp_path / "run" / "checkpoints" / "step_000002")["dimension"] == "alignment"


def test_a_misspelt_config_field_fails_at_creation():
    with pytest.raises(ValueError, match=r"unknown config field.*'num_candidate'.*valid:.*num_candidates"):
        TrainConfig.from_dict({"num_candidate": 6})
    with pytest.raises(
        ValueError,
        match="unknown dimension 'speed' for reward source 'metrics'; "
        "valid: visual, temporal, dynamic, alignment, global",
    ):
        TrainConfig(dimension="speed")
    with pytest.raises(
        ValueError,
        match="unknown dimension 'dynamic' for reward source 'image-metrics'; valid: visual, temporal, global",
    ):
        TrainConfig(reward="image-metrics", dimension="dynamic")
    with pytest.raises(ValueError, match="refl needs a differentiable reward source; 'videoscore' is not"):
        TrainConfig(algorithm="refl", reward="videoscore")
    with pytest.raises(
        ValueError,
        match=r"unknown dimension 'global' \(refl needs a differentiable one of 'metrics'\); valid: visual, temporal",
    ):
        TrainConfig(algorithm="refl", dimension="global")
    with pytest.raises(ValueError, match="unknown algorithm 'ppo'; valid: online-dpo, offline-dpo, refl"):
        TrainConfig(algorithm="ppo")
    with pytest.raises(ValueError, match="num_candidates must be >= 2"):
        TrainConfig(num_candidates=1)
    with pytest.raises(ValueError, match="steps must be int, got 'many'"):
        TrainConfig.from_dict({"steps": "many"})


def test_config_round_trips_through_toml(tmp_path):
    cfg = TrainConfig(num_candidates=4, beta=50.0, prompts='my "quoted" prompts.txt')
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    assert TrainConfig.from_toml(path) == cfg


def test_checkpoints_store_the_config(tmp_path, small):
    cfg = cfg_for(tmp_path, steps=1)
    last = run_train(cfg, small())
    state = torch.load(last / "state.pt", weights_only=False)
    assert state["config"] == cfg.to_dict() and state["step"] == 1
    assert TrainConfig.from_toml(last / "config.toml") == cfg


def guarded_step(tmp_path, small, guard: str):
    """One step with ``reward_guard = guard``: its candidates as logged (samples.json entries), their
    frames and prompts, and their unguarded temporal scores."""
    from vpo.rewards import load_reward

    run_train(cfg_for(tmp_path, steps=1, heldout_every=1, reward_guard=guard), small())
    folder = tmp_path / "run" / "samples" / "step_000001_candidates"
    videos = json.loads((folder / "samples.json").read_text())["videos"]
    frames = np.stack([np.load(folder / v["frames"]) for v in videos])
    prompts = [v["prompt"] for v in videos]
    return videos, frames, prompts, load_reward("metrics").score(torch.from_numpy(frames), prompts).scores["temporal"]


def test_the_subject_guard_scales_the_candidates_scores(tmp_path, small):
    from vpo.rewards.guard import subject_factor

    with pytest.raises(ConfigError, match="refl") as e:
        cfg_for(tmp_path, algorithm="refl", reward_guard="subject")
    assert e.value.field == "reward_guard"
    with pytest.raises(ConfigError) as e:
        cfg_for(tmp_path, reward_guard="everything")
    assert e.value.field == "reward_guard" and "valid: none, subject, subject-veto" in str(e.value)
    lake = tmp_path / "lake.txt"
    lake.write_text("a red ball moving left\na calm lake at dawn\n")
    with pytest.raises(ConfigError, match="calm lake") as e:
        run_train(cfg_for(tmp_path, prompts=str(lake), reward_guard="subject"), small())
    assert e.value.field == "reward_guard"

    videos, frames, prompts, plain = guarded_step(tmp_path, small, "subject")
    factors = torch.tensor([subject_factor(f, p) for f, p in zip(frames, prompts)])
    assert [v["score"] for v in videos] == pytest.approx((plain * factors).tolist(), abs=1e-6)


def test_a_vetoed_candidate_reports_its_own_reward_and_is_counted_and_labelled(tmp_path, small):
    """The subject veto shifts a candidate below the others to rank it; the run's reward metrics, its
    margin and the candidates panel still show the source's scores, and say which were vetoed."""
    from vpo.rewards.guard import VETO_BELOW, subject_factor

    videos, frames, prompts, plain = guarded_step(tmp_path, small, "subject-veto")
    vetoed = [subject_factor(f, p) < VETO_BELOW for f, p in zip(frames, prompts)]
    assert any(vetoed)  # a random model's candidates lose their subject
    assert [v["score"] for v in videos] == pytest.approx(plain.tolist(), abs=1e-6)
    assert [("vetoed" in v["label"]) for v in videos] == vetoed
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step = next(m for m in metrics if m.get("step") == 1 and "reward/mean" in m)
    assert step["reward/mean"] == pytest.approx(plain.mean().item(), abs=1e-6)
    assert step["reward/min"] == pytest.approx(plain.min().item(), abs=1e-6)
    assert step["guard/vetoed"] == sum(vetoed)
    winner = next(v for v in videos if v["label"].startswith("winner"))
    loser = next(v for v in videos if v["label"].startswith("loser"))
    assert step["reward/margin"] == pytest.approx(winner["score"] - loser["score"], abs=1e-6)


class PhaseLog(JsonlSink):
    """The CLI's sink, also keeping every phase it was told."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.phases = []

    def phase(self, step, name, done=None, total=None):
        super().phase(step, name, done, total)
        self.phases.append((step, name, done, total))


@pytest.mark.parametrize("algorithm", ["online-dpo", "offline-dpo"])
def test_the_loop_tells_its_sink_what_each_step_is_doing(tmp_path, small, algorithm):
    from vpo.train import keys

    cfg = cfg_for(
        tmp_path, algorithm=algorithm, steps=2, heldout_every=2, checkpoint_every=2, noise_draws=2, prompts="demo"
    )
    sink = PhaseLog(cfg.out, cfg.steps, progress=False)
    try:
        train(cfg, sink, backbone=small())
    finally:
        sink.close()
    names = [name for _, name, _, _ in sink.phases]
    assert names[0] == keys.PHASE_LOADING and sink.phases[0][0] == 0
    # the base model's held-out check before step 1, denoising step by step
    base = [p for p in sink.phases if p[1] == keys.PHASE_HELDOUT and p[0] == 0]
    assert [(d, t) for _, _, d, t in base] == [(k, 3) for k in range(1, 4)]
    step_1 = [(name, done, total) for step, name, done, total in sink.phases if step == 1]
    if algorithm == "online-dpo":  # sample (3 denoising steps), score, update (2 noise draws)
        assert step_1 == [
            *[(keys.PHASE_SAMPLING, k, 3) for k in range(1, 4)],
            (keys.PHASE_SCORING, None, None),
            (keys.PHASE_UPDATING, 0, 2),
            (keys.PHASE_UPDATING, 1, 2),
        ]
    else:  # the fixed pair set was built before step 1: only the updates
        assert step_1 == [(keys.PHASE_UPDATING, 0, 2), (keys.PHASE_UPDATING, 1, 2)]
        assert keys.PHASE_PAIRS in names
    step_2 = [name for step, name, _, _ in sink.phases if step == 2]
    assert step_2[-4:-1] == [keys.PHASE_HELDOUT] * 3 and step_2[-1] == keys.PHASE_CHECKPOINT
