import json
import subprocess
import sys

import numpy as np
import pytest


def vpo(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vpo", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_sample_writes_frames_mp4s_and_a_manifest(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("# two prompts\na red ball moving right\n\na green square rising\n")
    r = vpo(
        "--threads",
        "1",
        "sample",
        "--backbone",
        "tiny",
        "--prompts",
        str(prompts),
        "--out",
        str(tmp_path / "out"),
        "--seed",
        "3",
        "--num-per-prompt",
        "2",
        "--steps",
        "3",
        "--guidance",
        "3",
    )
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["backbone"] == "tiny" and manifest["frames"] == 16 and manifest["fps"] == 8
    assert [v["seed"] for v in manifest["videos"]] == [3, 4, 5, 6]
    assert [v["prompt"] for v in manifest["videos"]] == ["a red ball moving right"] * 2 + ["a green square rising"] * 2
    for v in manifest["videos"]:
        assert np.load(tmp_path / "out" / v["frames"]).shape == (16, 32, 32, 3)
        assert (tmp_path / "out" / v["mp4"]).stat().st_size > 1000
    # every file it wrote is printed, one path a line (issue 18, point 11)
    printed = {line.strip() for line in r.stdout.splitlines()}
    written = {str(p.resolve()) for p in (tmp_path / "out").iterdir()}
    assert len(written) == 9 and written <= printed, r.stdout


def test_sample_on_a_shifted_schedule_records_the_shift_and_refuses_a_negative_one(tmp_path):
    args = ("--threads", "1", "sample", "--prompt", "a red ball moving right", "--seed", "0", "--steps", "2")
    r = vpo(*args, "--out", str(tmp_path / "shifted"), "--flow-shift", "3")
    assert r.returncode == 0, r.stderr
    plain = vpo(*args, "--out", str(tmp_path / "plain"))
    assert plain.returncode == 0, plain.stderr
    shifted, unshifted = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("shifted", "plain"))
    assert shifted["flow_shift"] == 3.0 and "flow_shift" not in unshifted
    frames = [np.load(tmp_path / d / m["videos"][0]["frames"]) for d, m in (("shifted", shifted), ("plain", unshifted))]
    assert np.abs(frames[0].astype(int) - frames[1]).mean() > 0.3  # another schedule, other videos (0.74 here)

    r = vpo(*args, "--out", str(tmp_path / "bad"), "--flow-shift", "-1")
    assert r.returncode == 2
    assert "--flow-shift must be >= 0" in r.stderr and "Traceback" not in r.stderr


