"""`vpo ablate` end to end on a tiny budget: every variant trains, is evaluated, and the report
says for each study whether it matches the paper, with its plot; and the verdict rule on hand-made
evaluations (per-video values, as ``evaluated`` caches them)."""

import json
from pathlib import Path

import numpy as np
import pytest

from vpo.ablations import STUDIES, VARIANTS, ablate, by_rule, check_studies, merge_sections, report
from vpo.train.config import TrainConfig

EVAL_PROMPTS = 8


def row(**columns) -> dict:
    """An eval row as ``evaluated`` writes it: every column at 0.5 on every video, ``columns`` overriding
    one with a value (the same on every video, plus a little noise so that intervals have a width) or a
    list of per-video values; each summary value is the mean of its videos."""
    from vpo.eval import COLUMNS

    noise = np.random.default_rng(len(columns)).normal(0, 1e-3, EVAL_PROMPTS)
    per_video = {}
    for c in COLUMNS:
        if c == "quality_score":
            continue
        v = columns.get(c, 0.5)
        per_video[c] = list(v) if isinstance(v, list) else list(v + noise)
    return {**{c: float(np.mean(v)) for c, v in per_video.items()}, "quality_score": 0.7, "per_video": per_video}


def test_ablate_writes_a_report_with_every_study_and_its_plot(tmp_path):
    base = TrainConfig(
        steps=1,
        num_candidates=2,
        sampling_steps=4,  # refl-d4 back-propagates through 4
        heldout_count=2,
        heldout_every=1,
        checkpoint_every=1,
        prompts="demo",
    )
    small = {"seeds": [0], "out": tmp_path / "runs", "eval_prompts": 2, "progress": False, "eval_steps": 2}
    report = ablate(base, results=tmp_path / "results.md", **small)
    text = report.read_text()
    for study, (title, _) in STUDIES.items():
        assert f"## ({study}) {title}" in text
        assert (tmp_path / "results" / f"{study}.png").stat().st_size > 1000
    # a verdict per comparison by the rule, one per K > 0 in (b); (f) and (g) are no paper's claim
    verdicts = [line for line in text.splitlines() if line.startswith("- ") and " minus " in line]
    assert len(verdicts) == 1 + 3 + 1 + 1, verdicts
    assert all(line.endswith(("**matches**", "**does not match**", "**inconclusive**")) for line in verdicts)
    assert "fixed seeds, 2 sampling steps, the columns" in text
    assert "candidates at 10 steps **" in text and "By the every-seed rule the veto **" in text
    section_c = text.split("## (c)")[1].split("## (d)")[0]
    for name in STUDIES["c"][1]:  # offline DPO logs no reward/mean: its reward is the held-out monitor's
        key = "heldout/temporal" if name == "offline" else "reward/mean"
        assert f"- {name}: {key} slope per 100 steps seed 0 " in section_c
    assert "Paper: ReFL reward-hacks, DPO does not (Sec. 3, Fig. 3). Here: refl, refl-d4 vs online, offline" in text
    assert (
        "Sample efficiency (OnlineVPO" in text
        and "Reference updates that later steps trained against, in 1 steps: fixed-ref (K = 0) 0" in text
    )
    for name in VARIANTS:  # each run's evaluation keeps its per-video values, for the intervals
        cached = json.loads((tmp_path / "runs" / f"{name}-s0" / "eval.json").read_text())
        assert len(cached["per_video"]["presence"]) == 2
    again = ablate(base, results=tmp_path / "again.md", **small)  # finished runs are reused, not retrained
    tables = lambda md: [line for line in md.splitlines() if line.startswith("|")]  # noqa: E731
    assert tables(Path(again).read_text()) == tables(text)


