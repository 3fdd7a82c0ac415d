"""A procedural video world the tiny backbone is pretrained on, and the captions that describe it.

Each scene is a static background with one or two antialiased objects (a colour, a shape and a
motion). Everything is a pure function of an integer seed, so a scene, its caption and its frames
can be rebuilt anywhere (held-out checks, alignment rewards, tests) from the seed alone.

Captions come from templates with synonyms and varied word orders. Templates are split in two:
``TRAIN_TEMPLATES`` are seen during pretraining, ``HELDOUT_TEMPLATES`` never are, so a held-out
prompt tests whether the model follows the *meaning* of a wording it has not seen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

FRAMES, HEIGHT, WIDTH, FPS = 16, 32, 32, 8

# Saturated, bright object colours. Backgrounds stay dark (max channel <= 0.35) so that the
# detector can separate objects by brightness alone.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.12),
    "green": (0.15, 0.80, 0.22),
    "blue": (0.20, 0.40, 0.98),
    "yellow": (0.95, 0.88, 0.15),
    "purple": (0.68, 0.25, 0.90),
    "orange": (0.98, 0.55, 0.08),
    "cyan": (0.15, 0.88, 0.88),
    "white": (0.95, 0.95, 0.95),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "falling", "bouncing", "growing", "shrinking", "still")
# Backgrounds: (top colour, bottom colour) of a vertical gradient; all dark.
BACKGROUNDS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "black": ((0.02, 0.02, 0.03), (0.06, 0.06, 0.07)),
    "grey": ((0.22, 0.22, 0.23), (0.12, 0.12, 0.13)),
    "navy": ((0.03, 0.05, 0.25), (0.02, 0.03, 0.12)),
    "forest": ((0.03, 0.18, 0.06), (0.02, 0.08, 0.03)),
    "brown": ((0.25, 0.14, 0.06), (0.12, 0.07, 0.03)),
    "dusk": ((0.20, 0.06, 0.22), (0.05, 0.03, 0.12)),
}

# Words a caption may use for each value; the first is the canonical one.
COLOUR_WORDS = {c: (c,) for c in COLOURS} | {"purple": ("purple", "violet")}
SHAPE_WORDS = {
    "circle": ("circle", "ball", "disc", "dot"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "pyramid", "wedge"),
}
MOTION_WORDS = {
    "left": ("moving left", "sliding to the left", "drifting leftwards", "travelling to the left"),
    "right": ("moving right", "sliding to the right", "drifting rightwards", "travelling to the right"),
    "up": ("moving up", "rising", "floating upwards", "climbing upwards"),
    "down": ("moving down", "sinking slowly", "sliding downwards", "descending steadily"),
    "falling": ("falling", "dropping", "falling under gravity", "plummeting"),
    "bouncing": ("bouncing", "bouncing on the floor", "hopping off the ground", "bouncing up and down"),
    "growing": ("growing", "getting bigger", "expanding", "swelling"),
    "shrinking": ("shrinking", "getting smaller", "contracting", "dwindling"),
    "still": ("standing still", "resting", "not moving", "staying put"),
}
BACKGROUND_WORDS = {
    "black": ("black",),
    "grey": ("grey", "gray"),
    "navy": ("navy", "dark blue"),
    "forest": ("forest green", "dark green"),
    "brown": ("brown",),
    "dusk": ("dusk", "dark purple"),
}

# {obj} is "a red ball", {motion} "moving left", {bg} " on a black background" (or "").
TRAIN_TEMPLATES = (
    "{obj} {motion}{bg}",
    "{obj_cap} {motion}{bg}.",
    "there is {obj} {motion}{bg}",
    "a video of {obj} {motion}{bg}",
    "{obj} that is {motion}{bg}",
    "{motion_cap}: {obj}{bg}",
    "we see {obj}{bg}, {motion}",
    "{obj}{bg}, {motion}",
)
HELDOUT_TEMPLATES = (
    "watch as {obj} keeps {motion}{bg}",
    "in this clip {obj} is {motion}{bg}",
    "{obj_cap}{bg} -- {motion}",
    "footage showing {obj} {motion}{bg}",
)
BG_PHRASES = (" on a {b} background", " against a {b} backdrop", " over a {b} background")


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    motion: str
    x: float  # centre at frame 0, pixels
    y: float
    size: float  # half-width, pixels
    speed: float  # pixels per frame (or per frame^2 for falling; growth factor for size changes)


@dataclass(frozen=True)
class Scene:
    seed: int
    background: str
    objects: tuple[SceneObject, ...]
    caption: str

    def render(self) -> np.ndarray:
        """uint8 frames (F, H, W, 3)."""
        return render(self)


def _obj_phrase(rng: np.random.Generator, o: SceneObject) -> str:
    colour = rng.choice(COLOUR_WORDS[o.colour])
    shape = rng.choice(SHAPE_WORDS[o.shape])
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {shape}"


def make_caption(rng: np.random.Generator, background: str, objects, templates) -> str:
    bg = ""
    if rng.random() < 0.5:
        bg = str(rng.choice(BG_PHRASES)).format(b=rng.choice(BACKGROUND_WORDS[background]))
    template = str(rng.choice(templates))
    parts = []
    for i, o in enumerate(objects):
        obj, motion = _obj_phrase(rng, o), str(rng.choice(MOTION_WORDS[o.motion]))
        if i == 0:
            parts.append(
                template.format(
                    obj=obj,
                    obj_cap=obj[0].upper() + obj[1:],
                    motion=motion,
                    motion_cap=motion[0].upper() + motion[1:],
                    bg=bg,
                )
            )
        else:
            parts.append(f"and {obj} {motion}")
    return " ".join(parts)


def _sample_object(rng: np.random.Generator, colour: str, shape: str, motion: str) -> SceneObject:
    size = float(rng.uniform(3.5, 5.5))
    speed = 0.0
    lo, hi = size + 1, WIDTH - size - 1
    x, y = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
    travel = FRAMES - 1
    if motion in ("left", "right"):
        speed = float(rng.uniform(0.9, 1.3))
        start = rng.uniform(size - 1, WIDTH - size + 1 - speed * travel)
        x = float(start if motion == "right" else WIDTH - start)
    elif motion in ("up", "down"):
        speed = float(rng.uniform(0.9, 1.3))
        start = rng.uniform(size - 1, HEIGHT - size + 1 - speed * travel)
        y = float(start if motion == "down" else HEIGHT - start)
    elif motion == "falling":
        speed = float(rng.uniform(0.09, 0.12))  # gravity, px/frame^2
        y = float(rng.uniform(size - 1, size + 2))
    elif motion == "bouncing":
        speed = float(rng.uniform(0.28, 0.36))  # gravity; starts on the floor going up
        y = HEIGHT - size
    elif motion in ("growing", "shrinking"):
        size = float(rng.uniform(2.5, 3.5)) if motion == "growing" else float(rng.uniform(6.5, 8.0))
        speed = float(rng.uniform(1.06, 1.08)) if motion == "growing" else float(rng.uniform(0.93, 0.95))
        x, y = float(rng.uniform(12, 20)), float(rng.uniform(12, 20))
    return SceneObject(colour, shape, motion, x, y, size, speed)


def sample_scene(seed: int, heldout: bool = False, two_objects: float = 0.2) -> Scene:
    """The scene of ``seed``. ``heldout`` captions it with templates never used in training."""
    rng = np.random.default_rng(seed)
    background = str(rng.choice(list(BACKGROUNDS)))
    n = 2 if rng.random() < two_objects else 1
    colours = rng.choice(list(COLOURS), size=n, replace=False)
    objects = tuple(_sample_object(rng, str(c), str(rng.choice(SHAPES)), str(rng.choice(MOTIONS))) for c in colours)
    caption = make_caption(rng, background, objects, HELDOUT_TEMPLATES if heldout else TRAIN_TEMPLATES)
    return Scene(seed, background, objects, caption)


def trajectory(o: SceneObject) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre x, centre y and half-size per frame."""
    t = np.arange(FRAMES, dtype=np.float64)
    x = np.full(FRAMES, o.x)
    y = np.full(FRAMES, o.y)
    s = np.full(FRAMES, o.size)
    if o.motion == "left":
        x = o.x - o.speed * t
    elif o.motion == "right":
        x = o.x + o.speed * t
    elif o.motion == "up":
        y = o.y - o.speed * t
    elif o.motion == "down":
        y = o.y + o.speed * t
    elif o.motion == "falling":
        y = np.minimum(o.y + 0.5 * o.speed * t**2, HEIGHT - o.size)
    elif o.motion == "bouncing":
        # one parabolic hop per 16 frames: leave the floor at t=0, land at t=15
        v0 = 0.5 * o.speed * (FRAMES - 1)
        y = o.y - (v0 * t - 0.5 * o.speed * t**2)
    elif o.motion in ("growing", "shrinking"):
        s = o.size * o.speed**t
    return x, y, s


