"""The fast forward of ``tiny`` computes what the old one did (``vpo/backbones/tiny_reference.py``),
on the shipped weights, within stated tolerances; and the samplers ``Backbone.sample`` offers."""

import subprocess
import sys

import pytest
import torch
from peft import LoraConfig

from vpo.backbones import SAMPLERS
from vpo.backbones.base import heun_step
from vpo.backbones.tiny import Linears, TinyBackbone, softmax_of_few
from vpo.backbones.tiny_reference import reference
from vpo.train.config import ConfigError, TrainConfig

PROMPTS = ["a red ball moving right", "a small blue square falling down"]


def velocities(backbone, bf16: bool = False, old: bool = False) -> torch.Tensor:
    """Velocities of two prompts with their unconditional halves at four noise levels (batch 4)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, *backbone.latent_shape(), generator=g)
    sigma = torch.tensor([0.05, 0.3, 0.7, 1.0])
    text = torch.cat([backbone.encode_prompts(PROMPTS), backbone.null_text(2)])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        if old:
            with reference(backbone.transformer):
                return backbone.predict_velocity(x, sigma, text)
        return backbone.predict_velocity(x, sigma, text)


def rms(t: torch.Tensor) -> float:
    return float(t.pow(2).mean().sqrt())


def test_fast_forward_matches_the_old_one_in_fp32(tiny):
    new, old = velocities(tiny), velocities(tiny, old=True)
    # the only change in the arithmetic is exact-erf GELU for the tanh approximation (at most 5e-4
    # per activation); measured: max 6.7e-4, rms 1.0e-4, against velocities of rms 1.7
    assert rms(old) > 1
    assert (new - old).abs().max() < 2e-3
    assert rms(new - old) < 3e-4


def test_fast_forward_in_bf16_is_as_close_to_fp32_as_the_old_one_was(tiny):
    """In bf16 (what a CPU with native bf16 and a GPU compute in) both forwards differ from the
    fp32 one by bf16's rounding: the new one may not differ more (measured: rms 5.0e-3 each)."""
    exact = velocities(tiny, old=True)
    old_error = rms(velocities(tiny, bf16=True, old=True) - exact)
    new_error = rms(velocities(tiny, bf16=True) - exact)
    assert 0 < old_error < 2e-2
    assert new_error < 1.25 * old_error, (new_error, old_error)


def test_the_softmax_of_few_keys_is_torchs_and_stable():
    """Temporal attention's softmax over 8 keys when sampling on a CPU (``softmax_of_few``): torch's
    softmax within fp32 rounding, for bf16 and fp32 logits, with logits large enough that exp alone
    would overflow, and its input left as it was (it works in place on a copy)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(96, 4, 8, 8, generator=g) * 3
    logits[0, 0, 0] += 1000  # exp(1000) is inf in fp32: only a max-subtracted softmax survives it
    for dtype in (torch.float32, torch.bfloat16):
        x = logits.to(dtype)
        kept = x.clone()
        ours = softmax_of_few(x)
        assert ours.dtype == torch.float32 and torch.isfinite(ours).all()
        assert (ours - x.float().softmax(-1)).abs().max() < 1e-6
        assert torch.equal(x, kept)


def test_a_lora_adapter_applies_in_the_fast_forward(tiny):
    """LoRA wraps to_q, to_k, to_v, to_out by name: the fused-projection path must step aside."""
    backbone = TinyBackbone.load(text_encoder=tiny.text_encoder)
    base = velocities(backbone)
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=list(backbone.lora_target_modules), init_lora_weights=False)
    backbone.transformer.add_adapter(config, adapter_name="probe")
    with torch.no_grad():
        for name, p in backbone.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    tuned, tuned_old = velocities(backbone), velocities(backbone, old=True)
    assert rms(tuned - base) > 3e-2  # the adapter changes the velocity ...
    assert rms(tuned - tuned_old) < 3e-4  # ... as it did in the old forward


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_sampling_follows_every_change_of_the_weights_it_packs(tiny, bf16):
    """Outside autograd the layers run as oneDNN matmuls on packed copies of their weights (in the
    dtype they compute in), LoRA adapters folded in (``Linears``, ``effective_linear``): an optimiser
    step on the adapter, a switch of adapter and a new base weight must each reach the velocities, as
    in the old forward. In bf16 the two forwards are each bf16's rounding (rms ~5e-3) from fp32."""
    same, changed = (1e-2, 2e-2) if bf16 else (3e-4, 1e-3)  # measured: new vs old 3.0e-3 (bf16), changes >= 0.034
    backbone = TinyBackbone.load(text_encoder=tiny.text_encoder)
    base = velocities(backbone, bf16)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=list(backbone.lora_target_modules), init_lora_weights=False)
    for name in ("policy", "ref"):
        backbone.transformer.add_adapter(config, adapter_name=name)
    backbone.transformer.set_adapter("policy")
    lora_b = [p for n, p in backbone.transformer.named_parameters() if "lora_B.policy" in n]
    fc1 = backbone.transformer.blocks[0].mlp.fc1.weight
    seen = [base]

    def check(change) -> None:
        with torch.no_grad():
            change()
        new, old = velocities(backbone, bf16), velocities(backbone, bf16, old=True)
        assert rms(new - old) < same, rms(new - old)  # the fast forward computes what the old one does ...
        assert all(rms(new - before) > changed for before in seen), [rms(new - b) for b in seen]  # ... changed
        seen.append(new)

    check(lambda: [p.normal_(0, 0.3) for p in lora_b])  # the policy's adapter moves
    check(lambda: [p.mul_(0.5) for p in lora_b])  # and again, in place (same storage)
    check(lambda: backbone.transformer.set_adapter("ref"))  # the reference adapter runs
    check(lambda: fc1.add_(0.05))  # a base weight changes in place


