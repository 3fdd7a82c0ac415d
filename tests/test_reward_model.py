"""Reward models learned from preference pairs: the pairs format and its reader, VideoAlign's
Bradley–Terry-with-ties loss, a model trained on pairs from a known rule, the ``learned`` source
and its config field, and the CLI."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vpo.pairs import PairsError, read_pairs
from vpo.reward_model.loss import bt_ties_loss
from vpo.train.config import ConfigError, TrainConfig

BIN = Path(sys.executable).parent
# the fixture samples 32 videos and trains a model: 816 s on the 2-core CPU shared by four (load ~12)
pytestmark = pytest.mark.timeout(1800)


# --- the loss ------------------------------------------------------------------------------------
def test_bt_with_ties_loss_matches_rao_kupper_computed_by_hand():
    # r_a = 1, r_b = 0, theta = 5; Rao-Kupper in its original form with pi = exp(r):
    # P(a > b) = pi_a / (pi_a + theta pi_b) = e / (e + 5)                  = 0.352187
    # P(b > a) = pi_b / (pi_b + theta pi_a) = 1 / (1 + 5e)                 = 0.068533
    # P(tie)   = (theta^2 - 1) pi_a pi_b / ((pi_a + theta pi_b)(pi_b + theta pi_a))
    #          = 24e / ((e + 5)(1 + 5e))                                   = 0.579279
    # (the three sum to 1); the losses are their negative logs:
    r_a, r_b = torch.tensor([1.0]), torch.tensor([0.0])
    win, loss, tie = (bt_ties_loss(r_a, r_b, torch.tensor([o])).item() for o in (0, 1, 2))
    assert win == pytest.approx(1.043592, abs=1e-5)
    assert loss == pytest.approx(2.680433, abs=1e-5)
    assert tie == pytest.approx(0.545971, abs=1e-5)
    # a tie is its own outcome, not half a win and half a loss
    assert tie != pytest.approx((win + loss) / 2, abs=0.1)
    # the mean over a batch, and the symmetry of swapping a and b
    batch = bt_ties_loss(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0, 1, 2]))
    assert batch.item() == pytest.approx((win + loss + tie) / 3, abs=1e-5)
    assert bt_ties_loss(r_b, r_a, torch.tensor([1])).item() == pytest.approx(win, abs=1e-6)
    assert math.exp(-win) + math.exp(-loss) + math.exp(-tie) == pytest.approx(1.0, abs=1e-6)


# --- the pairs file ------------------------------------------------------------------------------
def test_the_pairs_reader_reports_every_bad_line_with_its_number(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((16, 32, 32, 3), np.uint8))
    np.save(tmp_path / "b.npy", np.zeros((16, 32, 32, 3), np.uint8))
    good = {"prompt": "a red ball", "a": "a.npy", "b": str(tmp_path / "b.npy"), "choice": "tie"}
    lines = [
        json.dumps(good),
        "",
        "{not json",
        json.dumps({**good, "choice": "left"}),
        json.dumps({**good, "a": "missing.npy"}),
        json.dumps({**good, "b": "b.gif"}),
        json.dumps({**good, "extra": 1}),
        json.dumps({k: v for k, v in good.items() if k != "prompt"}),
        json.dumps({**good, "dimension": "temporal", "choice": "a"}),
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PairsError) as e:
        read_pairs(path)
    assert [n for n, _ in e.value.problems] == [3, 4, 5, 6, 7, 8]
    why = dict(e.value.problems)
    assert "not JSON" in why[3] and "'left'" in why[4] and "no such file" in why[5]
    assert ".npy or .mp4" in why[6] and "'extra'" in why[7] and "missing 'prompt'" in why[8]

    path.write_text(lines[0] + "\n\n" + lines[-1] + "\n")
    pairs = read_pairs(path)
    assert [(p.a, p.b, p.choice, p.dimension, p.line) for p in pairs] == [
        (tmp_path / "a.npy", tmp_path / "b.npy", "tie", "overall", 1),  # relative to the file's folder
        (tmp_path / "a.npy", tmp_path / "b.npy", "a", "temporal", 3),
    ]


def test_the_cli_names_the_bad_lines_and_exits_2_without_a_traceback(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "x", "a": "a.npy", "b": "b.npy", "choice": "a"}\n[1, 2]\n')
    r = subprocess.run(
        [str(BIN / "vpo"), "reward-model", "train", "--pairs", str(path), "--out", str(tmp_path / "rm")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "2 bad line(s): line 1: a = 'a.npy': no such file" in r.stderr
    assert "line 2: expected a JSON object, got list" in r.stderr


# --- training on a known rule ----------------------------------------------------------------------
def brightness(path) -> float:
    return float(np.load(path).astype(np.float32).mean())


def rule_pairs(items, n: int, seed: int, tie_below: float = 0.5) -> list[dict]:
    """``n`` pairs of distinct videos judged by a hidden rule, brightness: the brighter one wins,
    a tie when they differ by less than ``tie_below`` grey levels. The pair's prompt is the first
    video's (the rule ignores it)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        i, j = rng.choice(len(items), 2, replace=False)
        (a, prompt), (b, _) = items[i], items[j]
        d = brightness(a) - brightness(b)
        choice = "tie" if abs(d) < tie_below else "a" if d > 0 else "b"
        rows.append({"prompt": prompt, "a": str(a), "b": str(b), "choice": choice})
    return rows


