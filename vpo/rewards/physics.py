"""``physics``: does a video move as the physics world's simulator says it must, from the video's own
first frame? (issue 17, item 4: PhysMaster's judge of physical plausibility, with the simulator
``vpo.data.physics`` in place of its human annotators.)

A reward source sees (videos, prompts). Each prompt must be a caption of the physics world
(``physics.parse_caption``); any other prompt is refused with a ValueError naming it, since
there is no scene to simulate. For each video:

1. **State from the first frame** (``estimate_state``; in image-to-video, the given image). The
   floor's colour gives its friction (the median colour of the floor band). The ramp's slope and
   direction come from a least-squares fit of the wedge to the pixels in the floor's colour. Each
   captioned body is found by its colour with the detector (``detector.track``), and its material
   is that colour. Its centre and size come from its coverage: each pixel is projected onto the
   line from the drawn background (floor and ramp included) to the body's colour, and the area
   gives the radius.
2. **Push speeds, which one frame cannot show**. A caption gives each push as a word, and each
   word means a band of speeds (``physics.SPEED_BANDS``). The directions follow from the words
   ("to the right") and from the scene (``collide``: the bodies move towards each other). The speed
   used is the one in the band that fits the video best: a coarse grid over the band, then a fine
   grid around its best point. So a video is judged against the best push the caption allows. The
   mid-band speed alone leaves the ground truth's rollout up to 2.2 px off (``docs/physics.md``).
3. **trajectory** = ``exp(-err / TRAJECTORY_SCALE)``, where err is the mean L2 distance in pixels
   between the bodies' tracks and the simulator's rollout from that state (``physics.track_error``;
   a body not found in a frame costs ``MISSING_PX``). The detector finds each body in each frame,
   and its centre is then measured from its coverage, as in step 1 (``body_tracks``). The scale, 2 px,
   comes from the measured distributions (``docs/physics.md``). Ground truth is within 0.13 px, so
   it scores at least 0.94. Gravity-flipped copies are at least 8 px off, so they score at most
   0.02. Time-reversed copies are 6 to 8 px off at the median, so they score about 0.05. The
   nearest ones, 0.16 px off, are elastic collisions on ice, which are almost reversible. Generated
   videos 1 to 5 px off spread over 0.6 to 0.08, which stays above a run's tie tolerance.
4. **contact**: the timing of the first contact. This is the first frame in which some body's
   acceleration (the second difference of its centre) exceeds ``CONTACT_ACCEL = 2 g``. Gravity
   and friction never exceed g, so only a bounce, a collision or a ramp's foot does. The same rule
   is applied to the detector's tracks and to the simulator's rollout. The score is
   ``1 - |frame offset| / CONTACT_WINDOW``, floored at 0. A scene with no contact on either side
   scores 1: a slide that stays a slide is right. Contact on one side only scores 0.
5. **global** = the mean of trajectory and contact, as for every source (``RewardSource.with_global``).

A video whose first frame lacks a captioned body has no state to simulate. It scores 0 on every
dimension, which is also what a missing object costs in ``physics.trajectory_error``. The raw
measure ``bodies_found`` says so. Videos must have the world's size (32 x 32) and frame rate
(8 fps): the simulator's units are those pixels and frames.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.optimize import minimize

from vpo.data import physics as P
from vpo.data import world
from vpo.data.detector import BRIGHT, track
from vpo.rewards import prompt_problem
from vpo.rewards.base import RewardSource, ScoreResult, check_videos

TRAJECTORY_SCALE = 2.0  # px: trajectory = exp(-err / TRAJECTORY_SCALE)
CONTACT_ACCEL = 2 * P.GRAVITY  # px/frame^2: more than gravity or friction can give
CONTACT_WINDOW = 4.0  # frames: a first contact this far off scores 0
BODY_WINDOW_PX = 6.0  # a body's pixels lie within this distance of its detected centre (r <= 3.5, sqrt(2) r + 1)
COARSE_STEP, FINE_STEP = 0.1, 0.02  # px/frame: the speed fit's two grids
FIT_SUBSTEPS = 16  # the speed fit simulates at a coarser sub-step; the scored rollout at physics.SUBSTEPS


def read_caption(prompt: str) -> P.CaptionFacts:
    facts = P.parse_caption(prompt)
    if facts is None:
        raise ValueError(prompt_problem("physics", [prompt]))
    return facts


class NotInFirstFrame(ValueError):
    """A captioned body the first frame does not show: there is no state to simulate."""


# ---------------------------------------------------------------------------------------------
# 1.-2. The state


def estimate_state(frame: np.ndarray, facts: P.CaptionFacts) -> P.PhysState:
    """The first-frame state of ``frame`` (uint8 (H, W, 3)) for a scene ``facts`` describes, with
    each push at its speed word's mid-band (``fit_speeds`` refines them against a video)."""
    rgb = frame.astype(np.float64) / 255.0
    floor = _floor_colour(rgb)
    ramp = _fit_ramp(rgb, floor) if facts.kind == "ramp" else None
    found = body_tracks(frame[None], facts, _static(floor, ramp))
    # not found, or found by the detector but with no coverage over the drawn background (a frame
    # whose floor is not the colour of any floor)
    missing = [c for c, area in zip(facts.colours, found.areas[0]) if not area > 0]
    if missing:
        raise NotInFirstFrame(f"the first frame shows no {' and no '.join(missing)} body")
    shape = "square" if facts.kind in ("slide", "ramp") else "circle"
    on = {"drop": "air", "slide": "floor", "collide": "floor", "ramp": "ramp"}[facts.kind]
    bodies = []
    for (x, y), area, colour in zip(found.centres[0], found.areas[0], facts.colours):
        r = math.sqrt(area / (math.pi if shape == "circle" else 4.0))  # a block of half-side r covers 4 r^2
        bodies.append(P.Body(colour, shape, float(x), float(y), 0.0, 0.0, r, on))
    state = P.PhysState(facts.kind, floor, tuple(bodies), ramp)
    return with_speeds(state, facts, [sum(P.SPEED_BANDS[w]) / 2 for w in facts.speeds])


