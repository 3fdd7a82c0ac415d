import cv2
import numpy as np
import pytest
import torch

from vpo.data import world
from vpo.feedback import Group, analyse, mrr_recall, rank_of_chosen
from vpo.rewards import load_reward

SEEDS = range(12)


@pytest.fixture(scope="module")
def batch():
    scenes = [world.sample_scene(s, two_objects=0.0) for s in SEEDS]
    return torch.from_numpy(np.stack([s.render() for s in scenes])), [s.caption for s in scenes]


@pytest.fixture(scope="module")
def metrics():
    return load_reward("metrics")


def shuffled(videos, seed=0):
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(videos.shape[1]))
    return videos[:, perm]


def moving(batch):
    videos, prompts = batch
    keep = [i for i, s in enumerate(SEEDS) if world.sample_scene(s, two_objects=0.0).objects[0].motion != "still"]
    return videos[keep], [prompts[i] for i in keep]


def test_a_still_video_has_perfect_flicker_and_the_lowest_dynamic(metrics, batch):
    videos, prompts = moving(batch)
    still = videos[:, :1].repeat(1, videos.shape[1], 1, 1, 1)
    both = metrics.score(torch.cat([videos, still]), prompts * 2)
    n = len(videos)
    assert torch.allclose(both.raw["temporal_flickering"][n:], torch.ones(n))
    assert both.scores["dynamic"][n:].max() == 0  # the lowest value the dimension has
    assert both.raw["flow_top5"][n:].max() < both.raw["flow_top5"][:n].min()


def test_frame_shuffling_lowers_temporal(metrics, batch):
    videos, prompts = moving(batch)
    before = metrics.score(videos, prompts).scores["temporal"]
    after = metrics.score(shuffled(videos), prompts).scores["temporal"]
    assert (after < before).all(), (before, after)


def test_blurring_lowers_visual(metrics, batch):
    videos, prompts = batch
    blurred = torch.from_numpy(np.stack([[cv2.GaussianBlur(f, (5, 5), 1.2) for f in v] for v in videos.numpy()]))
    assert (metrics.score(blurred, prompts).scores["visual"] < metrics.score(videos, prompts).scores["visual"]).all()


def test_the_modality_gap_image_metrics_cannot_see_shuffled_frames(metrics, batch):
    videos, prompts = moving(batch)
    image = load_reward("image-metrics")
    img_before, img_after = (image.score(v, prompts).scores["temporal"] for v in (videos, shuffled(videos)))
    vid_before, vid_after = (metrics.score(v, prompts).scores["temporal"] for v in (videos, shuffled(videos)))
    assert torch.allclose(img_before, img_after, atol=1e-5)
    assert (vid_before - vid_after).mean() > 0.01


def test_alignment_picks_the_right_prompt_among_distractors(metrics):
    right, n = 0, 100
    for seed in range(n):
        scene = world.sample_scene(10_000 + seed, two_objects=0.0)
        truth = scene.objects[0]
        # distractors differ in exactly one of colour, shape, motion (the hard case), plus a random scene
        motion = world.MOTION_WORDS[truth.motion][0]
        other_motion = world.MOTION_WORDS[next(m for m in world.MOTIONS if m != truth.motion)][0]
        distractors = [
            f"a {next(c for c in world.COLOURS if c != truth.colour)} {truth.shape} {motion}",
            f"a {truth.colour} {next(s for s in world.SHAPES if s != truth.shape)} {motion}",
            f"a {truth.colour} {truth.shape} {other_motion}",
        ]
        prompts = [scene.caption, *distractors]
        video = torch.from_numpy(scene.render())[None].repeat(len(prompts), 1, 1, 1, 1)
        scores = metrics.score(video, prompts).scores["alignment"].numpy()
        right += rank_of_chosen(scores, 0) == 1  # strictly on top: a tie counts as a miss
    assert right / n >= 0.95, right / n


def test_alignment_of_a_prompt_outside_the_world_is_unavailable_not_zero(metrics, batch):
    videos, prompts = batch
    result = metrics.score(videos[:2], [prompts[0], "a photo of a cat"])
    assert result.scores["alignment"][0] > 0
    assert torch.isnan(result.scores["alignment"][1]) and torch.isnan(result.scores["global"][1])
    assert "names no colour, shape and motion" in result.unavailable[1]


def test_global_is_the_mean_of_the_normalised_dimensions(metrics, batch):
    videos, prompts = batch
    s = metrics.score(videos, prompts).scores
    for name in s:
        assert ((s[name] >= 0) & (s[name] <= 1)).all(), name
    assert torch.allclose(s["global"], torch.stack([s[d] for d in metrics.dimensions]).mean(0))


@pytest.mark.parametrize("dimension", ["temporal", "visual"])
def test_differentiable_scores_match_and_carry_gradients(metrics, batch, dimension):
    videos, prompts = batch
    x = videos[:3].float().requires_grad_(True)
    value = metrics.score_differentiable(x, prompts[:3], dimension)
    value.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.allclose(value.detach(), metrics.score(videos[:3], prompts[:3]).scores[dimension], atol=1e-4)