@pytest.fixture(scope="module")
def trained(tiny, tiny_videos, tmp_path_factory):
    from vpo.reward_model.train import RewardModelConfig, train_reward_model

    folder = tmp_path_factory.mktemp("rm")
    pairs = folder / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rule_pairs(tiny_videos, 240, seed=1)))
    return train_reward_model(pairs, folder / "model", RewardModelConfig(seed=0), backbone=tiny, progress=False)


def test_a_reward_model_trained_on_pairs_from_a_known_rule_recovers_its_order_on_heldout_pairs(trained):
    figures = trained.meta["figures"]
    clean = figures["accuracy_clean"]
    assert trained.meta["heads"] == ["overall"]
    assert figures["heldout"] == len(trained.heldout) >= 40
    # the held-out pairs' choices are the rule's order (no noise): >= 80% of them recovered
    assert clean["pairs"] >= 35 and clean["accuracy"] >= 0.8, figures
    assert clean["low"] < clean["accuracy"] <= clean["high"]
    assert figures["metrics_accuracy"]["pairs"] == clean["pairs"]  # the metrics source, same pairs
    # check the figures against the saved model itself: reload it and score the held-out videos
    from vpo.reward_model.model import load_reward_model

    model = load_reward_model(Path(trained.meta["pairs_file"]).parent / "model", backbone=trained.model.backbone)
    decided = [p for p in trained.heldout if p.choice != "tie"]
    videos = np.stack([np.load(path) for p in decided for path in (p.a, p.b)])
    prompts = [p.prompt for p in decided for _ in range(2)]
    with torch.no_grad():
        r = model.score(model.latents(videos), torch.zeros(len(videos)), prompts)["overall"].view(-1, 2)
    right = sum(bool(ra > rb) == (p.choice == "a") for (ra, rb), p in zip(r.tolist(), decided))
    assert (right, len(decided)) == (round(clean["accuracy"] * clean["pairs"]), clean["pairs"])


def test_the_reward_is_differentiable_with_respect_to_the_noisy_video(trained):
    x = torch.zeros(2, 3, 16, 32, 32, requires_grad=True)
    r = trained.model.score(x, torch.tensor([0.5, 0.5]), ["a red ball", "a red ball"])["overall"]
    (grad,) = torch.autograd.grad(r.sum(), x)
    assert grad.shape == x.shape and grad.abs().sum() > 0


