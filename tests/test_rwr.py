"""Flow-RWR (``online-rwr``): the loss against hand-computed values, equal rewards = plain flow
matching (loss and gradient, in the loss and in a real update), the config field, and a short real
run that logs its metrics."""

import json
import math

import pytest
import torch
from conftest import as_if_pretrained

from vpo.backbones.tiny import MiniLM, TinyBackbone, TinyConfig
from vpo.train import train
from vpo.train.config import ConfigError, TrainConfig
from vpo.train.loss import flow_rwr_loss, per_video_mse, rwr_weights
from vpo.train.online_rwr import rwr_update
from vpo.train.runner import Run
from vpo.train.sinks import JsonlSink, read_metrics


def test_the_loss_equals_a_hand_computed_value():
    # prompt 1: rewards 0 and ln 3 at tau = 1 -> weights 1/4, 3/4 -> 4/4 + 3 * 8/4 = 7
    # prompt 2: equal rewards -> weights 1/2, 1/2 -> (1 + 3) / 2 = 2; the loss is the mean over prompts
    mse = torch.tensor([[4.0, 8.0], [1.0, 3.0]])
    rewards = torch.tensor([[0.0, math.log(3)], [0.5, 0.5]])
    loss, stats = flow_rwr_loss(mse, rewards, temperature=1.0)
    assert loss.item() == pytest.approx((7 + 2) / 2, rel=1e-6)
    assert stats["rwr/mse"] == pytest.approx(4.0)
    assert stats["rwr/weight_max"] == pytest.approx((0.75 + 0.5) / 2)
    # effective sample size 1 / sum w^2: 1 / (1/16 + 9/16) = 1.6 and 2
    assert stats["rwr/ess"] == pytest.approx((1.6 + 2) / 2)
    # the temperature divides the rewards: 100 times smaller rewards at tau = 0.01, the same weights
    again, _ = flow_rwr_loss(mse, rewards / 100, temperature=0.01)
    assert again.item() == pytest.approx(loss.item(), rel=1e-5)
    # tau -> 0: all the weight on the best candidate
    assert rwr_weights(torch.tensor([[0.1, 0.3, 0.2]]), 1e-4).tolist() == [[0.0, 1.0, 0.0]]


def test_equal_rewards_give_the_plain_flow_matching_loss_and_gradient():
    torch.manual_seed(0)
    pred = torch.randn(2, 3, 5, requires_grad=True)
    target = torch.randn(2, 3, 5)
    mse = per_video_mse(pred.flatten(0, 1), target.flatten(0, 1)).view(2, 3)
    loss, _ = flow_rwr_loss(mse, torch.full((2, 3), 0.7), temperature=0.01)
    (grad,) = torch.autograd.grad(loss, pred)
    plain = ((pred - target) ** 2).mean()  # flow matching: the mean squared velocity error
    (plain_grad,) = torch.autograd.grad(plain, pred)
    assert loss.item() == pytest.approx(plain.item(), rel=1e-6)
    assert torch.allclose(grad, plain_grad, atol=1e-7)


@pytest.fixture(scope="module")
def text_encoder():
    return MiniLM()


def small_backbone(text_encoder):
    torch.manual_seed(0)
    return as_if_pretrained(
        TinyBackbone(TinyConfig(dim=32, heads=2, depth=1, mlp_ratio=2), text_encoder=text_encoder).eval()
    )


