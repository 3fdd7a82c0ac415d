"""Hand-built clips with known answers for the measures (tests/test_vbench_faithful.py,
benchmarks/eval_fidelity.py): a square whose position is given frame by frame."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def moving_square(xs: Sequence[float], size: int = 32, side: int = 6, supersample: int = 8) -> np.ndarray:
    """uint8 frames (len(xs), size, size, 3): a red square (``side`` px) on grey at horizontal position ``xs[i]``
    in frame i, row 13; sub-pixel positions by rendering ``supersample`` times larger and averaging down."""
    ss = supersample
    frames = []
    for x in xs:
        big = np.full((size * ss, size * ss, 3), 30, np.float32)
        x0, y0 = round(x * ss), 13 * ss
        big[y0 : y0 + side * ss, x0 : x0 + side * ss] = (220, 60, 40)
        frames.append(big.reshape(size, ss, size, ss, 3).mean((1, 3)))
    return np.round(np.stack(frames)).astype(np.uint8)
