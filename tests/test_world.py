import numpy as np
import pytest

from vpo.data import world
from vpo.data.detector import detect


def test_a_scene_is_a_pure_function_of_its_seed():
    a, b = world.sample_scene(123), world.sample_scene(123)
    assert a == b
    assert np.array_equal(a.render(), b.render())
    assert not np.array_equal(a.render(), world.sample_scene(124).render())


def test_the_world_has_the_promised_variety():
    scenes = [world.sample_scene(s) for s in range(2000)]
    objects = [o for s in scenes for o in s.objects]
    assert len(world.SHAPES) >= 3 and len(world.COLOURS) >= 6
    assert {o.shape for o in objects} == set(world.SHAPES)
    assert {o.colour for o in objects} == set(world.COLOURS)
    assert {o.motion for o in objects} == set(world.MOTIONS)
    assert {s.background for s in scenes} == set(world.BACKGROUNDS)
    assert any(len(s.objects) == 2 for s in scenes)
    assert len({s.caption for s in scenes}) > 1900  # captions vary, not one template


def test_frames_are_antialiased_uint8_of_the_native_size():
    video = world.sample_scene(7).render()
    assert video.dtype == np.uint8 and video.shape == (world.FRAMES, world.HEIGHT, world.WIDTH, 3)
    # antialiasing leaves intermediate values between background and object colours
    assert len(np.unique(video[0].reshape(-1, 3), axis=0)) > 10


def test_heldout_wordings_never_appear_in_training_templates():
    assert not set(world.HELDOUT_TEMPLATES) & set(world.TRAIN_TEMPLATES)
    train = {world.sample_scene(s).caption for s in range(3000)}
    for scene in world.heldout_scenes(64):
        assert scene.caption not in train


@pytest.mark.parametrize("heldout", [False, True])
def test_captions_parse_back_to_their_scene(heldout):
    for seed in range(500):
        scene = world.sample_scene(seed, heldout=heldout)
        assert world.parse_caption(scene.caption) == [(o.colour, o.shape, o.motion) for o in scene.objects]


def test_unparseable_prompt_gives_none():
    assert world.parse_caption("a beautiful sunset over the sea") is None


def test_detector_is_right_on_at_least_95_percent_of_ground_truth_videos():
    n = colour_ok = shape_ok = motion_ok = 0
    for seed in range(400):
        scene = world.sample_scene(seed)
        found = {d.colour: d for d in detect(scene.render())}
        for o in scene.objects:
            n += 1
            d = found.get(o.colour)
            colour_ok += d is not None
            shape_ok += d is not None and d.shape == o.shape
            motion_ok += d is not None and d.motion == o.motion
    assert colour_ok / n >= 0.95, colour_ok / n
    assert shape_ok / n >= 0.95, shape_ok / n
    assert motion_ok / n >= 0.95, motion_ok / n


def test_detector_rejects_a_float_video():
    with pytest.raises(ValueError, match="uint8"):
        detect(np.zeros((16, 32, 32, 3), np.float32))


def _painted_over(scene: world.Scene) -> np.ndarray:
    """The scene's background alone: its objects painted over."""
    return world.Scene(scene.seed, scene.background, (), scene.caption).render()


def test_presence_is_one_on_ground_truth_and_zero_with_the_object_painted_over():
    from vpo.data.detector import presence

    scenes = world.heldout_scenes(64)
    truth = np.array([presence(s.render(), s.caption) for s in scenes])
    painted = np.array([presence(_painted_over(s), s.caption) for s in scenes])
    assert truth.mean() >= 0.97 and np.median(truth) == 1.0
    assert painted.max() == 0.0
    # half the frames blacked out: half the presence
    half = scenes[0].render().copy()
    half[8:] = _painted_over(scenes[0])[8:]
    assert presence(half, scenes[0].caption) == pytest.approx(truth[0] / 2, abs=0.07)
    assert presence(scenes[0].render(), "a calm lake at dawn") is None  # nothing the world knows


def test_motion_extent_is_about_one_on_ground_truth_and_zero_when_the_object_freezes():
    from vpo.data.detector import motion_extent

    scenes = [s for s in world.heldout_scenes(64) if any(o.motion != "still" for o in s.objects)]
    truth = np.array([motion_extent(s.render(), s.caption) for s in scenes])
    frozen = np.array([motion_extent(np.repeat(s.render()[:1], world.FRAMES, 0), s.caption) for s in scenes])
    assert 0.9 <= np.median(truth) <= 1.1
    assert np.median(frozen) < 0.05 and frozen.max() < 0.3
    assert all(motion_extent(_painted_over(s), s.caption) == 0.0 for s in scenes[:8])  # gone: no motion
