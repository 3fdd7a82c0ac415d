"""Weight-free video measures, batched, in torch (differentiable where marked).

All take float videos ``(B, F, H, W, C)`` with values in [0, 255] and return ``(B,)`` in natural
units. Formulas and where they follow or approximate VBench: ``docs/metrics.md``.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vpo.vbench import NORMALISE

# VBench's normalisation ranges (scripts/constant.py, kept in vpo/vbench.py) for the dimensions measured here
VBENCH_RANGE = {
    k: NORMALISE[k]
    for k in ("subject_consistency", "temporal_flickering", "motion_smoothness", "dynamic_degree", "imaging_quality")
}


def normalise(value: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Min-max to [0, 1], clamped: for reward scores. VBench's quality score does not clamp
    (``vpo.vbench.quality_score``)."""
    return ((value - lo) / (hi - lo)).clamp(0, 1)


# --- temporal ---------------------------------------------------------------------------------
def temporal_flickering(v: torch.Tensor) -> torch.Tensor:
    """VBench, exact: mean over consecutive frame pairs of (255 - MAE) / 255. Differentiable."""
    mae = (v[:, 1:] - v[:, :-1]).abs().mean(dim=(2, 3, 4))  # (B, F-1)
    return ((255.0 - mae) / 255.0).mean(1)


def _frame_features(v: torch.Tensor, bins: int = 4, sigma: float = 40.0, max_side: int = 64) -> torch.Tensor:
    """Soft RGB colour histograms per frame, (B, F, bins^3): weight-free stand-ins for DINO features.

    Pixels are weighted by saliency (distance from the frame's median colour).
    Order- and position-invariant within a frame, so an object that moves keeps its features, one
    that changes colour, appears or dissolves does not. Frames are area-downsampled first so the
    cost does not grow with resolution. Differentiable (Gaussian soft binning)."""
    b, f, h, w, c = v.shape
    x = v.reshape(b * f, h, w, c).permute(0, 3, 1, 2)
    scale = min(1.0, max_side / min(h, w))
    if scale < 1:
        x = F.interpolate(x, scale_factor=scale, mode="area")
    pixels = x.flatten(2).transpose(1, 2)  # (BF, P, 3)
    centres = (torch.arange(bins, dtype=v.dtype, device=v.device) + 0.5) * (256.0 / bins)
    grid = torch.cartesian_prod(centres, centres, centres)  # (bins^3, 3)
    weights = torch.exp(-(torch.cdist(pixels, grid.unsqueeze(0).expand(len(pixels), -1, -1)) ** 2) / (2 * sigma**2))
    # saliency: distance from the frame's median colour, so the subject, not the background,
    # dominates the features (a small floor keeps an empty frame's histogram defined)
    median = pixels.detach().median(dim=1, keepdim=True).values
    saliency = (pixels - median).norm(dim=-1, keepdim=True) / 255.0 + 0.02
    hist = (weights * saliency).sum(1) / saliency.sum(1)
    return hist.reshape(b, f, -1)


def subject_consistency(v: torch.Tensor) -> torch.Tensor:
    """VBench's formula on weight-free features: for each frame i >= 1, the mean of
    max(0, cos(f_{i-1}, f_i)) and max(0, cos(f_0, f_i)), averaged. Differentiable."""
    feats = F.normalize(_frame_features(v), dim=-1)
    prev = (feats[:, 1:] * feats[:, :-1]).sum(-1).clamp_min(0)
    first = (feats[:, 1:] * feats[:, :1]).sum(-1).clamp_min(0)
    return ((prev + first) / 2).mean(1)


def motion_smoothness(v: torch.Tensor) -> torch.Tensor:
    """VBench's protocol (``vbench/motion_smoothness.py``): interpolate every odd frame from its even
    neighbours and score ``(255 - MAE) / 255`` of interpolated vs real odd frames, averaged. VBench
    interpolates with AMT-S; this proxy warps both neighbours half-way along Farneback optical flow
    (``flow_midpoint``), so a constant-velocity motion is predicted exactly (score -> 1) and jitter or a
    reversal of direction, which no midpoint explains, is not. Not differentiable."""
    frames = v.detach().cpu().float().numpy()
    return torch.tensor([_smoothness(x) for x in frames], dtype=v.dtype, device=v.device)


def _upscale(video: np.ndarray) -> tuple[np.ndarray, int]:
    """Frames upscaled (bicubic) to >= 64 px on the short side, where Farneback's window has room."""
    h, w = video.shape[1:3]
    up = max(1, int(np.ceil(64 / min(h, w))))
    if up == 1:
        return video.astype(np.float32), 1
    return np.stack(
        [cv2.resize(f.astype(np.float32), (w * up, h * up), interpolation=cv2.INTER_CUBIC) for f in video]
    ), up


