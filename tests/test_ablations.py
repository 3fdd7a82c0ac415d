"""`vpo ablate` end to end on a tiny budget: every variant trains, is evaluated, and the report
says for each study whether it matches the paper, with its plot."""

from pathlib import Path

import pytest

from vpo.ablations import STUDIES, VARIANTS, ablate, check_studies
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
    assert text.count("the paper**") == len(STUDIES)  # a verdict per study: "matches" or "does not match"
    for name in VARIANTS:
        assert (tmp_path / "runs" / f"{name}-s0" / "eval.json").exists()
    again = ablate(
        base, seeds=[0], out=tmp_path / "runs", results=tmp_path / "again.md", eval_prompts=2, progress=False
    )  # finished runs are reused, not retrained
    tables = lambda md: [line for line in md.splitlines() if line.startswith("|")]  # noqa: E731
    assert tables(Path(again).read_text()) == tables(text)
    # one study again (--studies e): its section replaces its namesake in an existing report, whose
    # other sections and hand-written notes stay; the runs are reused
    partial = tmp_path / "partial.md"
    partial.write_text("# Ablations\n\nmeasured by hand on machine X\n\n## (a) A\n\nold a\n\n## (e) E\n\nold e\n")
    ablate(base, seeds=[0], out=tmp_path / "runs", results=partial, eval_prompts=2, progress=False, studies=["e"])
    merged = partial.read_text()
    assert "measured by hand on machine X" in merged and "old a" in merged and "old e" not in merged
    assert merged.count("## (e) ") == 1 and f"## (e) {STUDIES['e'][0]}" in merged
    assert "--studies e`" in merged.split("## (e)")[1]  # the section carries its own command
    with pytest.raises(ValueError, match="unknown study z; valid: a, b, c, d, e"):
        check_studies(["z"])