def test_one_study_replaces_its_section_of_a_report_and_keeps_the_rest(tmp_path):
    """``--studies e``: the section written for it replaces its namesake in an existing report, whose
    other sections and hand-written notes stay; the section carries its own command."""
    names = STUDIES["e"][1]
    evals = {(name, 0): row(temporal_flickering_all=0.6 - 0.1 * i) for i, name in enumerate(names)}
    curves = {(name, 0): [{"step": 1, "reward/mean": 0.9}] for name in names}
    base = TrainConfig(steps=3)
    text = report(base, [0], evals, row(), curves, tmp_path / "results", tmp_path / "r.md", 60, 90, 2, ["e"])
    old = "# Ablations\n\nmeasured by hand on machine X\n\n## (a) A\n\nold a\n\n## (e) E\n\nold e\n"
    merged = merge_sections(old, text)
    assert "measured by hand on machine X" in merged and "old a" in merged and "old e" not in merged
    # the full run's text under the title moves into the old section that stays, not above the new one
    assert merged.startswith("# Ablations\n\n## (a) A\n\nmeasured by hand on machine X\n")
    assert merged.count("measured by hand") == 1 and merge_sections(merged, text) == merged
    assert merged.count("## (e) ") == 1 and f"## (e) {STUDIES['e'][0]}" in merged
    section = merged.split("## (e)")[1]
    assert "`vpo ablate --seeds 0 --steps 3 --studies e`" in section and "Flow-RWR: temperature" in section
    assert "- online minus online-rwr: seed 0 +10.00 [+10.00, +10.00] — **matches**" in section
    assert merge_sections("# R\n\n## (a) A\n\na\n", text).index("## (a)") < merge_sections(
        "# R\n\n## (a) A\n\na\n", text
    ).index("## (e)")
    with pytest.raises(ValueError, match="unknown study z; valid: a, b, c, d, e, f, g"):
        check_studies(["z"])


def _section(tmp_path, study: str, evals: dict, base_row: dict, curves: dict | None = None, seeds=(0, 1)) -> str:
    curves = curves or {key: [{"step": 1, "reward/mean": 0.9}] for key in evals}
    return report(
        TrainConfig(steps=60), list(seeds), evals, base_row, curves, tmp_path / "r", tmp_path / "r.md", 1, 1, 8, [study]
    )


def test_a_verdict_matches_only_when_every_seeds_paired_interval_excludes_0_in_the_papers_direction(tmp_path):
    rng = np.random.default_rng(0)
    offline = {s: row(temporal_flickering_all=list(0.96 + rng.normal(0, 0.002, EVAL_PROMPTS))) for s in (0, 1)}

    def verdict(shift: list[float], spread: float = 0.0005) -> str:
        evals = {("offline", s): offline[s] for s in (0, 1)}
        for s, d in enumerate(shift):
            noise = rng.normal(0, spread, EVAL_PROMPTS)
            flicker = np.array(offline[s]["per_video"]["temporal_flickering_all"]) + d + noise
            evals[("online", s)] = row(temporal_flickering_all=list(flicker))
        line = next(x for x in _section(tmp_path, "a", evals, row()).splitlines() if x.startswith("- online minus"))
        return line.rsplit("— ", 1)[1]

    assert verdict([0.003, 0.002]) == "**matches**"
    assert verdict([-0.003, -0.002]) == "**does not match**"
    assert verdict([0.003, -0.002]) == "**inconclusive**"  # the seeds disagree
    assert verdict([0.003, 0.0001], spread=0.002) == "**inconclusive**"  # seed 1's interval holds 0
    assert by_rule([]) == 0 and by_rule([(0.1, float("nan"), float("nan"))]) == 0


def test_a_study_of_four_variants_renders_every_row_with_an_interval_and_a_verdict_per_k(tmp_path):
    names = STUDIES["b"][1]
    assert len(names) == 4
    evals = {(name, s): row(temporal_flickering_all=0.96 + 0.001 * i) for i, name in enumerate(names) for s in (0, 1)}
    text = _section(tmp_path, "b", evals, row(temporal_flickering_all=0.95))
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[1:]] == ["| base", *(f"| {n}" for n in names)]
    for line in table[1:]:
        cells = line.strip("| ").split(" | ")[1:]
        assert "±" in cells[1] and "±" in cells[7] and "±" not in cells[-1]  # flicker.all, presence; quality
    assert "| ref-every-50 | 50.02 ± 0.06 | 96.32 ± 0.06 | " in text
    for k in ("ref-every-10", "online", "ref-every-50"):
        assert f"- {k} minus fixed-ref: seed 0 +" in text
    assert text.count("— **matches**") == 3
    assert (
        "Reference updates that later steps trained against, in 60 steps: fixed-ref (K = 0) 0, "
        "ref-every-10 (K = 10) 5, online (K = 20) 2, ref-every-50 (K = 50) 1." in text
    )