def test_the_learned_source_scores_with_its_heads_and_global_in_the_config_and_the_cli(trained, tiny_videos):
    folder = Path(trained.meta["pairs_file"]).parent / "model"
    cfg = TrainConfig(reward="learned", reward_model=str(folder), dimension="overall")
    assert cfg.reward_model == str(folder)
    TrainConfig(reward="learned", reward_model=str(folder), dimension="global")
    with pytest.raises(ConfigError) as e:
        TrainConfig(reward="learned", reward_model=str(folder), dimension="temporal")
    assert e.value.field == "dimension" and "valid: overall, global" in str(e.value)
    with pytest.raises(ConfigError) as e:
        TrainConfig(reward="learned", reward_model=str(folder.parent))
    assert e.value.field == "reward_model" and "is not a trained reward model" in str(e.value)
    with pytest.raises(ConfigError) as e:
        TrainConfig(reward="metrics", reward_model=str(folder))
    assert e.value.field == "reward_model"

    (bright, prompt), (dark, _) = sorted(tiny_videos[:6], key=lambda item: -brightness(item[0]))[::5]
    r = subprocess.run(
        [
            BIN / "vpo",
            "score",
            "--reward",
            "learned",
            "--reward-model",
            folder,
            "--prompt",
            prompt,
            "--json",
            bright,
            dark,
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["videos"]
    assert [set(row["scores"]) for row in rows] == [{"overall", "global"}] * 2
    assert all(0 <= row["scores"]["overall"] <= 1 for row in rows)
    assert rows[0]["scores"]["global"] == rows[0]["scores"]["overall"]  # one head: global is it
    assert rows[0]["scores"]["overall"] > rows[1]["scores"]["overall"]  # the brightest of six above the darkest
    r = subprocess.run(
        [str(BIN / "vpo"), "score", "--reward", "learned", "--reward-model", str(folder.parent), str(bright)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "is not a trained reward model" in r.stderr and "Traceback" not in r.stderr


# --- Flow-NRG: guided sampling ---------------------------------------------------------------------
PROMPTS = ["a red ball moving right", "a blue square falling", "a green triangle rising", "a white disc bouncing"]


def test_guidance_with_weight_0_reproduces_unguided_sampling_exactly(tiny, trained):
    from vpo.guidance import RewardGuide

    seeds = [11, 12, 13, 14]
    _, plain = tiny.sample(PROMPTS, seeds, steps=6, return_latents=True)
    _, zero = tiny.sample(
        PROMPTS, seeds, steps=6, return_latents=True, guide=RewardGuide(trained.model, {"overall": 0.0})
    )
    assert torch.equal(plain, zero)


def test_guidance_with_a_positive_weight_raises_the_guiding_reward_on_the_same_seeds(tiny, trained):
    # Guidance is a first-order step up the reward of the *noisy* video, so no one seed is promised
    # a rise (a CI run on another CPU saw one of four seeds fall by 0.03 at weight 1): what must hold
    # is the rise on (nearly) every seed at a moderate weight, and more rise for more weight.
    from vpo.guidance import RewardGuide

    seeds, prompts = list(range(11, 19)), PROMPTS * 2
    model = trained.model

    def reward(latents):
        with torch.no_grad():
            return model.score(latents, torch.zeros(len(latents)), prompts)["overall"]

    _, plain = tiny.sample(prompts, seeds, steps=6, return_latents=True)
    rise, distance = {}, {}
    for weight in (1.0, 2.0, 4.0):
        _, guided = tiny.sample(
            prompts, seeds, steps=6, return_latents=True, guide=RewardGuide(model, {"overall": weight})
        )
        rise[weight] = reward(guided) - reward(plain)
        distance[weight] = (guided - plain).abs().mean().item()
    assert (rise[2.0] > 0).sum() >= 7 and rise[2.0].mean() > 1.0, rise
    assert 0 < rise[1.0].mean() < rise[2.0].mean() < rise[4.0].mean(), rise
    # and the videos stay videos: same seeds, still close to the unguided ones
    assert distance[2.0] < 0.5, distance


def test_the_sample_command_parses_guide_weights_and_refuses_bad_ones(trained, tmp_path):
    from vpo.guidance import parse_weights

    assert parse_weights("", ["temporal", "visual"]) == {"temporal": 1.0, "visual": 1.0}
    assert parse_weights("temporal=2, visual=0.5", ["temporal", "visual"]) == {"temporal": 2.0, "visual": 0.5}
    assert parse_weights("visual=3", ["temporal", "visual"]) == {"temporal": 0.0, "visual": 3.0}
    folder = Path(trained.meta["pairs_file"]).parent / "model"
    command = [BIN / "vpo", "sample", "--prompt", "a red ball", "--seed", "0", "--out", tmp_path / "s", "--steps", "2"]
    command += ["--guide", folder]
    r = subprocess.run(
        [*command, "--guide-weights", "temporal=2"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "expected DIMENSION=WEIGHT with a dimension of overall, got 'temporal=2'" in r.stderr
    r = subprocess.run(
        [*command, "--guide-weights", "overall=3"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["guide"] == str(folder) and manifest["guide_weights"] == {"overall": 3.0}
