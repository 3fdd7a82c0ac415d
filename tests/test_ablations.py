"""`vpo ablate` end to end on a tiny budget: every variant trains, is evaluated, and the report
says for each study whether it matches the paper, with its plot."""

from pathlib import Path

import pytest

from vpo.ablations import STUDIES, VARIANTS, ablate, check_studies, merge_sections, report
from vpo.train.config import TrainConfig


def test_ablate_writes_a_report_with_every_study_and_its_plot(tmp_path):
    base = TrainConfig(
        steps=1,
        num_candidates=2,
        sampling_steps=2,
        heldout_count=2,
        heldout_every=1,
        checkpoint_every=1,
        prompts="demo",
    )
    report = ablate(
        base, seeds=[0], out=tmp_path / "runs", results=tmp_path / "results.md", eval_prompts=2, progress=False
    )
    text = report.read_text()
    for study, (title, _) in STUDIES.items():
        assert f"## ({study}) {title}" in text
        assert (tmp_path / "results" / f"{study}.png").stat().st_size > 1000
    # a verdict per study: "matches" or "does not match" the paper; (f) is no paper's claim
    assert text.count("the paper**") == len(STUDIES) - 2 and "candidates at 10 steps **" in text
    assert "By the every-seed rule the veto **" in text
    for name in VARIANTS:
        assert (tmp_path / "runs" / f"{name}-s0" / "eval.json").exists()
    again = ablate(
        base, seeds=[0], out=tmp_path / "runs", results=tmp_path / "again.md", eval_prompts=2, progress=False
    )  # finished runs are reused, not retrained
    tables = lambda md: [line for line in md.splitlines() if line.startswith("|")]  # noqa: E731
    assert tables(Path(again).read_text()) == tables(text)


def test_one_study_replaces_its_section_of_a_report_and_keeps_the_rest(tmp_path):
    """``--studies e``: the section written for it replaces its namesake in an existing report, whose
    other sections and hand-written notes stay; the section carries its own command."""
    from vpo.eval import COLUMNS

    row = dict.fromkeys(COLUMNS, 0.5)
    names = STUDIES["e"][1]
    evals = {(name, 0): {**row, "temporal_flickering_all": 0.6 - 0.1 * i} for i, name in enumerate(names)}
    curves = {(name, 0): [{"step": 1, "reward/mean": 0.9}] for name in names}
    base = TrainConfig(steps=3)
    text = report(base, [0], evals, row, curves, tmp_path / "results", tmp_path / "r.md", 60, 90, 2, ["e"])
    old = "# Ablations\n\nmeasured by hand on machine X\n\n## (a) A\n\nold a\n\n## (e) E\n\nold e\n"
    merged = merge_sections(old, text)
    assert "measured by hand on machine X" in merged and "old a" in merged and "old e" not in merged
    assert merged.count("## (e) ") == 1 and f"## (e) {STUDIES['e'][0]}" in merged
    section = merged.split("## (e)")[1]
    assert "`vpo ablate --seeds 0 --steps 3 --studies e`" in section and "Flow-RWR: temperature" in section
    assert "online 60.00 vs online-rwr 50.00" in section and "**matches the paper**" in section
    assert merge_sections("# R\n\n## (a) A\n\na\n", text).index("## (a)") < merge_sections(
        "# R\n\n## (a) A\n\na\n", text
    ).index("## (e)")
    with pytest.raises(ValueError, match="unknown study z; valid: a, b, c, d, e, f, g"):
        check_studies(["z"])


def test_the_candidate_steps_study_reports_margin_time_and_the_tuning_effect_by_its_rule(tmp_path):
    from vpo.eval import COLUMNS

    row = dict.fromkeys(COLUMNS, 0.5)
    full, fast = STUDIES["f"][1]
    curves = {
        (full, s): [{"step": 1, "reward/margin": 0.02, "perf/sample_s": 6.0}, {"step": 2, "reward/margin": 0.04}]
        for s in (0, 1)
    } | {(fast, s): [{"step": 1, "reward/margin": 0.015, "perf/sample_s": 3.0}] for s in (0, 1)}

    def section(flicker_fast: list[float]) -> str:
        evals = {(full, s): {**row, "temporal_flickering_all": 0.97} for s in (0, 1)}
        evals |= {(fast, s): {**row, "temporal_flickering_all": v} for s, v in enumerate(flicker_fast)}
        return report(
            TrainConfig(steps=2), [0, 1], evals, row, curves, tmp_path / "r", tmp_path / "r.md", 1, 1, 2, ["f"]
        )

    text = section([0.97, 0.98])
    assert "reward margin (winner minus loser) 0.0300 at 20 steps vs 0.0150 at 10 (0.50x)" in text
    assert "sampling 6.0 s vs 3.0 s a step (2.00x faster)" in text
    assert "+0.50 points (worse in 0 of 2 seeds)" in text and "**tune as well in every seed**" in text
    assert "**tune worse in every seed**" in section([0.96, 0.95])
    assert "**are inconclusive (the seeds split)**" in section([0.96, 0.99])
    assert "the paper**" not in text


def test_the_veto_study_answers_its_two_questions_by_the_every_seed_rule(tmp_path):
    from vpo.eval import COLUMNS

    base_row = {**dict.fromkeys(COLUMNS, 0.5), "motion_extent": 0.70, "temporal_flickering_all": 0.969}
    plain, vetoed = STUDIES["g"][1]

    def section(motion: list[float], flicker: list[float]) -> str:
        evals = {(plain, s): {**base_row, "motion_extent": 0.60, "temporal_flickering_all": 0.972} for s in (0, 1)}
        evals |= {
            (vetoed, s): {**base_row, "motion_extent": m, "temporal_flickering_all": f}
            for s, (m, f) in enumerate(zip(motion, flicker))
        }
        return report(
            TrainConfig(steps=2), [0, 1], evals, base_row, {}, tmp_path / "r", tmp_path / "r.md", 1, 1, 2, ["g"]
        )

    text = section([0.71, 0.69], [0.971, 0.970])
    assert "motion_extent online -10.00, subject-veto +0.00" in text
    assert "the veto **stops the hacking** and **keeps the gain**" in text
    assert "**does not stop the hacking** and **loses the gain**" in section([0.55, 0.58], [0.968, 0.969])
    split = "**is inconclusive on the hacking (in 1 of 2 seeds)** and **is inconclusive on the gain (in 1 of 2 seeds)**"
    assert split in section([0.65, 0.55], [0.97, 0.96])
