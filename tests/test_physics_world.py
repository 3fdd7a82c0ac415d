"""The physics world (issue 17): determinism, the mechanics, simulator vs renderer, the error
function's ranking of ground truth over time-reversed and gravity-flipped copies, the split."""

import math

import numpy as np
import pytest

from vpo.data import physics as P
from vpo.data.detector import track


@pytest.fixture(scope="module")
def scenes():
    return P.train_scenes(64)


def test_a_scene_is_a_pure_function_of_its_seed():
    a, b = P.sample_scene(5), P.sample_scene(5)
    assert a == b
    assert np.array_equal(a.render(), b.render())
    assert not np.array_equal(a.render(), P.sample_scene(6).render())
    assert a.render().shape == (P.FRAMES, P.HEIGHT, P.WIDTH, 3) and a.render().dtype == np.uint8


def test_every_kind_appears_and_no_two_scenes_are_the_same(scenes):
    assert {s.state.kind for s in scenes} == set(P.KINDS)
    assert len({s.caption for s in scenes}) > 40  # a discrete vocabulary: some captions repeat
    assert len({s.state for s in scenes}) == len(scenes)


def _drop(colour: str, height: float) -> P.PhysState:
    r = 3.0
    return P.PhysState("drop", "grey", (P.Body(colour, "circle", 16.0, P.FLOOR_Y - r - height, 0, 0, r, "air"),))


@pytest.mark.parametrize("colour", ["red", "orange", "green"])
def test_a_bounce_apex_over_the_drop_height_is_restitution_squared(colour):
    # record 8 times a frame: slowing time by 8 scales g by 1/64 and keeps the sub-step
    state = _drop(colour, 20.0)
    y = P.simulate(state, frames=8 * 40, gravity=P.GRAVITY / 64, substeps=8).positions[:, 0, 1]
    floor = P.FLOOR_Y - 3.0
    first_contact = int(np.argmax(np.diff(y) < 0))  # first sample after the first bounce
    apex = floor - y[first_contact:].min()
    e = P.restitution(colour)
    assert apex / 20.0 == pytest.approx(e**2, rel=0.01)


def test_clay_barely_bounces_and_comes_to_rest_on_the_floor():
    y = P.simulate(_drop("white", 15.0), frames=40).positions[:, 0, 1]
    assert y[-1] == pytest.approx(P.FLOOR_Y - 3.0)
    assert (P.FLOOR_Y - 3.0) - y[np.argmax(y >= P.FLOOR_Y - 3.0 - 1e-9) :].min() < 0.02 * 15.0


@pytest.mark.parametrize(("floor", "v0"), [("grey", 1.5), ("green", 2.0), ("brown", 1.2)])
def test_friction_stops_a_slider_at_v0_squared_over_2_mu_g(floor, v0):
    r = 3.0
    state = P.PhysState("slide", floor, (P.Body("red", "square", 4.0, P.FLOOR_Y - r, v0, 0, r, "floor"),))
    x = P.simulate(state, frames=80).positions[:, 0, 0]
    expected = v0**2 / (2 * P.friction(floor) * P.GRAVITY)
    assert x[-1] - x[0] == pytest.approx(expected, abs=1e-6)
    assert x[-1] == x[-2]  # stopped, and stays


def test_elastic_collision_conserves_momentum_and_kinetic_energy():
    for m1, v1, m2, v2 in [(9.0, 1.5, 4.0, -1.0), (6.25, 0.7, 12.25, -1.9), (4.0, 1.0, 4.0, 0.0)]:
        u1, u2 = P.elastic(m1, v1, m2, v2)
        assert m1 * u1 + m2 * u2 == pytest.approx(m1 * v1 + m2 * v2, rel=1e-12)
        assert m1 * u1**2 + m2 * u2**2 == pytest.approx(m1 * v1**2 + m2 * v2**2, rel=1e-12)
    # in a rollout without friction (no gravity: nothing presses the balls on the floor)
    a = P.Body("red", "circle", 6.0, 20.0, 1.4, 0, 3.0, "floor")
    b = P.Body("white", "circle", 24.0, 20.0, -0.8, 0, 2.2, "floor")
    roll = P.simulate(P.PhysState("collide", "blue", (a, b)), gravity=0.0)
    assert [c for _, c in roll.contacts] == ["collision"]
    v = roll.positions[-1, :, 0] - roll.positions[-2, :, 0]
    m = np.array([3.0**2, 2.2**2])
    assert (m * v).sum() == pytest.approx(m @ [1.4, -0.8], rel=1e-9)
    assert (m * v**2).sum() == pytest.approx(m @ np.array([1.4, -0.8]) ** 2, rel=1e-9)