def test_the_reward_hacking_study_says_which_variants_hack_by_its_rule(tmp_path):
    """ReFL's reward rises while held-out presence or alignment falls in every seed: it hacks; no
    held-out measure of DPO's falls: it does not; a run whose seeds disagree is inconclusive."""
    names = STUDIES["c"][1]
    rising = [{"step": t, "reward/mean": 0.9 + 0.001 * t + 0.0002 * (-1) ** t} for t in range(1, 21)]
    flat = [{"step": t, "reward/mean": 0.9 + 0.0002 * (-1) ** t} for t in range(1, 21)]
    curves = {(n, s): rising for n in names for s in (0, 1)}
    # offline DPO samples no candidates: its reward curve is the held-out monitor's trained dimension
    curves |= {("offline", s): [{"step": t, "heldout/temporal": 0.9 + 0.01 * t} for t in (0, 10, 20)] for s in (0, 1)}
    fell, rose = row(presence=0.4, alignment=0.4), row(presence=0.6, alignment=0.6)
    evals = {("online", s): rose for s in (0, 1)} | {("offline", s): rose for s in (0, 1)}
    evals |= {("refl", s): fell for s in (0, 1)} | {("refl-d4", 0): fell, ("refl-d4", 1): rose}
    text = _section(tmp_path, "c", evals, row(), curves)
    assert "- refl: reward/mean slope per 100 steps seed 0 +0.10 [" in text and "(first → last logged: " in text
    assert (
        "- offline: heldout/temporal slope per 100 steps seed 0 +1.00 [+1.00, +1.00]; seed 1 +1.00 [+1.00, +1.00] "
        "(first → last logged: 0.900 → 1.100, 0.900 → 1.100)" in text
    )
    verdicts = {line[2:].split(":")[0]: line.rsplit("— ", 1)[1] for line in text.splitlines() if line.startswith("- ")}
    assert verdicts == {
        "online": "**does not hack**",
        "offline": "**does not hack**",
        "refl": "**hacks**",
        "refl-d4": "**inconclusive**",
    }
    assert "Here: refl, refl-d4 vs online, offline — **inconclusive**" in text
    evals |= {("refl-d4", 1): fell}
    assert "— **matches** (matches when" in _section(tmp_path, "c", evals, row(), curves)
    # one held-out measure falling is enough: the object gone, however well the rest aligns
    one = evals | {("refl", s): row(presence=0.4, alignment=0.6) for s in (0, 1)}
    text = _section(tmp_path, "c", one, row(), curves)
    assert next(x for x in text.splitlines() if x.startswith("- refl:")).endswith("— **hacks**")
    # a flat reward is no hacking, whatever the held-out measures do
    flat_curves = curves | {("refl", s): flat for s in (0, 1)}
    text = _section(tmp_path, "c", evals, row(), flat_curves)
    assert "refl: reward/mean slope per 100 steps seed 0 +0.00" in text and "— **inconclusive** (matches" in text


def test_sample_efficiency_is_the_first_monitored_step_online_reaches_offlines_final_value(tmp_path):
    names = STUDIES["a"][1]
    evals = {(n, s): row() for n in names for s in (0, 1)}
    on = [{"step": t, "heldout/temporal": 0.90 + 0.01 * t / 10} for t in (0, 10, 20, 30)]
    off = [{"step": t, "heldout/temporal": v} for t, v in ((0, 0.90), (10, 0.905), (20, 0.915), (30, 0.925))]
    curves = {
        ("online", 0): on,
        ("offline", 0): off,
        ("online", 1): on,
        ("offline", 1): [*off[:3], off[3] | {"heldout/temporal": 0.95}],
    }
    text = _section(tmp_path, "a", evals, row(), curves)
    assert "seed 0: offline's final 92.50, online reaches it at step 30" in text
    assert "seed 1: offline's final 95.00, online reaches it not within 30 steps" in text
    assert "step S means somewhere in (S − 10, S]" in text