@dataclass(frozen=True)
class Tracks:
    centres: np.ndarray  # (F, bodies, 2): x, y in px, NaN where the detector does not find the body
    areas: np.ndarray  # (F, bodies): px^2


def body_tracks(video: np.ndarray, facts: P.CaptionFacts, static: np.ndarray) -> Tracks:
    """Each captioned body in each frame of ``video``: found by the detector (``detector.track``),
    its centre and area then measured from its coverage over ``static`` (the frame without bodies),
    which undoes the renderer's blending; the detector's thresholded centroid alone jitters by a
    few tenths of a pixel as an edge crosses pixels, as much as a contact's impulse."""
    found = track(video, facts.colours)
    rgb = video.astype(np.float64) / 255.0
    centres, areas = np.full(found.shape, np.nan), np.full(found.shape[:2], np.nan)
    for f, i in itertools.product(range(len(video)), range(len(facts.colours))):
        if not np.isnan(found[f, i]).any():
            others = [found[f, j] for j in range(len(facts.colours)) if j != i]
            x, y, area = _coverage(rgb[f], static, facts.colours[i], found[f, i], others)
            centres[f, i], areas[f, i] = (x, y) if area > 0 else found[f, i], area
    return Tracks(centres, areas)


def with_speeds(state: P.PhysState, facts: P.CaptionFacts, speeds) -> P.PhysState:
    """``state`` with its pushes at ``speeds`` (px/frame, one per speed word), each in its direction."""
    bodies = list(state.bodies)
    for i, speed in enumerate(speeds):
        # a slide's named side; a collision's bodies move towards each other
        sign = facts.direction if facts.kind == "slide" else int(np.sign(bodies[1 - i].x - bodies[i].x))
        bodies[i] = replace(bodies[i], vx=sign * float(speed))
    return replace(state, bodies=tuple(bodies))


