"""Writing and reading sampled videos.

Each video is stored twice: the native uint8 frames as ``.npy`` (lossless: what metrics read) and a
browser-playable H.264 mp4 (yuv420p, ``+faststart`` so it starts before it has downloaded,
upscaled with nearest-neighbour to at least 256 px so a person can judge a 32 px video).
ffmpeg is the system one if present, else the binary bundled in ``imageio-ffmpeg``: nothing is
downloaded at run time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import ffmpeg
import numpy as np

# OpenAI CLIP's pixel normalisation (mean, std per RGB channel of [0, 1] pixels; its
# preprocessor_config.json), which the PhysEncoder's CLIP vision tower and Qwen2-VL (VideoReward) both use
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

MIN_DISPLAY = 256


@cache
def ffmpeg_exe() -> str:
    system = shutil.which("ffmpeg")
    if system:
        return system
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def check_video(video: np.ndarray) -> np.ndarray:
    video = np.asarray(video)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected a uint8 video of shape (F, H, W, 3), got {video.dtype} {video.shape}")
    return video


def write_mp4(video: np.ndarray, path, fps: int) -> Path:
    video = check_video(video)
    _, h, w, _ = video.shape
    scale = max(1, -(-MIN_DISPLAY // min(h, w)))  # ceil: the short side reaches >= 256 px
    out_w, out_h = w * scale, h * scale
    out_w, out_h = out_w + out_w % 2, out_h + out_h % 2  # yuv420p needs even sizes
    path = Path(path)
    (
        ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", framerate=fps)
        .filter("scale", out_w, out_h, flags="neighbor")
        .output(str(path), vcodec="libx264", pix_fmt="yuv420p", movflags="+faststart", crf=18, preset="veryfast", r=fps)
        .overwrite_output()
        .run(cmd=ffmpeg_exe(), input=video.tobytes(), capture_stdout=True, capture_stderr=True)
    )
    return path


def read_mp4(path) -> np.ndarray:
    """Decode an mp4 to uint8 (F, H, W, 3) at its stored size."""
    w, h = _size(path)
    out, _ = (
        ffmpeg.input(str(path))
        .output("pipe:", format="rawvideo", pix_fmt="rgb24")
        .run(cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True)
    )
    return np.frombuffer(out, np.uint8).reshape(-1, h, w, 3)


def _size(path) -> tuple[int, int]:
    # the bundled ffmpeg comes without ffprobe: read the size from ffmpeg's own stream summary
    err = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    m = re.search(r"Video: .*?(\d{2,5})x(\d{2,5})", err)
    if not m:
        raise ValueError(f"{path} has no video stream ffmpeg can read")
    return int(m.group(1)), int(m.group(2))


def save_video(video: np.ndarray, directory, stem: str, fps: int) -> dict[str, str]:
    """Write ``stem.npy`` and ``stem.mp4`` into ``directory``; returns their names."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    video = check_video(video)
    np.save(directory / f"{stem}.npy", video)
    write_mp4(video, directory / f"{stem}.mp4", fps)
    return {"frames": f"{stem}.npy", "mp4": f"{stem}.mp4"}


def load_frames(path) -> np.ndarray:
    return check_video(np.load(path))


def pad_to_same_size(paths: list[Path], quantum: int = 4096) -> int:
    """Pad every mp4 in ``paths`` to one size (the largest, rounded up to ``quantum`` bytes) with a
    trailing ``free`` box, which players skip (ISO/IEC 14496-12 §8.1.2). A 2AFC study's degraded
    gold copy is noise and encodes larger than its clean clip; equal sizes keep Content-Length and
    ``Range`` probes from telling them apart. Already padded files are padded no further. Returns
    the size."""
    sizes = {Path(p): Path(p).stat().st_size for p in paths}
    if not sizes:
        return 0
    biggest = max(sizes.values())
    if len(set(sizes.values())) == 1 and biggest % quantum == 0:
        return biggest
    target = -(-(biggest + 8) // quantum) * quantum  # room for a box header in every file
    for path, size in sizes.items():
        pad = target - size
        if pad:
            with open(path, "ab") as f:  # box: 32-bit big-endian size (header included), type, payload
                f.write(pad.to_bytes(4, "big") + b"free" + bytes(pad - 8))
    return target


# --- first frames (image-to-video) ------------------------------------------------------------
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_image(path) -> np.ndarray:
    """An image file -> uint8 RGB (H, W, 3) (OpenCV reads it: a project dependency already); a
    missing file or one that is not an image: an error naming it."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image at {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # grey and RGBA become 3-channel BGR
    if image is None:
        raise ValueError(f"{path} is not a readable image (PNG, JPEG, BMP or WebP)")
    return np.ascontiguousarray(image[..., ::-1])


def image_files(directory) -> list[Path]:
    """The images of a folder, by name (what ``--images DIR`` pairs with the prompts, in order)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no folder at {directory}")
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def write_image(image: np.ndarray, path) -> Path:
    """uint8 RGB (H, W, 3) -> a PNG (lossless: the first frame exactly as the backbone got it)."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1])):
        raise ValueError(f"could not write {path}")
    return path