def test_an_update_with_equal_rewards_is_a_flow_matching_step(tmp_path, text_encoder):
    """The adapter's gradient of one rwr_update with equal rewards is the gradient of the plain
    flow-matching loss on the same videos, sigmas and noise (computed here from Eqs. 1a, 1b)."""
    cfg = TrainConfig(algorithm="online-rwr", noise_draws=2, out=str(tmp_path / "run"), grad_clip=1e9)
    sink = JsonlSink(tmp_path / "m", 1, progress=False)
    run = Run(cfg, sink, backbone=small_backbone(text_encoder))
    bb = run.backbone
    prompts = ["a red ball moving left", "a blue box rising"]
    latents = torch.randn(2, 3, *bb.latent_shape())
    params = run.adapter_params("policy")
    with torch.no_grad():  # LoRA B starts at 0: give the adapter a direction so that A gets gradients too
        for k, p in params.items():
            if "lora_B" in k:
                p.normal_(0, 0.05)
    before = {k: p.detach().clone() for k, p in params.items()}
    run.optimizer = torch.optim.SGD(params.values(), lr=1.0)  # the step is then minus the gradient
    rwr_update(run, latents, torch.full((2, 3), 0.4), prompts, step=5)
    got = {k: before[k] - p.detach() for k, p in params.items()}

    # the same draws as rwr_update: its generator, per draw sigmas then noise for the 6 videos
    for p in params.values():
        p.grad = None
    g = run.generator(5, "rwr")
    x0 = latents.flatten(0, 1)
    text = bb.encode_prompts([p for p in prompts for _ in range(3)])
    for p, k in zip(params.values(), before):
        p.data.copy_(before[k])
    total = 0
    for _ in range(2):
        sigma = bb.training_sigmas(6, g)
        eps = torch.randn(x0.shape, generator=g)
        s = sigma.view(-1, 1, 1, 1, 1)
        with bb.autocast():
            v = bb.predict_velocity((1 - s) * x0 + s * eps, sigma, text)
        total = total + ((v.float() - (eps - x0)) ** 2).mean() / 2
    total.backward()
    for k, p in params.items():
        assert torch.allclose(got[k], p.grad, rtol=1e-4, atol=1e-7), k
    assert any(p.grad.abs().sum() > 0 for p in params.values())
    sink.close()


def test_rwr_temperature_is_checked_for_online_rwr_only():
    with pytest.raises(ConfigError, match=r"rwr_temperature must be > 0 for online-rwr, got 0\.0") as e:
        TrainConfig(algorithm="online-rwr", rwr_temperature=0.0)
    assert e.value.field == "rwr_temperature"
    with pytest.raises(ConfigError, match="rwr_temperature must be a finite number"):
        TrainConfig.from_dict({"algorithm": "online-rwr", "rwr_temperature": "nan"})
    TrainConfig(algorithm="online-dpo", rwr_temperature=0.0)  # not read by DPO: not its error


def test_a_short_real_run_logs_its_metrics(tmp_path, text_encoder):
    """Two steps of online-rwr through ``train``, with the default reward source, on a small random
    backbone of the real classes (the shipped tiny one takes minutes here on a shared 2-core CPU)."""
    cfg = TrainConfig(
        algorithm="online-rwr",
        steps=2,
        num_candidates=3,
        sampling_steps=3,
        noise_draws=2,
        heldout_count=1,
        heldout_every=2,
        checkpoint_every=2,
        prompts="demo",
        out=str(tmp_path / "run"),
    )
    sink = JsonlSink(cfg.out, cfg.steps, progress=False)
    try:
        last = train(cfg, sink, backbone=small_backbone(text_encoder))
    finally:
        sink.close()
    rows = read_metrics(cfg.out)
    assert [r["step"] for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        for key in (
            "reward/mean",
            "reward/margin",
            "rwr/loss",
            "rwr/mse",
            "rwr/weight_max",
            "rwr/ess",
            "rwr/grad_norm",
        ):
            assert math.isfinite(row[key]), key
        assert 1 <= row["rwr/ess"] <= 3 and 1 / 3 <= row["rwr/weight_max"] <= 1
    assert "heldout/temporal" in rows[-1] and last.name == "step_000002"
    assert "dpo/loss" not in rows[-1]
    labels = json.loads((tmp_path / "run" / "samples" / "step_000002_candidates" / "samples.json").read_text())
    assert sorted(v["label"] for v in labels["videos"]) == ["", "", "best"]
