"""Ground-truth detector for videos of the synthetic world (``vpo.data.world``).

Recovers, for each object in a video, its colour, shape and motion, with no learned weights:

1. object pixels are those much brighter than the dark backgrounds (max channel >= 0.45);
2. each object pixel takes the nearest palette colour; a colour covering enough pixels per frame
   is an object;
3. shape by template fitting: each shape re-rendered with the object's area and centroid, the
   closest to its soft coverage wins, majority vote over frames where it is fully inside;
4. motion from the centroid and size trajectories (rules in ``_motion``).

It is the reference for the alignment reward and the held-out quality checks; on videos rendered
by the world it must be right >= 95% of the time (``tests/test_world.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vpo.data import world

_PALETTE_NAMES = list(world.COLOURS)
_PALETTE = np.array([world.COLOURS[c] for c in _PALETTE_NAMES])  # (K, 3) in [0, 1]
BRIGHT = 0.45
BACKGROUND_MAX = 0.25  # brightest background pixel of the world (max channel)
MIN_PIXELS = 4  # per frame, for a colour to count as present


@dataclass(frozen=True)
class Detection:
    colour: str
    shape: str | None  # None when never seen whole
    motion: str
    frames_seen: int

    @property
    def direction(self) -> str:
        """Coarse motion: falling is a way of moving down."""
        return "down" if self.motion == "falling" else self.motion


def detect(video: np.ndarray) -> list[Detection]:
    """Objects in a uint8 (F, H, W, 3) video, largest first."""
    video, label, nearest, value = _labels(video)
    detections = []
    for k, name in enumerate(_PALETTE_NAMES):
        masks = label == k  # (F, H, W)
        counts = masks.reshape(len(video), -1).sum(1)
        seen = counts >= MIN_PIXELS
        if seen.sum() < max(3, len(video) // 4):
            continue
        alpha = np.where(
            nearest == k, np.clip((value - BACKGROUND_MAX) / (_PALETTE[k].max() - BACKGROUND_MAX), 0, 1), 0
        )
        shape = _shape(alpha, masks, seen)
        detections.append((counts.sum(), Detection(name, shape, _motion(masks, seen), int(seen.sum()))))
    return [det for _, det in sorted(detections, key=lambda x: -x[0])]


def _labels(video: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The checked video, each pixel's palette label (-1: background), its nearest palette colour,
    and its brightness (max channel in [0, 1])."""
    video = np.asarray(video)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected uint8 video (F, H, W, 3), got {video.dtype} {video.shape}")
    rgb = video.astype(np.float32) / 255.0
    bright = rgb.max(-1) >= BRIGHT  # (F, H, W)
    # nearest palette colour per pixel, by chromaticity-aware distance on normalised RGB
    d = ((rgb[..., None, :] - _PALETTE) ** 2).sum(-1)  # (F, H, W, K)
    nearest = d.argmin(-1)
    # soft coverage (in ``detect``): how far a pixel's brightness sits between the dark background
    # and the object
    return video, np.where(bright, nearest, -1), nearest, rgb.max(-1)


def presence(video: np.ndarray, prompt: str, detections: list[Detection] | None = None) -> float | None:
    """Is the prompted object still there? For each object the prompt names, the share of frames in
    which its colour covers >= ``MIN_PIXELS`` pixels, counted only if the video's object of that
    colour has the prompted shape (or is never seen whole); the mean over the prompt's objects.
    None if the prompt names nothing the world knows. ``detections``: ``detect(video)`` when already
    computed.

    1 on the world's own renders (every object stays in frame); it falls towards 0 when a model
    deletes, fades or reshapes the subject — what a temporal reward can pay for, since an empty
    frame does not flicker (``docs/metrics.md``)."""
    wanted = world.parse_caption(prompt)
    if wanted is None:
        return None
    video, label, _, _ = _labels(video)
    shapes = {d.colour: d.shape for d in (detect(video) if detections is None else detections)}
    total = 0.0
    for colour, shape, _ in wanted:
        k = _PALETTE_NAMES.index(colour)
        seen = (label == k).reshape(len(video), -1).sum(1) >= MIN_PIXELS
        if shapes.get(colour) in (shape, None):
            total += float(seen.mean())
    return total / len(wanted)