def test_an_empty_prompt_file_is_a_message_not_a_traceback(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n\n")
    r = vpo("sample", "--prompts", str(empty), "--out", str(tmp_path / "o"), "--seed", "0")
    assert r.returncode == 2
    assert "no prompts in" in r.stderr and "Traceback" not in r.stderr


def test_an_unknown_backbone_names_the_valid_ones(tmp_path):
    r = vpo("sample", "--backbone", "sora", "--prompt", "x", "--out", str(tmp_path), "--seed", "0")
    assert r.returncode == 2
    assert "unknown backbone 'sora'; valid: tiny" in r.stderr and "Traceback" not in r.stderr


def test_a_bad_checkpoint_is_a_message_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    r = vpo("sample", "--prompt", "a red ball", "--out", str(tmp_path / "o"), "--seed", "0", "--checkpoint", str(bad))
    assert r.returncode == 2
    assert "not a readable safetensors file" in r.stderr and "Traceback" not in r.stderr


def test_threads_below_1_is_a_message_not_a_traceback():
    r = vpo("--threads", "0", "models")
    assert r.returncode == 2 and "--threads must be >= 1, got 0" in r.stderr and "Traceback" not in r.stderr


def test_prompt_and_prompts_are_exclusive(tmp_path):
    r = vpo("sample", "--prompt", "a", "--prompts", "demo", "--out", str(tmp_path), "--seed", "0")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr


def test_score_prints_json_per_video_with_unavailable_alignment(tmp_path):
    from vpo import video as video_io
    from vpo.data import world

    scene = world.sample_scene(5, two_objects=0.0)
    video_io.save_video(scene.render(), tmp_path, "v", fps=8)
    ok = vpo("score", "--json", "--prompt", scene.caption, str(tmp_path / "v.npy"))
    assert ok.returncode == 0, ok.stderr
    row = json.loads(ok.stdout)["videos"][0]
    assert set(row["scores"]) == {"visual", "temporal", "dynamic", "alignment", "global"}
    assert row["scores"]["alignment"] == 1.0
    off = vpo("score", "--json", "--prompt", "a cat on a sofa", str(tmp_path / "v.npy"))
    row = json.loads(off.stdout)["videos"][0]
    assert row["scores"]["alignment"] is None and "unavailable" in row["unavailable"]
    bad = vpo("score", "--dimension", "physics", "--prompt", "x", str(tmp_path / "v.npy"))
    assert bad.returncode == 2 and "valid: visual, temporal, dynamic, alignment, global" in bad.stderr


def test_score_takes_a_native_npy_and_an_mp4_together_each_at_its_own_size_with_its_measures(tmp_path):
    """Issue 18, point 11: the sampler writes a 32x32 .npy and a 256x256 .mp4 of each video; both
    are scored in one call, and --json gives the measures behind every dimension."""
    from vpo import video as video_io
    from vpo.data import world

    scene = world.sample_scene(5, two_objects=0.0)
    video_io.save_video(scene.render(), tmp_path, "v", fps=8)
    r = vpo("score", "--json", "--prompt", scene.caption, str(tmp_path / "v.npy"), str(tmp_path / "v.mp4"))
    assert r.returncode == 0, r.stderr
    npy, mp4 = json.loads(r.stdout)["videos"]
    assert npy["size"] == [16, 32, 32] and mp4["size"][1:] == [256, 256]
    for row in (npy, mp4):
        measures = row["measures"]
        assert set(measures["temporal"]) == {"temporal_flickering", "subject_consistency"}
        assert set(measures["visual"]) == {"imaging_proxy"} and set(measures["dynamic"]) == {
            "dynamic_degree",
            "flow_top5",
        }
        assert 0 < measures["temporal"]["temporal_flickering"] <= 1, measures
    # the same video at two sizes: close, not identical (the mp4 is upscaled and lossy)
    assert abs(npy["scores"]["temporal"] - mp4["scores"]["temporal"]) < 0.1


def test_image_metrics_temporal_says_it_is_the_visual_score(tmp_path):
    """Issue 18, point 11: the image-level baseline answers 'temporal' with its per-frame score
    (that is what the baseline is for); the table and the JSON say so instead of passing it off."""
    from vpo import video as video_io
    from vpo.data import world

    video_io.save_video(world.sample_scene(5, two_objects=0.0).render(), tmp_path, "v", fps=8)
    args = ("score", "--reward", "image-metrics", "--dimension", "temporal", "--prompt", "x", str(tmp_path / "v.npy"))
    table = vpo(*args)
    assert table.returncode == 0, table.stderr
    assert "note: temporal: image-metrics is blind to time" in table.stdout and "visual score" in table.stdout
    out = json.loads(vpo(*args, "--json").stdout)
    assert "blind to time" in out["notes"]["temporal"]
    assert out["videos"][0]["measures"] == {"temporal": {"imaging_proxy": pytest.approx(0.0, abs=1.0)}}
    plain = json.loads(
        vpo("score", "--json", "--dimension", "temporal", "--prompt", "x", str(tmp_path / "v.npy")).stdout
    )
    assert plain["notes"] == {}  # the video-level source's temporal is a temporal measure


def test_feedback_reports_mrr_per_available_source(tmp_path):
    from vpo import video as video_io
    from vpo.data import world

    groups = []
    for s in range(3):
        scene = world.sample_scene(20 + s, two_objects=0.0)
        clean = scene.render()
        rng = np.random.default_rng(s)
        flicker = np.clip(clean.astype(int) + rng.integers(-60, 60, clean.shape), 0, 255).astype(np.uint8)
        paths = [
            str(tmp_path / video_io.save_video(v, tmp_path, f"{s}_{i}", 8)["frames"])
            for i, v in enumerate([flicker, clean])
        ]
        groups.append({"prompt": scene.caption, "videos": paths, "chosen": 1})
    (tmp_path / "groups.json").write_text(json.dumps(groups))
    r = vpo("feedback", str(tmp_path / "groups.json"), "--dimension", "temporal", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    by_source = {row["source"]: row for row in out["results"]}
    assert by_source["metrics"]["mrr"] == 1.0 and by_source["metrics"]["groups"] == 3
    assert "videoscore" in out["skipped"]  # no weights directory here: said, not silently dropped


def test_vpo_demo_samples_the_demo_prompts_and_prints_the_files(tmp_path):
    """What command A runs first (scripts/run.sh)."""
    r = vpo("demo", "--out", str(tmp_path / "demo"))
    assert r.returncode == 0, r.stderr
    mp4s = sorted((tmp_path / "demo").glob("*.mp4"))
    assert mp4s and all(str(m.resolve()) in r.stdout for m in mp4s)