def test_training_and_sampling_compute_the_same_velocities(tiny):
    """With gradients on, LoRA adapters run as modules and matmuls in torch's default kernels; with
    them off (sampling, the reference inside a DPO loss), folded and prepacked (``Linears``): the
    same function within fp32 rounding."""
    backbone = TinyBackbone.load(text_encoder=tiny.text_encoder)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=list(backbone.lora_target_modules), init_lora_weights=False)
    backbone.transformer.add_adapter(config, adapter_name="policy")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, *backbone.latent_shape(), generator=g)
    sigma = torch.tensor([0.05, 0.3, 0.7, 1.0])
    text = torch.cat([backbone.encode_prompts(PROMPTS), backbone.null_text(2)])
    trained = backbone.predict_velocity(x, sigma, text)
    assert trained.requires_grad
    with torch.no_grad():
        sampled = backbone.predict_velocity(x, sigma, text)
    assert rms(sampled - trained.detach()) < 1e-5, rms(sampled - trained.detach())


def test_a_lora_policy_folded_in_bf16_is_as_close_to_fp32_as_its_adapter_run_alone(tiny, monkeypatch):
    """In bf16 (native-bf16 CPUs) sampling folds a LoRA adapter into its weight before the one
    rounding to bf16, where autocast rounds W0, A and B apart. Against the fp32 velocities, and
    against the adapter's own effect (policy minus base), the folded policy may not be further off
    than the unfolded one: bf16's rounding of the activations dominates both (measured, rank 8:
    velocities rms 4.93e-3 folded vs 4.96e-3 unfolded; the adapter's effect 3.72e-3 vs 3.73e-3)."""
    backbone = TinyBackbone.load(text_encoder=tiny.text_encoder)
    base, base_bf16 = velocities(backbone), velocities(backbone, bf16=True)
    config = LoraConfig(r=8, lora_alpha=8, target_modules=list(backbone.lora_target_modules), init_lora_weights=False)
    backbone.transformer.add_adapter(config, adapter_name="policy")
    monkeypatch.setattr(Linears, "fold_lora", False)
    exact, alone = velocities(backbone), velocities(backbone, bf16=True)
    monkeypatch.setattr(Linears, "fold_lora", True)
    folded = velocities(backbone, bf16=True)
    effect = exact - base
    assert rms(effect) > 1e-2  # the adapter changes the velocities well above bf16's rounding
    assert 0 < rms(folded - exact) < 1.1 * rms(alone - exact)
    assert rms(folded - base_bf16 - effect) < 1.1 * rms(alone - base_bf16 - effect)
    assert not torch.equal(folded, alone)  # the two paths did run


def test_heun_steps_are_second_order_and_euler_first_order(tiny):
    """On dx/dsigma = x (exact: x e^(sigma - 1) from sigma = 1) over tiny's own noise levels:
    halving the step divides Heun's error by ~4 (global order 2) and Euler's by ~2 (order 1)."""
    from vpo.backbones.base import euler_step

    def solve(steps: int, heun: bool) -> float:
        scheduler = tiny.make_scheduler(steps)
        x = torch.ones(1, dtype=torch.float64)
        for i in range(steps - 1):  # up to the last level before 0, where Heun takes Euler's step
            v = x.clone()
            x = heun_step(scheduler, i, x, v, lambda y, _s: y) if heun else euler_step(scheduler, i, x, v)
        exact = torch.exp(scheduler.sigmas[steps - 1].double() - 1)
        return float((x - exact).abs())

    for heun, order in ((True, 2), (False, 1)):
        ratio = solve(10, heun) / solve(19, heun)
        assert 0.7 * 2**order < ratio < 1.4 * 2**order, (heun, ratio)


def test_heun_sampling_is_seeded_and_its_last_step_is_euler(tiny):
    a = tiny.sample(PROMPTS, [3, 4], steps=3, sampler="heun")
    assert a.shape == (2, tiny.spec.frames, tiny.spec.height, tiny.spec.width, 3)
    assert torch.equal(a, tiny.sample(PROMPTS, [3, 4], steps=3, sampler="heun"))
    assert not torch.equal(a, tiny.sample(PROMPTS, [3, 4], steps=3, sampler="euler"))
    # one step goes from sigma 1 straight to 0: Heun takes Euler's step there
    assert torch.equal(
        tiny.sample(PROMPTS, [3, 4], steps=1, sampler="heun"), tiny.sample(PROMPTS, [3, 4], steps=1, sampler="euler")
    )


def test_an_unknown_sampler_is_a_clear_error_everywhere(tiny, tmp_path):
    assert SAMPLERS == ("euler", "heun")
    with pytest.raises(ValueError, match="sampler 'rk4' is not valid; valid: euler, heun"):
        tiny.sample(PROMPTS, [0, 1], steps=2, sampler="rk4")
    with pytest.raises(ConfigError, match="sampler") as e:
        TrainConfig(sampler="rk4")
    assert e.value.field == "sampler"
    assert TrainConfig().sampler == "euler"  # the default every measured figure used
    problems = TrainConfig.check({"algorithm": "refl", "sampler": "heun"})
    assert [str(p) for p in problems if p.field == "sampler"] == [
        "refl back-propagates through Euler steps; its sampler must be euler"
    ]
    args = ["sample", "--prompt", "a red ball", "--out", str(tmp_path), "--seed", "0", "--sampler", "rk4"]
    cli = subprocess.run(
        [sys.executable, "-m", "vpo", *args],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 2 and "invalid choice: 'rk4'" in cli.stderr and "Traceback" not in cli.stderr