def _extent(motion: str, ys: np.ndarray, xs: np.ndarray, size: np.ndarray) -> float | None:
    """How far a trajectory goes in the way ``motion`` moves: end-to-end travel along its axis (the
    mean of the first and last quarter as ends, as ``_motion``), the height of a hop, or the log of
    the size change; None for ``still``."""
    q = max(1, len(ys) // 4)
    if motion in ("left", "right"):
        return float(abs(xs[-q:].mean() - xs[:q].mean()))
    if motion in ("up", "down", "falling"):
        return float(abs(ys[-q:].mean() - ys[:q].mean()))
    if motion == "bouncing":
        return float(ys.max() - ys.min())
    if motion in ("growing", "shrinking"):
        return float(abs(np.log(max(size[-q:].mean(), 1e-6) / max(size[:q].mean(), 1e-6))))
    return None


def _typical_extents(n: int = 256) -> dict[str, float]:
    """Median extent of each motion over ``n`` objects drawn as the world draws them, from their exact
    trajectories (seeded: the same numbers everywhere)."""
    rng = np.random.default_rng(0)
    out = {}
    for motion in world.MOTIONS:
        values = []
        for _ in range(n):
            o = world._sample_object(rng, "red", "circle", motion)
            xs, ys, size = world.trajectory(o)
            extent = _extent(motion, ys, xs, size)
            if extent is not None:
                values.append(extent)
        if values:
            out[motion] = float(np.median(values))
    return out


TYPICAL_EXTENT = _typical_extents()


def motion_extent(video: np.ndarray, prompt: str) -> float | None:
    """How much of the prompted motion happens: for each moving object the prompt names, its
    detected travel (``_extent``) over the median travel of that motion in the world's renders,
    averaged over those objects. About 1 on ground truth, 0 when the object freezes or vanishes; a
    temporal reward also pays for stillness, which this catches. None when the prompt names no
    moving object of the world."""
    wanted = [w for w in world.parse_caption(prompt) or [] if w[2] in TYPICAL_EXTENT]
    if not wanted:
        return None
    video, label, _, _ = _labels(video)
    total = 0.0
    for colour, _, motion in wanted:
        masks = label == _PALETTE_NAMES.index(colour)
        seen = masks.reshape(len(video), -1).sum(1) >= MIN_PIXELS
        t = np.nonzero(seen)[0]
        if len(t) < 2:
            continue  # gone: no motion
        ys, xs = np.array([np.argwhere(masks[i]).mean(0) for i in t]).T
        size = np.sqrt(masks[t].reshape(len(t), -1).sum(1))
        total += (_extent(motion, ys, xs, size) or 0.0) / TYPICAL_EXTENT[motion]
    return total / len(wanted)


# Area of each shape as a multiple of r^2 (world._coverage) and its centroid's offset below the
# centre in units of r (the triangle's centroid sits a third of the way up from its base).
_AREA = {"circle": np.pi, "square": 1.8**2, "triangle": 2.0}
_CENTROID_DY = {"circle": 0.0, "square": 0.0, "triangle": 1 / 3}


def _shape(alpha: np.ndarray, masks: np.ndarray, seen: np.ndarray) -> str | None:
    """Template fit: per frame, render each shape with the observed area and centroid, keep the
    one closest to the observed coverage; majority vote over frames where the object is whole."""
    _, h, w = masks.shape
    py, px = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    votes = []
    for i in np.nonzero(seen)[0]:
        ys, xs = np.nonzero(masks[i])
        if ys.min() == 0 or xs.min() == 0 or ys.max() == h - 1 or xs.max() == w - 1:
            continue  # cut by the frame edge: its outline says nothing about its shape
        a = alpha[i]
        area = a.sum()
        cy, cx = (a * py).sum() / area, (a * px).sum() / area
        errors: dict[str, float] = {}
        for shape in world.SHAPES:
            r = np.sqrt(area / _AREA[shape])
            cov = world._coverage(shape, px, py, cx, cy - _CENTROID_DY[shape] * r, r)
            errors[shape] = np.abs(cov - a).sum()
        votes.append(min(errors, key=errors.__getitem__))
    if not votes:
        return None
    names, counts = np.unique(votes, return_counts=True)
    return str(names[counts.argmax()])


def _motion(masks: np.ndarray, seen: np.ndarray) -> str:
    t = np.nonzero(seen)[0]
    ys, xs = np.array([np.argwhere(masks[i]).mean(0) for i in t]).T
    size = np.sqrt(masks[t].reshape(len(t), -1).sum(1))
    # robust ends: mean of the first / last quarter of the visible frames
    q = max(1, len(t) // 4)
    dx, dy = xs[-q:].mean() - xs[:q].mean(), ys[-q:].mean() - ys[:q].mean()
    growth = size[-q:].mean() / max(size[:q].mean(), 1e-6)
    lowest = int(np.argmax(ys))
    # bouncing: leaves the floor, rises, comes back down (y is image-down)
    if len(t) >= 8 and 0 < np.argmin(ys) < len(t) - 1:
        top = int(np.argmin(ys))
        if ys[: top + 1].max() - ys[top] > 3 and ys[top:].max() - ys[top] > 3:
            return "bouncing"
    if growth > 1.35 and abs(dx) < 4 and abs(dy) < 4:
        return "growing"
    if growth < 1 / 1.35 and abs(dx) < 4 and abs(dy) < 4:
        return "shrinking"
    if max(abs(dx), abs(dy)) < 2.5:
        return "still"
    if abs(dx) > abs(dy):
        return "right" if dx > 0 else "left"
    if dy < 0:
        return "up"
    # falling accelerates from rest: most of its drop happens in the second half
    half = len(t) // 2
    first, second = ys[half] - ys[0], ys[lowest] - ys[half]
    return "falling" if second > 1.8 * max(first, 0.5) else "down"


def track(video: np.ndarray, colours: list[str] | tuple[str, ...]) -> np.ndarray:
    """Centre (x, y) in pixels of each named colour's object in every frame: (F, len(colours), 2),
    NaN where the colour covers fewer than ``MIN_PIXELS`` pixels.

    The centroid of the object's pixels (bright and nearest to that palette colour, as in
    ``detect``), each weighted by its soft coverage, so that it moves by sub-pixel amounts with an
    antialiased object. Pixel centres sit at ``i + 0.5``, the world's coordinates. Used by
    ``vpo.data.physics.trajectory_error`` against the simulator's rollout."""
    video, label, _, value = _labels(video)
    f, h, w = label.shape
    py, px = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    out = np.full((f, len(colours), 2), np.nan)
    for j, colour in enumerate(colours):
        if colour not in _PALETTE_NAMES:
            raise ValueError(f"unknown colour {colour!r}; valid: {_PALETTE_NAMES}")
        k = _PALETTE_NAMES.index(colour)
        mask = label == k
        alpha = np.where(mask, np.clip((value - BACKGROUND_MAX) / (_PALETTE[k].max() - BACKGROUND_MAX), 0, 1), 0)
        for i in range(f):
            area = alpha[i].sum()
            if mask[i].sum() >= MIN_PIXELS and area > 0:
                out[i, j] = (alpha[i] * px).sum() / area, (alpha[i] * py).sum() / area
    return out
