import subprocess

import numpy as np
import pytest

from vpo import video as video_io
from vpo.data import world


@pytest.fixture
def clip():
    return world.sample_scene(11).render()


def test_mp4_decodes_back_to_the_frame_count_at_a_judgeable_size(tmp_path, clip):
    files = video_io.save_video(clip, tmp_path, "v", fps=8)
    decoded = video_io.read_mp4(tmp_path / files["mp4"])
    assert decoded.shape == (16, 256, 256, 3)
    # nearest-neighbour upscaling: the downsampled decode stays close to the native frames
    native = decoded[:, 4::8, 4::8].astype(float)
    assert np.abs(native - clip).mean() < 6


def test_mp4_is_browser_playable_h264_yuv420p_with_faststart(tmp_path, clip):
    path = video_io.write_mp4(clip, tmp_path / "v.mp4", fps=8)
    info = subprocess.run(
        [video_io.ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True
    ).stderr
    assert "h264" in info and "yuv420p" in info
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart: index before the media


def test_native_frames_are_stored_losslessly(tmp_path, clip):
    files = video_io.save_video(clip, tmp_path, "v", fps=8)
    assert np.array_equal(video_io.load_frames(tmp_path / files["frames"]), clip)


def test_a_float_video_is_refused(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        video_io.write_mp4(np.zeros((4, 8, 8, 3), np.float32), tmp_path / "x.mp4", fps=8)
