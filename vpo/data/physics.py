"""A physics world for image-to-video (issue 17, PhysMaster): scenes whose outcome follows from
what the first frame shows, rolled out by a simulator that is the ground truth.

Four kinds of scene, each on a floor drawn as a dim band whose colour sets its friction:

- ``drop``: a ball dropped from rest bounces; its restitution is set by its material = its colour;
- ``slide``: a block pushed along the floor slows at ``mu * g``, ``mu`` set by the floor's colour;
- ``collide``: two balls slide towards each other and collide elastically in 1-D (mass = area);
- ``ramp``: a block slides down an incline (drawn in the floor's colour) and on along the floor.

Units (``docs/physics.md``): positions in pixels of the 32 x 32 frame (x right, y *down*, pixel
centres at ``i + 0.5`` as ``vpo.data.world``), time in frames (8 fps, so a frame is 1/8 s),
velocities in px/frame, gravity ``GRAVITY`` px/frame^2 pointing down (+y).

Everything is a pure function of an integer seed. ``simulate(state)`` rolls a first-frame
``PhysState`` out at a fine sub-step and returns the bodies' centres at the video's frame times;
``render`` draws them with the world's look; ``trajectory_error`` compares a video's detected
trajectories (``detector.track``) with that rollout.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass

import numpy as np

from vpo.data import detector, world
from vpo.data.world import FRAMES, HEIGHT, WIDTH

FPS = world.FPS  # the videos have the world's size and frame rate: 16 x 32 x 32 at 8 fps

GRAVITY = 0.25  # px/frame^2, +y (down): a drop of 28 px takes 15 frames, the whole clip
SUBSTEPS = 64  # integration sub-steps per frame
FLOOR_Y = 28.0  # the floor's top surface, px; the band below it is drawn in the floor's colour
REST_SPEED = 0.05  # px/frame: a bounce slower than this ends the bouncing (no Zeno sequence)
MISSING_PX = 16.0  # trajectory error of a frame where the object is not found (half the frame)
KINDS = ("drop", "slide", "collide", "ramp")

# Object material by colour: (word, coefficient of restitution e = rebound speed / impact speed).
# The colours are the world's bright, saturated ones, so the detector finds them.
MATERIALS: dict[str, tuple[str, float]] = {
    "red": ("rubber", 0.85),
    "orange": ("leather", 0.70),
    "purple": ("plastic", 0.55),
    "green": ("wooden", 0.40),
    "white": ("clay", 0.10),
}
# Floor by colour: (surface, coefficient of kinetic friction mu, RGB). The RGB is dim (max channel
# <= 0.40 < detector.BRIGHT) so the detector never takes the floor or the ramp for an object.
FLOORS: dict[str, tuple[str, float, tuple[float, float, float]]] = {
    "blue": ("ice", 0.03, (0.10, 0.18, 0.40)),
    "grey": ("stone", 0.20, (0.30, 0.30, 0.30)),
    "green": ("grass", 0.45, (0.10, 0.36, 0.12)),
    "brown": ("carpet", 0.80, (0.38, 0.22, 0.08)),
}
BACKGROUND = "black"  # world.BACKGROUNDS: the darkest, so floors and ramps stand out

# The split (``is_heldout``): a material never appears on these floors in training, and drop
# heights / push speeds above the training maxima are held out.
HELDOUT_PAIRS = frozenset(
    {("red", "green"), ("orange", "brown"), ("purple", "blue"), ("green", "grey"), ("white", "blue")}
)
TRAIN_MAX_DROP = 16.0  # px from the ball's bottom to the floor; held out: up to HELDOUT_MAX_DROP
HELDOUT_MAX_DROP = 21.0
TRAIN_MAX_SPEED = 1.6  # px/frame, a push's initial speed; held out: up to HELDOUT_MAX_SPEED
HELDOUT_MAX_SPEED = 2.2
MIN_REVERSAL = 2.5  # px: a scene's mean distance from its own time reversal, at least


@dataclass(frozen=True)
class Body:
    colour: str  # MATERIALS key
    shape: str  # "circle" (ball) or "square" (block)
    x: float  # centre, px
    y: float
    vx: float  # px/frame
    vy: float
    r: float  # radius / half-side, px; mass = r^2 (area at one density)
    on: str  # "air", "floor" or "ramp"


@dataclass(frozen=True)
class Ramp:
    x_top: float  # the incline's top corner, px
    y_top: float
    angle: float  # radians above the horizontal
    direction: int  # +1 descends to the right, -1 to the left

    @property
    def x_bottom(self) -> float:
        return self.x_top + self.direction * (FLOOR_Y - self.y_top) / math.tan(self.angle)


@dataclass(frozen=True)
class PhysState:
    """Everything the first frame fixes: what ``simulate`` needs to roll the scene out."""

    kind: str
    floor: str  # FLOORS key
    bodies: tuple[Body, ...]
    ramp: Ramp | None = None


@dataclass(frozen=True)
class Rollout:
    positions: np.ndarray  # (frames, bodies, 2): centre x, y at each frame time, px
    angles: np.ndarray  # (frames, bodies): drawing rotation, radians (a block on a ramp)
    contacts: tuple[tuple[int, str], ...]  # (frame, "bounce" | "collision") events, frame = floor(t)


@dataclass(frozen=True)
class PhysScene:
    seed: int
    state: PhysState
    caption: str
    heldout: bool

    def rollout(self) -> Rollout:
        return simulate(self.state)

    def render(self) -> np.ndarray:
        """uint8 frames (F, H, W, 3)."""
        return render(self.state, self.rollout())


def restitution(colour: str) -> float:
    return MATERIALS[colour][1]


def friction(floor: str) -> float:
    return FLOORS[floor][1]


# ---------------------------------------------------------------------------------------------
# The simulator


def simulate(state: PhysState, frames: int = FRAMES, gravity: float = GRAVITY, substeps: int = SUBSTEPS) -> Rollout:
    """Roll ``state`` out for ``frames`` frames; frame 0 is the state itself.

    Each sub-step of ``dt = 1 / substeps`` frames, for each body in its contact mode:

    1. on a ramp: slides along the incline with a = g (sin th - mu cos th) (Newton's second law
       with kinetic friction mu N, N = m g cos th); held by static friction while a <= 0 at rest;
       leaves the ramp when its centre reaches the floor's height, keeping the horizontal part
       of its velocity (the kink's impulse removes the part normal to the floor);
    2. in the air: constant acceleration g (exact: x += v dt + g dt^2 / 2); on reaching the
       floor at the exact crossing time within the sub-step, v_y -> -e v_y (Newton's law of
       restitution); a rebound slower than ``REST_SPEED`` leaves it resting on the floor;
    3. on the floor: decelerates at mu g against its motion (Coulomb friction) until it stops,
       exactly at v = 0;
    4. two bodies whose extents overlap along x while approaching collide elastically in 1-D:
       v1' = ((m1 - m2) v1 + 2 m2 v2) / (m1 + m2) and symmetrically (``elastic``), which keeps
       momentum and kinetic energy.

    With ``gravity`` <= 0 (a gravity-flipped world) nothing presses a body onto the floor or the
    ramp, so every body is in the air from the first sub-step.
    """
    bodies = [_Mutable.of(b) for b in state.bodies]
    mu, ramp = friction(state.floor), state.ramp
    positions = np.zeros((frames, len(bodies), 2))
    angles = np.zeros((frames, len(bodies)))
    contacts: list[tuple[int, str]] = []
    dt = 1.0 / substeps
    for f in range(frames):
        for i, b in enumerate(bodies):
            positions[f, i] = b.x, b.y
            angles[f, i] = ramp.direction * ramp.angle if (b.on == "ramp" and ramp is not None) else 0.0
        if f == frames - 1:
            break
        for k in range(substeps):
            t = f + k * dt
            for b in bodies:
                if gravity <= 0 and b.on != "air":
                    b.on = "air"
                if b.on == "ramp" and ramp is not None:  # 1.
                    _step_ramp(b, ramp, mu, gravity, dt)
                elif b.on == "air":  # 2.
                    if _step_air(b, gravity, dt):
                        contacts.append((int(t), "bounce"))
                else:  # 3.
                    _step_floor(b, mu, gravity, dt)
            for i in range(len(bodies)):  # 4.
                for j in range(i + 1, len(bodies)):
                    if _collide(bodies[i], bodies[j]):
                        contacts.append((int(t), "collision"))
    return Rollout(positions, angles, tuple(contacts))


@dataclass
class _Mutable:
    x: float
    y: float
    vx: float
    vy: float
    r: float
    e: float
    on: str

    @classmethod
    def of(cls, b: Body) -> _Mutable:
        return cls(b.x, b.y, b.vx, b.vy, b.r, restitution(b.colour), b.on)


def _step_ramp(b: _Mutable, ramp: Ramp, mu: float, g: float, dt: float) -> None:
    th = ramp.angle
    a = g * (math.sin(th) - mu * math.cos(th))  # along the slope, downhill positive
    u = math.hypot(b.vx, b.vy)  # speed along the slope (it only ever moves downhill)
    if u == 0.0 and a <= 0.0:
        return  # static friction holds it
    du = a * dt
    if u + du < 0.0:  # friction stops it within the sub-step: s = -u^2 / (2a)
        ds, u = -u * u / (2 * a), 0.0
    else:
        ds, u = u * dt + 0.5 * a * dt * dt, u + du
    cx, cy = ramp.direction * math.cos(th), math.sin(th)  # unit vector down the slope (y down)
    b.x, b.y = b.x + cx * ds, b.y + cy * ds
    b.vx, b.vy = cx * u, cy * u
    if b.y >= FLOOR_Y - b.r:  # its centre reached the floor's offset line: onto the floor
        b.y, b.vy, b.on = FLOOR_Y - b.r, 0.0, "floor"


def _step_air(b: _Mutable, g: float, dt: float) -> bool:
    """One free-flight sub-step; True when it bounced."""
    bottom = FLOOR_Y - b.r
    y1 = b.y + b.vy * dt + 0.5 * g * dt * dt
    if not (y1 > bottom and b.vy + g * dt > 0):
        b.x, b.y, b.vy = b.x + b.vx * dt, y1, b.vy + g * dt
        return False
    # the crossing time tau: y + vy tau + g tau^2 / 2 = bottom, the first root in [0, dt], in the
    # form 2 gap / (vy + sqrt(vy^2 + 2 g gap)) that also holds for g = 0
    gap = bottom - b.y
    root = b.vy + math.sqrt(max(b.vy * b.vy + 2 * g * gap, 0.0))
    tau = 2 * gap / root if root > 0 else 0.0
    tau = min(max(tau, 0.0), dt)
    v_in = b.vy + g * tau
    v_out = -b.e * v_in
    rest = dt - tau
    b.x += b.vx * dt
    if -v_out < REST_SPEED:
        b.y, b.vy, b.on = bottom, 0.0, "floor"
    else:
        b.y = min(bottom + v_out * rest + 0.5 * g * rest * rest, bottom)
        b.vy = v_out + g * rest
    return True


def _step_floor(b: _Mutable, mu: float, g: float, dt: float) -> None:
    if b.vx == 0.0:
        return
    a = -math.copysign(mu * g, b.vx)
    if abs(b.vx) <= mu * g * dt:  # stops within the sub-step after v^2 / (2 mu g)
        b.x += -b.vx * b.vx / (2 * a)
        b.vx = 0.0
    else:
        b.x += b.vx * dt + 0.5 * a * dt * dt
        b.vx += a * dt


def elastic(m1: float, v1: float, m2: float, v2: float) -> tuple[float, float]:
    """Velocities after a 1-D elastic collision (conservation of momentum and kinetic energy)."""
    return ((m1 - m2) * v1 + 2 * m2 * v2) / (m1 + m2), ((m2 - m1) * v2 + 2 * m1 * v1) / (m1 + m2)


def _collide(p: _Mutable, q: _Mutable) -> bool:
    if abs(p.x - q.x) >= p.r + q.r or (q.vx - p.vx) * (q.x - p.x) >= 0:
        return False  # apart, or not approaching
    p.vx, q.vx = elastic(p.r**2, p.vx, q.r**2, q.vx)
    return True


# ---------------------------------------------------------------------------------------------
# Rendering


def render(state: PhysState, rollout: Rollout | None = None) -> np.ndarray:
    """uint8 frames (F, H, W, 3): the world's dark background, the floor band and ramp wedge in the
    floor's dim colour, the bodies in their bright colours at the rollout's positions."""
    rollout = simulate(state) if rollout is None else rollout
    top, bottom = (np.array(c) for c in world.BACKGROUNDS[BACKGROUND])
    shade = np.linspace(0, 1, HEIGHT)[:, None, None]
    frame = (top * (1 - shade) + bottom * shade) * np.ones((HEIGHT, WIDTH, 3))
    py, px = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64) + 0.5
    floor_rgb = np.array(FLOORS[state.floor][2])
    cover = np.clip(py - FLOOR_Y + 0.5, 0.0, 1.0)  # antialiased band below the floor line
    if state.ramp is not None:
        cover = np.maximum(cover, wedge_coverage(state.ramp, px, py))
    frame = frame * (1 - cover[..., None]) + floor_rgb * cover[..., None]
    frames = rollout.positions.shape[0]
    video = np.repeat(frame[None], frames, axis=0)
    for i, b in enumerate(state.bodies):
        colour = np.array(world.COLOURS[b.colour])
        for f in range(frames):
            x, y = rollout.positions[f, i]
            if b.shape == "circle":
                a = world._coverage("circle", px, py, x, y, b.r)
            else:
                a = _block_coverage(px, py, x, y, b.r, rollout.angles[f, i])
            video[f] = video[f] * (1 - a[..., None]) + colour * a[..., None]
    return np.round(video * 255).astype(np.uint8)


def _block_coverage(px: np.ndarray, py: np.ndarray, cx: float, cy: float, r: float, phi: float) -> np.ndarray:
    """A square of half-side r rotated by phi (image coordinates), 1 px antialiased edge."""
    dx, dy = px - cx, py - cy
    u = dx * math.cos(phi) + dy * math.sin(phi)
    v = -dx * math.sin(phi) + dy * math.cos(phi)
    return np.clip(0.5 - (np.maximum(np.abs(u), np.abs(v)) - r), 0.0, 1.0)


def wedge_coverage(ramp: Ramp, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """The solid right triangle under the incline: top corner, its foot on the floor, the bottom."""
    th, s = ramp.angle, ramp.direction
    # inside: below the incline line (signed distance along its upward normal), above the floor,
    # and on the wedge's side of the vertical through the top corner
    normal_up = (s * math.sin(th), -math.cos(th))
    d_incline = (px - ramp.x_top) * normal_up[0] + (py - ramp.y_top) * normal_up[1]
    d_back = -s * (px - ramp.x_top)
    return np.clip(0.5 - np.maximum(d_incline, d_back), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Scenes, captions and the split


def sample_scene(seed: int, heldout: bool = False) -> PhysScene:
    """The scene of ``seed``: training (``heldout=False``) or held-out (``is_heldout``) scenes only,
    drawn by rejection from one seeded generator, so the same seed gives the same scene."""
    rng = np.random.default_rng(seed)
    kind = KINDS[int(rng.integers(len(KINDS)))]
    while True:
        state = _draw(rng, kind, heldout)
        if is_heldout(state) != heldout:
            continue
        rollout = simulate(state)
        if _valid(state, rollout):
            return PhysScene(seed, state, caption(rng, state, rollout), heldout)


def is_heldout(state: PhysState) -> bool:
    """Held out: a material on a floor it never appears on in training, a drop from higher than
    ``TRAIN_MAX_DROP`` or a push faster than ``TRAIN_MAX_SPEED``."""
    if any((b.colour, state.floor) in HELDOUT_PAIRS for b in state.bodies):
        return True
    if state.kind == "drop" and drop_height(state) > TRAIN_MAX_DROP:
        return True
    return any(abs(b.vx) > TRAIN_MAX_SPEED for b in state.bodies)


def heldout_scenes(n: int, start_seed: int = 10_000_000) -> list[PhysScene]:
    """``n`` held-out scenes, seeds disjoint from training's range (as ``world.heldout_scenes``)."""
    return [sample_scene(start_seed + i, heldout=True) for i in range(n)]


def train_scenes(n: int, start_seed: int = 0) -> list[PhysScene]:
    return [sample_scene(start_seed + i) for i in range(n)]


def drop_height(state: PhysState) -> float:
    """Height of the first body's bottom above the floor, px."""
    b = state.bodies[0]
    return FLOOR_Y - b.r - b.y


def _draw(rng: np.random.Generator, kind: str, heldout: bool) -> PhysState:
    colours = list(MATERIALS)
    floor = str(rng.choice(list(FLOORS)))
    max_drop = HELDOUT_MAX_DROP if heldout else TRAIN_MAX_DROP
    max_speed = HELDOUT_MAX_SPEED if heldout else TRAIN_MAX_SPEED
    r = float(rng.uniform(2.5, 3.5))
    if kind == "drop":
        colour = str(rng.choice(colours))
        h = float(rng.uniform(6.0, max_drop))
        x = float(rng.uniform(r + 2, WIDTH - r - 2))
        return PhysState(kind, floor, (Body(colour, "circle", x, FLOOR_Y - r - h, 0.0, 0.0, r, "air"),))
    if kind == "slide":
        colour = str(rng.choice(colours))
        v = float(rng.uniform(0.6, max_speed)) * (1 if rng.random() < 0.5 else -1)
        x = float(rng.uniform(r + 2, WIDTH / 2))  # starts on the side it comes from
        x = x if v > 0 else WIDTH - x
        return PhysState(kind, floor, (Body(colour, "square", x, FLOOR_Y - r, v, 0.0, r, "floor"),))
    if kind == "collide":
        c1, c2 = (str(c) for c in rng.choice(colours, size=2, replace=False))
        r2 = float(rng.uniform(2.0, 3.5))
        x1 = float(rng.uniform(r + 1, 13.0))
        x2 = float(rng.uniform(19.0, WIDTH - r2 - 1))
        v1, v2 = float(rng.uniform(0.5, max_speed)), -float(rng.uniform(0.5, max_speed))
        return PhysState(
            kind,
            floor,
            (
                Body(c1, "circle", x1, FLOOR_Y - r, v1, 0.0, r, "floor"),
                Body(c2, "circle", x2, FLOOR_Y - r2, v2, 0.0, r2, "floor"),
            ),
        )
    # ramp: a block at rest near the top of an incline
    colour = str(rng.choice(colours))
    r = float(rng.uniform(2.2, 3.0))
    angle = math.radians(float(rng.uniform(25.0, 55.0)))
    direction = 1 if rng.random() < 0.5 else -1
    y_top = float(rng.uniform(8.0, 16.0))
    run = (FLOOR_Y - y_top) / math.tan(angle)
    x_top = float(rng.uniform(1.0, max(1.5, WIDTH - 8 - run)))
    if direction < 0:
        x_top = WIDTH - x_top
    ramp = Ramp(x_top, y_top, angle, direction)
    s0 = r + 0.5  # along the slope from the top corner, so the block does not hang over it
    cx, cy = direction * math.cos(angle), math.sin(angle)
    nx, ny = direction * math.sin(angle), -math.cos(angle)  # the incline's upward normal
    x = x_top + cx * s0 + nx * r
    y = y_top + cy * s0 + ny * r
    return PhysState(kind, floor, (Body(colour, "square", x, y, 0.0, 0.0, r, "ramp"),), ramp)


def _valid(state: PhysState, rollout: Rollout) -> bool:
    """Bodies stay whole inside the frame, the rollout differs from its own time reversal by at
    least ``MIN_REVERSAL`` px on average (so the arrow of time is visible), and a collide scene
    collides within the clip."""
    pos = rollout.positions
    for i, b in enumerate(state.bodies):
        margin = b.r * (math.sqrt(2) if b.shape == "square" else 1.0) + 0.5
        if pos[:, i, 0].min() < margin or pos[:, i, 0].max() > WIDTH - margin or pos[:, i, 1].min() < margin:
            return False
    if np.linalg.norm(pos - pos[::-1], axis=-1).mean() < MIN_REVERSAL:
        return False  # played backwards it would look about the same (e.g. a ball that comes back)
    if state.kind == "collide":
        return any(kind == "collision" and 2 <= f <= FRAMES - 4 for f, kind in rollout.contacts)
    return True


# Captions: one template set per kind; ``{floor}`` is "a blue floor".
TEMPLATES = {
    "drop": (
        "{a_colour} {material} ball dropped from {height} {outcome} on {floor}",
        "{floor_cap}: {a_colour} {material} ball falls from {height} and {outcome}",
    ),
    "slide": (
        "{a_colour} {material} block pushed {speed} to the {side} {outcome} on {floor}",
        "on {floor}, {a_colour} {material} block is pushed {speed} to the {side} and {outcome}",
    ),
    "collide": (
        "a {size1} {colour} ball pushed {speed} and a {size2} {colour2} ball pushed {speed2} slide towards each"
        " other on {floor} and collide",
        "on {floor}, a {size1} {colour} ball pushed {speed} hits a {size2} {colour2} ball pushed {speed2} head-on",
    ),
    "ramp": (
        "{a_colour} {material} block slides down a {steep} ramp onto {floor}",
        "on {floor}, {a_colour} {material} block slides down a {steep} ramp and {outcome}",
    ),
}


def caption(rng: np.random.Generator, state: PhysState, rollout: Rollout) -> str:
    b = state.bodies[0]
    floor = f"a {state.floor} floor"
    fields = {
        "a_colour": ("an " if b.colour[0] in "aeiou" else "a ") + b.colour,
        "colour": b.colour,
        "material": MATERIALS[b.colour][0],
        "floor": floor,
        "floor_cap": "A" + floor[1:],
    }
    if state.kind == "drop":
        h = drop_height(state)
        e = restitution(b.colour)
        fields["height"] = "very high" if h > TRAIN_MAX_DROP else "high" if h > 12 else "low" if h < 9 else "mid-height"
        fields["outcome"] = "bounces high" if e >= 0.7 else "bounces" if e >= 0.35 else "barely bounces"
    elif state.kind == "slide":
        fields["speed"] = _speed_word(b.vx)
        fields["side"] = "right" if b.vx > 0 else "left"
        fields["outcome"] = "stops" if _stops(state, rollout) else "keeps sliding"
    elif state.kind == "collide":
        c = state.bodies[1]
        fields["colour2"] = c.colour
        fields["speed"], fields["speed2"] = _speed_word(b.vx), _speed_word(c.vx)
        fields["size1"], fields["size2"] = ("big", "small") if b.r >= c.r else ("small", "big")
    else:
        assert state.ramp is not None
        fields["steep"] = "steep" if state.ramp.angle > math.radians(40) else "gentle"
        fields["outcome"] = "stops" if _stops(state, rollout) else "keeps sliding"
    return str(rng.choice(TEMPLATES[state.kind])).format(**fields)


# What each speed word of a caption can mean, px/frame: the bounds ``_speed_word`` draws its words
# by (pushes are drawn from 0.5 px/frame up), so a push's speed is known to lie in its word's band.
SPEED_BANDS = {"gently": (0.5, 1.1), "fast": (1.1, TRAIN_MAX_SPEED), "very fast": (TRAIN_MAX_SPEED, HELDOUT_MAX_SPEED)}


@dataclass(frozen=True)
class CaptionFacts:
    """What a caption of the physics world says (``parse_caption``): the scene's kind, its bodies'
    colours in the order the caption names them, the floor's colour, each push's speed word
    (``slide``: one, ``collide``: two, else none) and a slide's direction (+1 right, -1 left, else 0)."""

    kind: str
    colours: tuple[str, ...]
    floor: str
    speeds: tuple[str, ...] = ()
    direction: int = 0


def _alternatives(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_COLOURS = _alternatives(MATERIALS)
_FIELDS = {
    "a_colour": rf"an? (?P<colour>{_COLOURS})",
    "colour": rf"(?P<colour>{_COLOURS})",
    "colour2": rf"(?P<colour2>{_COLOURS})",
    "material": rf"(?P<material>{_alternatives(m for m, _ in MATERIALS.values())})",
    "floor": rf"a (?P<floor>{_alternatives(FLOORS)}) floor",
    "floor_cap": rf"a (?P<floor>{_alternatives(FLOORS)}) floor",
    "height": "(?:very high|high|mid-height|low)",
    "outcome": "(?:bounces high|barely bounces|bounces|stops|keeps sliding)",
    "speed": rf"(?P<speed>{_alternatives(SPEED_BANDS)})",
    "speed2": rf"(?P<speed2>{_alternatives(SPEED_BANDS)})",
    "side": "(?P<side>left|right)",
    "size1": "(?:big|small)",
    "size2": "(?:big|small)",
    "steep": "(?:steep|gentle)",
}
# each template as a regular expression, its fields as groups (case-insensitive: "A blue floor: ...")
_CAPTION_PATTERNS = [
    (
        kind,
        re.compile(
            "".join(
                re.escape(text) + (_FIELDS[name] if name else "") for text, name, _, _ in string.Formatter().parse(t)
            ),
            re.IGNORECASE,
        ),
    )
    for kind, templates in TEMPLATES.items()
    for t in templates
]


def parse_caption(text: str) -> CaptionFacts | None:
    """What a caption written by ``caption`` says, or None if ``text`` is not one: the inverse of
    ``TEMPLATES`` (a wording outside them, or a material that contradicts its colour, is not read)."""
    text = " ".join(text.split())
    for kind, pattern in _CAPTION_PATTERNS:
        m = pattern.fullmatch(text)
        if m is None:
            continue
        g = {k: v.lower() for k, v in m.groupdict().items() if v is not None}
        if "material" in g and MATERIALS[g["colour"]][0] != g["material"]:
            return None
        colours = (g["colour"], g["colour2"]) if kind == "collide" else (g["colour"],)
        speeds = tuple(g[k] for k in ("speed", "speed2") if k in g)
        direction = {"right": 1, "left": -1}.get(g.get("side", ""), 0)
        return CaptionFacts(kind, colours, g["floor"], speeds, direction)
    return None


def _speed_word(v: float) -> str:
    """A push's speed in words: the caption carries what a single frame cannot show."""
    return "very fast" if abs(v) > TRAIN_MAX_SPEED else "fast" if abs(v) > 1.1 else "gently"


def _stops(state: PhysState, rollout: Rollout) -> bool:
    return bool(np.abs(rollout.positions[-1, 0] - rollout.positions[-2, 0]).max() < 1e-6)


# ---------------------------------------------------------------------------------------------
# Comparing a video with the simulator


def trajectory_error(video: np.ndarray, state: PhysState, rollout: Rollout | None = None) -> float:
    """Mean L2 distance in pixels between each body's detected centre in ``video``
    (``detector.track``, by the body's colour) and the simulator's rollout from ``state`` (the
    video's first-frame state), over all frames and bodies; a frame where a body is not found
    counts ``MISSING_PX``. 0 for a perfect video; the basis of issue 17's ``physics`` reward."""
    rollout = simulate(state, frames=len(video)) if rollout is None else rollout
    return track_error(detector.track(video, [b.colour for b in state.bodies]), rollout.positions)


def track_error(tracks: np.ndarray, positions: np.ndarray) -> float:
    """``trajectory_error`` of detected ``tracks`` (F, bodies, 2), NaN where not found, against a
    rollout's ``positions``: the mean L2 distance, ``MISSING_PX`` for a body not found."""
    d = np.linalg.norm(tracks - positions[: len(tracks)], axis=-1)
    return float(np.where(np.isnan(d), MISSING_PX, d).mean())


def time_reversed(video: np.ndarray) -> np.ndarray:
    """The video played backwards: the wrong arrow of time from a different first frame."""
    return np.ascontiguousarray(video[::-1])


def gravity_flipped(state: PhysState) -> np.ndarray:
    """The scene rendered from the same first frame with gravity pointing up: the first frame is
    right, the motion is not."""
    return render(state, simulate(state, gravity=-GRAVITY))