def fit_speeds(state: P.PhysState, facts: P.CaptionFacts, tracks: np.ndarray) -> P.PhysState:
    """``state`` with the pushes, each within its word's band, whose rollout is nearest ``tracks``
    (the video's detected centres): a grid of ``COARSE_STEP`` over the bands, then one of
    ``FINE_STEP`` within a coarse step of its best point."""
    if not facts.speeds:
        return state
    bands = [P.SPEED_BANDS[w] for w in facts.speeds]

    def error(speeds) -> float:
        rollout = P.simulate(with_speeds(state, facts, speeds), frames=len(tracks), substeps=FIT_SUBSTEPS)
        return P.track_error(tracks, rollout.positions)

    def grid(lo: float, hi: float, step: float) -> np.ndarray:
        return np.linspace(lo, hi, max(2, round((hi - lo) / step) + 1))

    best = min(itertools.product(*(grid(lo, hi, COARSE_STEP) for lo, hi in bands)), key=error)
    fine = [grid(max(lo, b - COARSE_STEP), min(hi, b + COARSE_STEP), FINE_STEP) for (lo, hi), b in zip(bands, best)]
    return with_speeds(state, facts, min(itertools.product(*fine), key=error))


def _static(floor: str, ramp: P.Ramp | None) -> np.ndarray:
    """The frame without bodies, float (H, W, 3) in [0, 1]: background, floor band, ramp."""
    empty = P.Rollout(np.zeros((1, 0, 2)), np.zeros((1, 0)), ())
    return P.render(P.PhysState("ramp", floor, (), ramp), empty)[0] / 255.0


def _floor_colour(rgb: np.ndarray) -> str:
    """The floor whose colour is nearest the band below ``FLOOR_Y`` (every row of it is floor)."""
    band = np.median(rgb[math.ceil(P.FLOOR_Y) :].reshape(-1, 3), axis=0)
    return min(P.FLOORS, key=lambda f: float(((np.array(P.FLOORS[f][2]) - band) ** 2).sum()))


def _projection(rgb: np.ndarray, base: np.ndarray, colour) -> np.ndarray:
    """Per pixel, how much of ``colour`` is drawn over ``base``: the renderer draws
    ``base * (1 - a) + colour * a``, so ``a`` is the projection on the line from base to colour."""
    towards = np.asarray(colour) - base
    return ((rgb - base) * towards).sum(-1) / np.maximum((towards**2).sum(-1), 1e-9)


def _coverage(rgb, base, colour: str, centre, others) -> tuple[float, float, float]:
    """Centre x, y and area (px^2) of the body of ``colour`` near ``centre``: its coverage within
    ``BODY_WINDOW_PX``, pixels nearer another body's centre left out (area 0: none)."""
    py, px = np.mgrid[0 : rgb.shape[0], 0 : rgb.shape[1]].astype(np.float64) + 0.5
    near = (px - centre[0]) ** 2 + (py - centre[1]) ** 2
    mine = near < BODY_WINDOW_PX**2
    for o in others:
        if not np.isnan(o).any():
            mine &= near < (px - o[0]) ** 2 + (py - o[1]) ** 2
    a = np.where(mine, np.clip(_projection(rgb, base, world.COLOURS[colour]), 0.0, 1.0), 0.0)
    area = float(a.sum())
    if area <= 0:
        return float("nan"), float("nan"), 0.0
    return float((a * px).sum() / area), float((a * py).sum() / area), area


def _fit_ramp(rgb: np.ndarray, floor: str) -> P.Ramp:
    """The incline whose drawn wedge best matches the pixels in the floor's colour above the floor
    (least squares on the coverage; pixels next to a body left out), both directions tried."""
    h, w = rgb.shape[:2]
    py, px = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    cover = _projection(rgb, _static(floor, None), P.FLOORS[floor][2])
    bright = np.pad(rgb.max(-1) >= BRIGHT, 1)
    near_body = np.zeros((h, w), bool)
    for dy, dx in itertools.product(range(3), range(3)):  # the body's pixels grown by one
        near_body |= bright[dy : dy + h, dx : dx + w]
    use = ~near_body & (py < P.FLOOR_Y)
    columns = np.nonzero(((cover > 0.5) & use).any(0))[0]
    if len(columns) == 0:
        raise NotInFirstFrame("the first frame shows no ramp")
    height = float(np.where(use, cover, 0.0).sum(0).max())
    run = float(columns[-1] + 1 - columns[0])
    fits = []
    for direction, x_top in ((1, float(columns[0])), (-1, float(columns[-1] + 1))):

        def loss(p, direction=direction) -> float:
            ramp = P.Ramp(p[0], p[1], float(np.clip(p[2], 0.05, 1.5)), direction)
            return float(((cover - P.wedge_coverage(ramp, px, py))[use] ** 2).sum())

        start = [x_top, P.FLOOR_Y - height, math.atan2(height, run)]
        fit = minimize(loss, start, method="Nelder-Mead", options={"xatol": 1e-3, "fatol": 1e-6, "maxiter": 600})
        fits.append((fit.fun, P.Ramp(float(fit.x[0]), float(fit.x[1]), float(np.clip(fit.x[2], 0.05, 1.5)), direction)))
    return min(fits, key=lambda f: f[0])[1]