def test_a_block_on_a_ramp_accelerates_at_g_sin_minus_mu_cos():
    angle = math.radians(40)
    ramp = P.Ramp(2.0, 10.0, angle, 1)
    block = P.Body("green", "square", 5.0, 8.0, 0.0, 0.0, 2.5, "ramp")
    x = P.simulate(P.PhysState("ramp", "grey", (block,), ramp), frames=6).positions[:, 0]
    s = np.linalg.norm(x - x[0], axis=1)
    a = P.GRAVITY * (math.sin(angle) - P.friction("grey") * math.cos(angle))
    assert s == pytest.approx(0.5 * a * np.arange(6) ** 2, abs=1e-9)
    # carpet (mu 0.8) on a 35 degree slope (tan 0.70): static friction holds it
    gentle = P.Ramp(2.0, 10.0, math.radians(35), 1)
    held = P.simulate(P.PhysState("ramp", "brown", (block,), gentle), frames=6).positions
    assert np.ptp(held[:, 0], axis=0).max() == 0.0


def test_the_detector_recovers_the_simulated_trajectory_from_rendered_ground_truth(scenes):
    errors = np.array([P.trajectory_error(s.render(), s.state) for s in scenes])
    # measured on these 64 scenes: median 0.074 px, 95th percentile 0.44 px, max 0.72 px (two balls
    # touching mix their edge pixels); benchmarks/physics_world.py for 256 + 256 held out
    assert np.median(errors) < 0.5 and np.percentile(errors, 95) < 1.0
    # frame by frame: every body found in every frame of the ground truth
    s = scenes[0]
    assert not np.isnan(track(s.render(), [b.colour for b in s.state.bodies])).any()


def test_time_reversed_and_gravity_flipped_copies_are_clearly_further_from_the_simulator(scenes):
    gt, reversed_, flipped = [], [], []
    for s in scenes:
        video = s.render()
        gt.append(P.trajectory_error(video, s.state))
        reversed_.append(P.trajectory_error(P.time_reversed(video), s.state))
        flipped.append(P.trajectory_error(P.gravity_flipped(s.state), s.state))
    gt_, rev, flip = np.array(gt), np.array(reversed_), np.array(flipped)
    # "clearly": more than twice the ground truth's error plus 1 px (measured: 64 / 64 for both;
    # the smallest reversed error 2.4 px, flipped 8.3 px, ground truth at most 0.72 px)
    assert (rev > 2 * gt_ + 1.0).mean() >= 0.95
    assert (flip > 2 * gt_ + 1.0).mean() >= 0.95


def test_a_missing_object_costs_the_missing_penalty():
    s = P.sample_scene(3)
    blank = np.zeros_like(s.render())
    assert P.trajectory_error(blank, s.state) == P.MISSING_PX


def test_heldout_scenes_are_disjoint_from_training(scenes):
    held = P.heldout_scenes(48)
    assert all(P.is_heldout(h.state) for h in held)
    train = scenes + P.train_scenes(136, start_seed=64)
    assert not any(P.is_heldout(s.state) for s in train)
    assert not {h.state for h in held} & {s.state for s in train}
    # each held-out reason occurs: an unseen material-floor pair, a higher drop, a faster push
    pairs = {(b.colour, h.state.floor) for h in held for b in h.state.bodies}
    assert pairs & P.HELDOUT_PAIRS
    assert any(h.state.kind == "drop" and P.drop_height(h.state) > P.TRAIN_MAX_DROP for h in held)
    assert any(abs(b.vx) > P.TRAIN_MAX_SPEED for h in held for b in h.state.bodies)
    # every material and every floor is still seen in training
    assert {b.colour for s in train for b in s.state.bodies} == set(P.MATERIALS)
    assert {s.state.floor for s in train} == set(P.FLOORS)


def test_captions_say_what_happens():
    s = P.sample_scene(0)
    assert s.state.floor in s.caption and s.state.bodies[0].colour in s.caption
    drop = next(x for x in P.train_scenes(64) if x.state.kind == "drop" and x.state.bodies[0].colour == "red")
    assert "rubber ball" in drop.caption and "bounces high" in drop.caption