def _grey(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.clip(frame, 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)


def _farneback(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense flow from grey frame a to b, (H, W, 2) in pixels: a(x) ~ b(x + flow(x))."""
    return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 2, 9, 3, 5, 1.1, 0)


def flow_midpoint(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The frame half-way between float RGB frames a and b: each warped towards t = 1/2 along the
    intermediate flows of Super SloMo (Jiang et al. 2018, Eq. 4 at t = 1/2:
    F_t0 = -F_01/4 + F_10/4, F_t1 = F_01/4 - F_10/4), then averaged."""
    ga, gb = _grey(a), _grey(b)
    f01, f10 = _farneback(ga, gb), _farneback(gb, ga)
    h, w = ga.shape
    grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)), -1)

    def warp(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
        m = grid + flow
        return cv2.remap(img, m[..., 0], m[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    return (warp(a, (f10 - f01) / 4) + warp(b, (f01 - f10) / 4)) / 2


def _smoothness(video: np.ndarray) -> float:
    if len(video) < 3:
        return 1.0
    frames, _ = _upscale(video)
    even, odd = frames[0::2], frames[1::2]
    maes = [np.abs(flow_midpoint(a, b) - o).mean() for a, b, o in zip(even[:-1], even[1:], odd)]
    return float((255.0 - np.mean(maes)) / 255.0)


# --- dynamic ----------------------------------------------------------------------------------
def flow_magnitudes(video: np.ndarray, top: float = 0.05, pairs: list[tuple[int, int]] | None = None) -> np.ndarray:
    """Per frame pair (default: consecutive pairs), the mean of the top ``top`` share of optical-flow
    magnitudes (pixels), as VBench does with RAFT (top 5% in dynamic degree, 2% in the static filter);
    here OpenCV's Farneback flow on frames upscaled to >= 64 px (Farneback's window needs room),
    magnitudes scaled back to native pixels."""
    frames, up = _upscale(video)
    grey = [_grey(f) for f in frames]
    if pairs is None:
        pairs = [(i, i + 1) for i in range(len(grey) - 1)]
    out = []
    for i, j in pairs:
        mag = np.sqrt((_farneback(grey[i], grey[j]) ** 2).sum(-1)).ravel() / up
        k = max(1, int(mag.size * top))
        out.append(np.partition(mag, -k)[-k:].mean())
    return np.array(out)


def vbench_frame_interval(fps: float) -> int:
    """VBench's dynamic degree reads every ``max(1, round(fps / 8))``-th frame (``DynamicDegree.get_frames``):
    above 8 fps it subsamples to about 8 fps and keeps its threshold; at or below 8 fps it keeps every frame.
    Python's round, as VBench's (half to even: 12 fps -> 2, 20 fps -> 2)."""
    return max(1, round(fps / 8))


def dynamic_degree(video: np.ndarray, fps: float = 8.0) -> tuple[float, float]:
    """VBench's rule (``vbench/dynamic_degree.py``) at our size: frames subsampled by
    ``vbench_frame_interval(fps)``; a pair of the kept frames moves if its top-5% flow exceeds
    ``6 * min(H, W) / 256`` pixels; the video is dynamic once ``round(4 * n / 16)`` pairs move (n = kept
    frames). Returns (share of the needed moving pairs found, capped at 1 -- 1.0 exactly when VBench's rule
    says dynamic; mean top-5% flow)."""
    video = video[:: vbench_frame_interval(fps)]
    n, h, w = video.shape[:3]
    if n < 2:
        return 0.0, 0.0
    mags = flow_magnitudes(video)
    threshold = 6.0 * min(h, w) / 256.0
    needed = round(4 * n / 16)
    moving = float((mags > threshold).sum())
    if needed == 0:  # VBench's check_move returns True at its first pair
        return 1.0, float(mags.mean())
    return min(1.0, moving / needed), float(mags.mean())


def is_static(video: np.ndarray) -> bool:
    """VBench's static filter (``static_filter.py``, run before scoring temporal flickering), with Farneback
    flow in place of RAFT: top-2% flow per consecutive pair and for (first, last) and (last, first);
    threshold ``3 * min(H, W) / 256`` px and ``c = round(2 * F / 16)``. Static unless more than c consecutive
    pairs exceed the threshold or either first/last pair exceeds ``threshold * c * 2``. All frames are read
    (no frame-rate subsampling in the filter)."""
    f, h, w = video.shape[:3]
    last = f - 1
    pairs = [(i, i + 1) for i in range(last)] + [(0, last), (last, 0)]
    scores = flow_magnitudes(video, top=0.02, pairs=pairs)
    threshold, count_num = 3.0 * min(h, w) / 256.0, round(2 * f / 16)
    if (scores[:-2] > threshold).sum() > count_num:
        return False
    return bool((scores[-2:] <= threshold * count_num * 2).all())


# --- visual (a proxy: no MUSIQ / LAION weights here) ------------------------------------------
_LAPLACE = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def imaging_proxy(v: torch.Tensor) -> torch.Tensor:
    """Per-frame sharpness - noise + contrast, averaged over frames; in [0, 1]-ish. Differentiable.

    sharpness: mean of the top 10% luminance gradient magnitudes (a crisp edge scores high, a
    blurred one low); noise: Immerkaer's estimate of Gaussian noise sigma (a Laplacian-difference
    kernel that cancels smooth structure); contrast: RMS contrast. All in units of 255.
    This is a proxy for VBench's MUSIQ imaging quality, not a replacement."""
    b, f, h, w, _ = v.shape
    lum = (v * torch.tensor([0.299, 0.587, 0.114], dtype=v.dtype, device=v.device)).sum(-1) / 255.0
    x = lum.reshape(b * f, 1, h, w)
    gx, gy = x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]
    grad = torch.sqrt(gx[..., :-1, :] ** 2 + gy[..., :, :-1] ** 2 + 1e-12).flatten(1)
    k = max(1, grad.shape[1] // 10)
    sharpness = grad.topk(k, dim=1).values.mean(1)
    lap = F.conv2d(x, _LAPLACE.to(v)[None, None])
    noise = np.sqrt(np.pi / 2) / 6 * lap.abs().flatten(1).mean(1)
    contrast = x.flatten(1).std(1)
    score = sharpness - 4 * noise + 0.5 * contrast
    return score.reshape(b, f).mean(1)