def test_the_candidate_steps_study_reports_margin_time_and_the_tuning_effect_by_its_rule(tmp_path):
    full, fast = STUDIES["f"][1]
    curves = {
        (full, s): [{"step": 1, "reward/margin": 0.02, "perf/sample_s": 6.0}, {"step": 2, "reward/margin": 0.04}]
        for s in (0, 1)
    } | {(fast, s): [{"step": 1, "reward/margin": 0.015, "perf/sample_s": 3.0}] for s in (0, 1)}

    def section(flicker_fast: list[float]) -> str:
        evals = {(full, s): row(temporal_flickering_all=0.97) for s in (0, 1)}
        evals |= {(fast, s): row(temporal_flickering_all=v) for s, v in enumerate(flicker_fast)}
        return _section(tmp_path, "f", evals, row(), curves)

    text = section([0.975, 0.98])
    assert "reward margin (winner minus loser) 0.0300 at 20 steps vs 0.0150 at 10 steps (0.50x)" in text
    assert "sampling 6.0 s vs 3.0 s a step (2.00x faster)" in text
    assert "seed 0 +0.50 [+0.50, +0.50]; seed 1 +1.00 [+1.00, +1.00]" in text
    assert "**tune better in every seed**" in text
    assert "**tune worse in every seed**" in section([0.96, 0.95])
    assert "**are inconclusive (no seed-consistent difference)**" in section([0.96, 0.99])
    assert "— **matches**" not in text
    full, shifted = STUDIES["h"][1]
    evals = {(full, s): row(temporal_flickering_all=0.97) for s in (0, 1)}
    evals |= {(shifted, s): row(temporal_flickering_all=0.97) for s in (0, 1)}
    curves |= {(shifted, s): curves[(fast, s)] for s in (0, 1)}
    text = _section(tmp_path, "h", evals, row(), curves)
    assert "0.0300 at 20 steps vs 0.0150 at 6 steps shifted by 3 (0.50x)" in text
    assert "candidates at 6 steps shifted by 3 **are inconclusive" in text


def test_the_veto_study_answers_its_two_questions_by_the_every_seed_rule(tmp_path):
    base_row = row(motion_extent=0.70, temporal_flickering_all=0.969)
    plain, vetoed = STUDIES["g"][1]

    def section(motion: list[float], flicker: list[float]) -> str:
        evals = {(plain, s): row(motion_extent=0.60, temporal_flickering_all=0.972) for s in (0, 1)}
        evals |= {
            (vetoed, s): row(motion_extent=m, temporal_flickering_all=f)
            for s, (m, f) in enumerate(zip(motion, flicker))
        }
        return _section(tmp_path, "g", evals, base_row)

    text = section([0.70, 0.69], [0.971, 0.970])
    assert "motion_extent online -10.00, subject-veto -0.50" in text
    assert "the veto **stops the hacking** and **keeps the gain**" in text
    assert "**does not stop the hacking** and **loses the gain**" in section([0.55, 0.58], [0.968, 0.967])
    split = "**is inconclusive on the hacking** and **is inconclusive on the gain**"
    assert split in section([0.65, 0.55], [0.97, 0.96])


def test_the_veto_and_reference_studies_say_by_the_rule_of_c_which_variants_hack(tmp_path):
    """(b) and (g) compare a measure the training reward raises; beside it, the rule of (c) says
    whether each variant kept its subject: the unguarded run whose reward rises while presence falls
    hacks, the vetoed one that keeps it does not."""
    plain, vetoed = STUDIES["g"][1]
    rising = [{"step": t, "reward/mean": 0.9 + 0.001 * t + 0.0002 * (-1) ** t} for t in range(1, 21)]
    curves = {(n, s): rising for n in (plain, vetoed) for s in (0, 1)}
    evals = {(plain, s): row(presence=0.05, alignment=0.1) for s in (0, 1)}
    evals |= {(vetoed, s): row(presence=0.6, alignment=0.6) for s in (0, 1)}
    text = _section(tmp_path, "g", evals, row(presence=0.6, alignment=0.6), curves)
    assert "Reward hacking, by the rule of (c). Rule: in a seed, a held-out measure **falls**" in text
    verdicts = {line[2:].split(":")[0]: line.rsplit("— ", 1)[1] for line in text.splitlines() if line.startswith("- ")}
    assert verdicts == {plain: "**hacks**", vetoed: "**does not hack**"}
    names = STUDIES["b"][1]
    evals = {(n, s): row(presence=0.05) for n in names for s in (0, 1)}
    text = _section(tmp_path, "b", evals, row(presence=0.6), {(n, s): rising for n in names for s in (0, 1)})
    hacking = [line for line in text.splitlines() if line.startswith("- ") and "slope per 100 steps" in line]
    assert [line.split(":")[0] for line in hacking] == [f"- {n}" for n in names]
    assert all(line.endswith("— **hacks**") for line in hacking)


def test_ablate_refuses_fewer_than_two_eval_prompts_with_a_message(tmp_path, capsys):
    from vpo.cli import main

    assert main(["ablate", "--eval-prompts", "1", "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "vpo ablate: error: --eval-prompts must be >= 2 (an interval needs two prompts), got 1" in err
    assert not (tmp_path / "runs").exists()