def _coverage(shape: str, px: np.ndarray, py: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Antialiased coverage in [0, 1] from a signed distance (negative inside), 1 px wide edge."""
    dx, dy = px - cx, py - cy
    if shape == "circle":
        d = np.hypot(dx, dy) - r
    elif shape == "square":
        d = np.maximum(np.abs(dx), np.abs(dy)) - r * 0.9
    elif shape == "triangle":
        # upward isosceles triangle: apex at (cx, cy - r), base from cx - r to cx + r at cy + r;
        # the slanted edges 2|dx| - dy = r, divided by |(2, -1)| = sqrt(5) to be a distance
        d = np.maximum(dy - r, (2 * np.abs(dx) - dy - r) / np.sqrt(5))
    else:
        raise ValueError(f"unknown shape {shape!r}; valid: {SHAPES}")
    return np.clip(0.5 - d, 0.0, 1.0)


def render(scene: Scene) -> np.ndarray:
    top, bottom = (np.array(c) for c in BACKGROUNDS[scene.background])
    ramp = np.linspace(0, 1, HEIGHT)[:, None, None]
    frame_bg = (top * (1 - ramp) + bottom * ramp) * np.ones((HEIGHT, WIDTH, 3))
    video = np.repeat(frame_bg[None], FRAMES, axis=0)
    py, px = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64) + 0.5
    for o in scene.objects:
        colour = np.array(COLOURS[o.colour])
        xs, ys, ss = trajectory(o)
        for f in range(FRAMES):
            a = _coverage(o.shape, px, py, xs[f], ys[f], ss[f])[..., None]
            video[f] = video[f] * (1 - a) + colour * a
    return np.round(video * 255).astype(np.uint8)


def parse_caption(text: str) -> list[tuple[str, str, str]] | None:
    """(colour, shape, motion) for each object a caption describes, or None if it names none.

    The inverse of the caption grammar: matches the synonym tables, so it also reads wordings it
    was never shown as long as they use this world's vocabulary.
    """
    # drop the background phrase first: "a dark blue background" names no object's colour
    text = re.sub(r"\b(on|against|over) an? [a-z ]+? (background|backdrop)\b", " ", text.lower())
    clauses = re.split(r"\band\b", text)
    found = []
    for clause in clauses:
        colour = _first(clause, COLOUR_WORDS)
        shape = _first(clause, SHAPE_WORDS)
        motion = _first(clause, MOTION_WORDS, partial=True)
        if colour and shape and motion:
            found.append((colour, shape, motion))
    return found or None


_MOTION_KEYWORDS = {
    "left": ("left",),
    "right": ("right",),
    "up": ("moving up", "rising", "upwards", "climbing"),
    "down": ("moving down", "sinking", "downwards", "descending"),
    "falling": ("falling", "dropping", "plummeting"),
    "bouncing": ("bouncing", "hopping"),
    "growing": ("growing", "bigger", "expanding", "swelling"),
    "shrinking": ("shrinking", "smaller", "contracting", "dwindling"),
    "still": ("still", "resting", "not moving", "staying put"),
}


def _first(clause: str, table: dict, partial: bool = False) -> str | None:
    best, best_pos = None, len(clause) + 1
    words = _MOTION_KEYWORDS if partial else table
    for value, synonyms in words.items():
        for w in synonyms:
            # motions match as prefixes ("left" in "leftwards"); names as whole words
            m = re.search(r"\b" + re.escape(w) + ("" if partial else r"\b"), clause)
            if m and m.start() < best_pos:
                best, best_pos = value, m.start()
    return best


def heldout_scenes(n: int, start_seed: int = 10_000_000) -> list[Scene]:
    """Single-object scenes with held-out wordings; seeds disjoint from pretraining's range."""
    return [sample_scene(start_seed + i, heldout=True, two_objects=0.0) for i in range(n)]
