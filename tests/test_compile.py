"""``VPO_COMPILE=on``: sampling runs the transformer through ``torch.compile`` (``Backbone.denoiser``).
The compiled forward must compute what the eager one does, see every change of the weights (they
are the graph's inputs, not constants), stay out of training, and leave the checkpoint as it was.
A small random ``tiny`` keeps each compile to seconds; the shipped model's figures are
``benchmarks/sampling.py``'s."""

import os
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig
from torch._dynamo.utils import counters

from vpo.backbones.base import CompiledForward, compile_sampling
from vpo.backbones.tiny import TinyBackbone, TinyConfig

PROMPTS = ["a red ball moving right", "a small blue square falling down"]


@pytest.fixture
def compile_on(monkeypatch):
    monkeypatch.setenv("VPO_COMPILE", "on")
    compile_sampling.cache_clear()
    yield
    compile_sampling.cache_clear()
    torch._dynamo.reset()


@pytest.fixture
def small(tiny):
    """A two-block ``tiny`` with random weights, gates and output included (a fresh model's are zero)."""
    backbone = TinyBackbone(TinyConfig(dim=32, heads=2, depth=2), text_encoder=tiny.text_encoder)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in backbone.transformer.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    return backbone


def velocities(backbone, bf16: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, *backbone.latent_shape(), generator=g)
    sigma = torch.tensor([0.05, 0.3, 0.7, 1.0])
    text = torch.cat([backbone.encode_prompts(PROMPTS), backbone.null_text(2)])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return backbone.predict_velocity(x, sigma, text)


def rms(t: torch.Tensor) -> float:
    return float(t.pow(2).mean().sqrt())


def eager(backbone, monkeypatch, bf16: bool = False) -> torch.Tensor:
    monkeypatch.setenv("VPO_COMPILE", "off")
    compile_sampling.cache_clear()
    try:
        return velocities(backbone, bf16)
    finally:
        monkeypatch.setenv("VPO_COMPILE", "on")
        compile_sampling.cache_clear()


def test_the_compiled_forward_computes_what_the_eager_one_does_and_follows_the_weights(small, compile_on, monkeypatch):
    keys = set(small.state_dict())
    counters.clear()
    compiled = velocities(small)
    with torch.no_grad():
        assert isinstance(small.denoiser(), CompiledForward)  # the compiled path ran
    assert rms(compiled) > 0.1
    # one graph: a break (an untraceable call, such as a ContextVar's get) splits it at every layer
    # and leaves the compiled forward no faster than the eager one
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert rms(compiled - eager(small, monkeypatch)) < 1e-5  # fp32: the same function, fused
    assert set(small.state_dict()) == keys  # nothing of the compiled module reaches a checkpoint

    # a LoRA policy (what online DPO samples candidates from): attaching it recompiles; an optimiser
    # step on it, in place, must reach the next compiled call
    config = LoraConfig(r=4, lora_alpha=4, target_modules=list(small.lora_target_modules), init_lora_weights=False)
    small.transformer.add_adapter(config, adapter_name="policy")
    lora_b = [p for n, p in small.transformer.named_parameters() if "lora_B.policy" in n]
    seen = [compiled]
    for step in (lambda p: p.normal_(0, 0.3), lambda p: p.mul_(0.5)):
        with torch.no_grad():
            for p in lora_b:
                step(p)
        now = velocities(small)
        assert not counters["graph_break"], dict(counters["graph_break"])
        assert rms(now - eager(small, monkeypatch)) < 1e-5
        assert all(rms(now - before) > 1e-3 for before in seen)
        seen.append(now)


def test_the_compiled_forward_in_bf16_is_as_close_to_fp32_as_the_eager_one(small, compile_on, monkeypatch):
    exact = eager(small, monkeypatch)
    eager_error = rms(eager(small, monkeypatch, bf16=True) - exact)
    compiled_error = rms(velocities(small, bf16=True) - exact)
    assert 0 < eager_error < 5e-2
    assert compiled_error < 1.25 * eager_error, (compiled_error, eager_error)


def test_training_stays_eager(small, compile_on):
    """With gradients on the forward is the module's own: no compiled graph, gradients flow."""
    x = torch.randn(2, *small.latent_shape())
    text = small.encode_prompts(PROMPTS)
    v = small.predict_velocity(x, torch.tensor([0.3, 0.7]), text)
    assert small.denoiser() is small.transformer
    v.pow(2).mean().backward()
    assert all(p.grad is not None for p in small.transformer.blocks[0].parameters())
    assert getattr(small, "_compiled_forward", None) is None


def test_a_bad_vpo_compile_is_a_clear_error(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vpo",
            "sample",
            "--prompt",
            "a red ball moving right",
            "--out",
            str(tmp_path),
            "--seed",
            "0",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "VPO_COMPILE": "yes"},
    )
    assert out.returncode == 2, out.stderr
    assert "VPO_COMPILE='yes' is not valid; valid: off, on" in out.stderr
    assert "Traceback" not in out.stderr
