"""Weight-free video measures, batched, in torch (differentiable where marked).

All take float videos ``(B, F, H, W, C)`` with values in [0, 255] and return ``(B,)`` in natural
units. Formulas and where they follow or approximate VBench: ``docs/metrics.md``.
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# VBench's normalisation ranges (scripts/constant.py) for its quality score, and its weights.
VBENCH_RANGE = {
    "subject_consistency": (0.1462, 1.0),
    "temporal_flickering": (0.6293, 1.0),
    "motion_smoothness": (0.706, 0.9975),
    "dynamic_degree": (0.0, 1.0),
    "imaging_quality": (0.0, 1.0),
}


def normalise(value: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
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
    """VBench interpolates odd frames from even ones with AMT and scores (255 - MAE) / 255; we
    interpolate linearly (no weights), which favours constant-velocity motion the same way."""
    if v.shape[1] < 3:
        return torch.ones(v.shape[0], dtype=v.dtype, device=v.device)
    middle = (v[:, :-2:2] + v[:, 2::2]) / 2
    mae = (middle - v[:, 1:-1:2][:, : middle.shape[1]]).abs().mean(dim=(2, 3, 4))
    return ((255.0 - mae) / 255.0).mean(1)


# --- dynamic ----------------------------------------------------------------------------------
def flow_magnitudes(video: np.ndarray) -> np.ndarray:
    """Per consecutive pair, the mean of the top 5% optical-flow magnitudes (pixels), as VBench
    does with RAFT; here OpenCV's Farneback flow on frames upscaled to >= 64 px (Farneback's
    window needs room), magnitudes scaled back to native pixels."""
    grey = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in video]
    h, w = grey[0].shape
    up = max(1, int(np.ceil(64 / min(h, w))))
    if up > 1:
        grey = [cv2.resize(g, (w * up, h * up), interpolation=cv2.INTER_CUBIC) for g in grey]
    out = []
    for a, b in itertools.pairwise(grey):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 2, 9, 3, 5, 1.1, 0)
        mag = np.sqrt((flow**2).sum(-1)).ravel() / up
        k = max(1, int(mag.size * 0.05))
        out.append(np.partition(mag, -k)[-k:].mean())
    return np.array(out)


def dynamic_degree(video: np.ndarray, fps: float = 8.0) -> tuple[float, float]:
    """VBench's rule at our size: a pair moves if its top-5% flow exceeds
    max(1, 8 / fps) * 6 * min(H, W) / 256 pixels; the video is dynamic once round(4 * F / 16)
    pairs move. Returns (share of the needed moving pairs found, capped at 1; mean top-5% flow)."""
    mags = flow_magnitudes(video)
    f, h, w = video.shape[:3]
    threshold = max(1.0, 8.0 / fps) * 6.0 * min(h, w) / 256.0
    needed = max(1, round(4 * f / 16))
    return min(1.0, float((mags > threshold).sum()) / needed), float(mags.mean())


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
