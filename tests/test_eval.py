"""`vpo eval`: the paired difference's statistics, and the command end to end on a real checkpoint."""

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from vpo.eval import COLUMNS, format_table, paired_difference, summarise


def test_the_paired_difference_matches_scipys_paired_t_interval():
    rng = np.random.default_rng(0)
    base = {"temporal_flickering": rng.uniform(0.95, 0.98, 20), "alignment": rng.uniform(0.5, 1, 20)}
    tuned = {
        "temporal_flickering": base["temporal_flickering"] + rng.normal(0.002, 0.001, 20),
        "alignment": base["alignment"].copy(),
    }
    base["alignment"][:4] = np.nan  # prompts the detector cannot parse are left out, not counted as 0
    tuned["alignment"][5] -= 0.25
    d = paired_difference(base, tuned)
    diff = tuned["temporal_flickering"] - base["temporal_flickering"]
    ci = stats.ttest_1samp(diff, 0).confidence_interval(0.95)
    assert d["temporal_flickering"]["mean"] == pytest.approx(diff.mean())
    assert d["temporal_flickering"]["ci95"] == pytest.approx([ci.low, ci.high])
    assert d["temporal_flickering"]["better"] == int((diff > 0).sum())
    assert d["alignment"]["n"] == 16 and d["alignment"]["better"] == 0 and d["alignment"]["worse"] == 1
    sampling = {"sampler": "euler", "steps": 20, "guidance": 4.0, "flow_shift": 3.0, "seed": 0, "videos": 20}
    table = format_table(
        {
            "base": summarise({**base, **_rest()}),
            "checkpoint": summarise({**tuned, **_rest()}),
            "difference": d,
            "sampling": sampling,
        }
    )
    assert f"{d['temporal_flickering']['better']}/20" in table and "0/16" in table
    assert (
        "sampled: 20 videos each, seeds 0..19, 20 Euler steps on schedule shifted by 3 (the run's), CFG 4; "
        "base and checkpoint alike." in table
    )


def _rest():
    return {k: np.ones(20) for k in ("subject_consistency", "motion_smoothness", "dynamic_degree", "imaging_quality")}


def test_vpo_eval_prints_base_checkpoint_and_their_paired_difference(tmp_path, quick_checkpoint):
    checkpoint = quick_checkpoint(tmp_path / "run", sampling_steps=2, tie_tolerance=0.0, lr=0.05)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red ball moving right\na blue square falling\na purple blob\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vpo",
            "eval",
            "--checkpoint",
            str(checkpoint),
            "--prompts",
            str(prompts),
            "--steps",
            "2",
            "--flow-shift",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert set(result) == {"base", "checkpoint", "difference", "suite", "labels", "quality", "sampling"}
    assert result["sampling"] == {
        "sampler": "euler",
        "steps": 2,
        "guidance": 4.0,
        "flow_shift": 2.0,  # chosen here; the run's was 0 (tiny's own schedule)
        "flow_shift_chosen": True,
        "seed": 0,
        "videos": 3,
    }
    assert "2 Euler steps on schedule shifted by 2 (chosen for this evaluation)" in format_table(result)
    assert set(COLUMNS) <= set(result["base"]) and result["base"]["videos"] == 3
    assert result["labels"]["imaging_quality"].startswith("proxy (") and result["labels"][
        "temporal_flickering_all"
    ].startswith("exact")
    assert (
        "not VBench's score" in result["quality"]["label"] and "background_consistency" in result["quality"]["missing"]
    )
    assert result["quality"]["value"] is None and result["base"]["quality_score"] > 0  # the value is per row
    flicker = result["difference"]["temporal_flickering_all"]
    assert flicker["n"] == 3 and flicker["better"] + flicker["worse"] <= 3
    assert flicker["mean"] == pytest.approx(
        result["checkpoint"]["temporal_flickering_all"] - result["base"]["temporal_flickering_all"], abs=1e-6
    )
    assert flicker["ci95"][0] <= flicker["mean"] <= flicker["ci95"][1]


def test_wide_intervals_do_not_run_into_their_neighbours():
    rng = np.random.default_rng(1)
    base = {c: rng.uniform(0.4, 0.6, 20) for c in ("presence", "motion_extent")}
    tuned = {"presence": base["presence"] + rng.normal(0, 0.2, 20), "motion_extent": base["motion_extent"] - 0.1}
    tuned["motion_extent"] += rng.normal(0, 0.15, 20)
    d = paired_difference(base, tuned)
    table = format_table(
        {"base": summarise({**base, **_rest()}), "checkpoint": summarise({**tuned, **_rest()}), "difference": d}
    )
    ci_row = next(line for line in table.splitlines() if line.startswith("  95% CI"))
    # one whitespace-separated token per column with a difference, each an interval "lo..hi"
    tokens = ci_row.split()[2:]
    assert len(tokens) == len(d) and all(t.count("..") == 1 for t in tokens)


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--steps", "5000", "steps must be between 1 and 1000, got 5000"),
        ("--guidance", "nan", "guidance must be >= 1 (1 = no guidance), got nan"),
        ("--flow-shift", "-1", "flow_shift must be >= 0 (0 = the backbone's default), got -1.0"),
        ("--flow-shift", "nan", "flow_shift must be >= 0 (0 = the backbone's default), got nan"),
    ],
)
def test_vpo_eval_refuses_bad_sampling_in_one_line_before_loading_anything(tmp_path, flag, value, message):
    from tests.test_limits import one_line_error

    r = subprocess.run(
        [sys.executable, "-m", "vpo", "eval", "--checkpoint", str(tmp_path / "none"), flag, value],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert one_line_error(r) and message in r.stderr, r.stderr
