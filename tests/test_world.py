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