# ---------------------------------------------------------------------------------------------
# 3.-4. The comparison


def first_contact(positions: np.ndarray) -> int | None:
    """The first frame at which some body's acceleration exceeds ``CONTACT_ACCEL`` (centres
    (F, bodies, 2), NaN where not found), or None."""
    accel = np.linalg.norm(positions[2:] - 2 * positions[1:-1] + positions[:-2], axis=-1)
    hits = np.nonzero((np.nan_to_num(accel, nan=0.0) > CONTACT_ACCEL).any(-1))[0]
    return int(hits[0]) + 1 if len(hits) else None


def contact_score(video_frame: int | None, simulated_frame: int | None) -> float:
    if video_frame is None and simulated_frame is None:
        return 1.0  # no contact, as the simulator says
    if video_frame is None or simulated_frame is None:
        return 0.0
    return max(0.0, 1.0 - abs(video_frame - simulated_frame) / CONTACT_WINDOW)


@dataclass(frozen=True)
class Judgement:
    trajectory_error: float  # px
    contact_video: int | None  # frame of the first contact in the video, None if none
    contact_simulated: int | None  # ... in the simulator's rollout
    state: P.PhysState | None  # the estimated first-frame state (None: a body missing from it)

    @property
    def trajectory(self) -> float:
        return math.exp(-self.trajectory_error / TRAJECTORY_SCALE) if self.state is not None else 0.0

    @property
    def contact(self) -> float:
        return contact_score(self.contact_video, self.contact_simulated) if self.state is not None else 0.0


def judge(video: np.ndarray, facts: P.CaptionFacts) -> Judgement:
    """Compare one uint8 (F, H, W, 3) video with the simulator's rollout from its first frame."""
    try:
        state = estimate_state(video[0], facts)
    except NotInFirstFrame:
        return Judgement(P.MISSING_PX, None, None, None)
    tracks = body_tracks(video, facts, _static(state.floor, state.ramp)).centres
    state = fit_speeds(state, facts, tracks)
    rollout = P.simulate(state, frames=len(video))
    return Judgement(
        P.track_error(tracks, rollout.positions), first_contact(tracks), first_contact(rollout.positions), state
    )


class PhysicsSource(RewardSource):
    name = "physics"

    def score(self, videos, prompts: list[str]) -> ScoreResult:
        videos = check_videos(videos, prompts)
        if tuple(videos.shape[2:4]) != (P.HEIGHT, P.WIDTH):
            raise ValueError(
                f"the physics reward scores videos of the physics world's size {P.HEIGHT} x {P.WIDTH} (its "
                f"simulator works in those pixels), got {videos.shape[2]} x {videos.shape[3]}"
            )
        if self.video_fps != P.FPS:
            raise ValueError(
                f"the physics reward scores videos at the physics world's {P.FPS} fps, got {self.video_fps}"
            )
        facts = [read_caption(p) for p in prompts]
        judged = [judge(v, f) for v, f in zip(videos.numpy(), facts)]

        def column(values) -> torch.Tensor:
            return torch.tensor([float("nan") if v is None else float(v) for v in values])

        offsets = [
            None if j.contact_video is None or j.contact_simulated is None else j.contact_video - j.contact_simulated
            for j in judged
        ]
        result = ScoreResult(
            scores={"trajectory": column(j.trajectory for j in judged), "contact": column(j.contact for j in judged)},
            raw={
                "trajectory_error": column(j.trajectory_error for j in judged),
                "contact_offset": column(offsets),  # frames, video minus simulator; NaN: not both
                "bodies_found": column(float(j.state is not None) for j in judged),
            },
        )
        return self.with_global(result)