@pytest.mark.parametrize("name", ["metrics", "image-metrics"])
def test_bad_input_is_a_clear_error(name, batch):
    source = load_reward(name)
    videos, prompts = batch
    v, p = videos[:2], prompts[:2]
    with pytest.raises(ValueError, match="must be uint8"):
        source.score(v.float(), p)
    with pytest.raises(ValueError, match=r"shape \(B, F, H, W, 3\)"):
        source.score(v[0], p)
    nan = v.float()
    nan[0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        source.score(nan, p)
    with pytest.raises(ValueError, match="at least 2 frames"):
        source.score(v[:, :1], p)
    with pytest.raises(ValueError, match="one prompt per video"):
        source.score(v, p[:1])
    with pytest.raises(ValueError, match=f"reward source '{name}' has no dimension 'physics'; valid: .*global"):
        source.check_dimension("physics")


def test_unknown_reward_source_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown reward source 'hps'; valid: metrics, image-metrics"):
        load_reward("hps")


def test_mrr_and_recall_equal_hand_computed_values():
    groups = [([0.9, 0.1, 0.5], 0), ([0.9, 0.1, 0.5], 2), ([0.3, 0.2, 0.1, 0.4], 1), ([0.7, 0.7, 0.1], 1)]
    ranks = [rank_of_chosen(s, c) for s, c in groups]
    assert ranks == [1, 2, 3, 2]  # the tie in the last group counts against the source
    r = mrr_recall(ranks)
    assert r["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 2) / 4)
    assert (r["recall@1"], r["recall@2"], r["recall@4"]) == (0.25, 0.75, 1.0)


def test_feedback_analysis_ranks_the_unshuffled_video_first_on_temporal(metrics, batch):
    videos, prompts = moving(batch)
    groups = []
    for i in range(4):
        cands = torch.stack([shuffled(videos[i : i + 1], seed)[0] for seed in (1, 2)] + [videos[i]])
        groups.append(Group(prompts[i], cands.numpy(), chosen=2))
    temporal = analyse(metrics, "temporal", groups)
    assert temporal["mrr"] == 1.0 and temporal["recall@1"] == 1.0
    image = analyse(load_reward("image-metrics"), "temporal", groups)
    assert image["mrr"] < 1.0  # the image-level judge ties all three and so cannot pick the real one


def test_the_subject_guard_never_lets_an_empty_or_frozen_video_win():
    from vpo.data import world
    from vpo.rewards.guard import subject_factor, subject_factors, veto

    scene = next(s for s in world.heldout_scenes(64) if s.objects[0].motion in ("left", "right", "up", "down"))
    truth = scene.render()
    empty = world.Scene(scene.seed, scene.background, (), scene.caption).render()
    frozen = np.repeat(truth[:1], len(truth), 0)
    temporal = load_reward("metrics").score(torch.from_numpy(np.stack([truth, empty, frozen])), [scene.caption] * 3)
    raw = temporal.scores["temporal"]
    assert raw[1] > raw[0] and raw[2] > raw[0]  # unguarded, deleting or freezing the subject wins
    factors = [subject_factor(v, scene.caption) for v in (truth, empty, frozen)]
    assert factors[0] == pytest.approx(1.0, abs=0.15) and factors[1] == 0.0 and factors[2] < 0.05
    # from the measures the metrics source took on the way (what a run uses): the same factors
    videos = np.stack([truth, empty, frozen])
    assert subject_factors(videos, [scene.caption] * 3, temporal.raw) == pytest.approx(factors)
    guarded = raw * torch.tensor(factors)
    assert int(guarded.argmax()) == 0
    # the veto: the empty and the frozen video below the truth, their own order kept
    vetoed = veto(raw, torch.tensor(factors))
    assert int(vetoed.argmax()) == 0 and vetoed[0] == raw[0]
    assert vetoed[1] < vetoed[0] and vetoed[2] < vetoed[0] and (vetoed[1] > vetoed[2]) == bool(raw[1] > raw[2])
    with pytest.raises(ValueError, match="names no object"):
        subject_factor(truth, "a calm lake at dawn")


def test_the_veto_leaves_a_group_that_passes_to_the_reward_alone_and_never_lets_a_vetoed_one_win():
    from vpo.rewards.guard import VETO_BELOW, veto

    scores = torch.tensor([0.2, 0.9, 0.5, 0.7])
    assert torch.equal(veto(scores, torch.full((4,), VETO_BELOW)), scores)  # all pass: nothing changes
    # the product with the factor would reorder these (0.9 * 0.55 < 0.5 * 1.0); the veto does not
    factors = torch.tensor([1.0, 0.55, 1.0, 0.1])
    assert int((scores * factors).argmax()) == 2
    vetoed = veto(scores, factors)
    assert vetoed.tolist()[:3] == scores.tolist()[:3] and int(vetoed.argmax()) == 1
    assert int(vetoed.argmin()) == 3 and vetoed[3] < scores.min()
    # whatever the source's range: a score of 40 vetoed still ends below a passing 1
    assert veto(torch.tensor([1.0, 40.0]), torch.tensor([1.0, 0.0])).argmax() == 0
