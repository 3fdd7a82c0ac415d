"""``vpo physmaster`` (issue 17, item 5): PhysMaster's three stages on the shipped tiny-i2v, with
``--quick`` (a few tiny steps per stage), each stage's checkpoint and the base evaluated on the
same held-out scenes."""

import shutil

import numpy as np
import pytest
import torch

from vpo.backbones.physencoder import HEAD
from vpo.cli import main
from vpo.physmaster import LABELS, STAGES, STARTED_FROM, PhysMasterConfig
from vpo.train.checkpoints import POLICY, REF, latest_checkpoint, read_safetensors
from vpo.train.sinks import read_metrics


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``vpo physmaster --quick`` run, shared by the tests of this module (about 10 s)."""
    out = tmp_path_factory.mktemp("physmaster") / "pm"
    assert main(["--threads", "1", "physmaster", "--quick", "--out", str(out)]) == 0
    return out


def tensors(out, stage) -> dict[str, torch.Tensor]:
    return read_safetensors(latest_checkpoint(out / stage) / "adapter.safetensors")


def split(saved: dict[str, torch.Tensor]) -> tuple[dict, dict, dict]:
    """(policy adapter, reference adapter, the policy's PhysEncoder head) of a checkpoint's tensors."""
    policy = {k: v for k, v in saved.items() if f".{POLICY}." in k and "lora_" in k}
    ref = {k.replace(f".{REF}.", f".{POLICY}."): v for k, v in saved.items() if f".{REF}." in k and "lora_" in k}
    head = {k: v for k, v in saved.items() if k.startswith(HEAD)}
    assert policy and head
    return policy, ref, head


def differ(a: dict, b: dict) -> set[str]:
    assert a.keys() == b.keys()
    return {k for k in a if not torch.equal(a[k], b[k])}


def test_the_three_stages_run_in_order_each_training_what_it_should(quick_run):
    quick = PhysMasterConfig.quick("x")
    steps = {
        "stage1-sft": quick.steps_sft,
        "stage2-dpo-lora": quick.steps_dpo,
        "stage3-dpo-physencoder": quick.steps_dpo,
    }
    for stage in STAGES:
        assert latest_checkpoint(quick_run / stage).name == f"step_{steps[stage]:06d}"
        assert [m["step"] for m in read_metrics(quick_run / stage) if m["step"]] == list(range(1, steps[stage] + 1))
    sft, lora, head = (split(tensors(quick_run, s)) for s in STAGES)
    # stage I trained both: the adapter's B and the head's output projection left their zero init
    assert any(k.endswith("lora_B.policy.weight") and v.abs().sum() > 0 for k, v in sft[0].items())
    assert sft[2][HEAD + "out.weight"].abs().sum() > 0
    # each DPO stage started from the stage before: its reference is that stage's policy (no
    # curriculum update in one step)
    assert not differ(lora[1], sft[0]) and not differ(head[1], lora[0])
    # stage II trained the adapter alone, stage III the head alone
    assert differ(lora[0], sft[0]) and not differ(lora[2], sft[2])
    assert not differ(head[0], lora[0]) and differ(head[2], lora[2])
    assert (quick_run / "stage2-dpo-lora" / STARTED_FROM).read_text().strip() == "stage1-sft/checkpoints/step_000002"


def test_the_report_has_a_row_for_the_base_and_each_stage(quick_run, capsys):
    report = (quick_run / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith("| model ")]
    assert [r.split(" | ")[0][2:] for r in rows] == [LABELS[k] for k in ("base", *STAGES)]
    for row in rows:  # the mean inside its interval, three reward dimensions in [0, 1]
        cells = row.strip("| ").split(" | ")
        mean, lo, hi = float(cells[1].split()[0]), *map(float, cells[1].split("[")[1].rstrip("]").split(", "))
        assert lo <= mean <= hi
        assert all(0 <= float(c) <= 1 for c in cells[4:])
    # the change from the row above: the difference of the two rows' means (the same scenes)
    means = [float(r.split(" | ")[1].split()[0]) for r in rows]
    for row, mean, above in zip(rows[1:], means[1:], means):
        assert abs(float(row.split(" | ")[3].split()[0]) - (mean - above)) <= 0.011


def test_rerunning_reuses_finished_stages_and_retrains_a_removed_one(quick_run, capsys):
    def stamps():
        return {p: p.stat().st_mtime_ns for p in quick_run.rglob("*") if p.is_file() and p.name != "report.md"}

    before = stamps()
    assert main(["--threads", "1", "physmaster", "--quick", "--out", str(quick_run)]) == 0
    assert "stage3-dpo-physencoder: reused" in capsys.readouterr().out
    assert stamps() == before  # nothing trained, nothing evaluated again
    shutil.rmtree(quick_run / "stage3-dpo-physencoder")
    assert main(["--threads", "1", "physmaster", "--quick", "--out", str(quick_run)]) == 0
    out = capsys.readouterr().out
    assert "stage2-dpo-lora: reused" in out and "stage3-dpo-physencoder: trained" in out
    after = stamps()
    assert all(after[p] == t for p, t in before.items() if "stage3" not in str(p))


def test_a_copied_folder_is_reused_where_it_is(quick_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(quick_run, copy)
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file() and p.name != "report.md"}
    assert main(["--threads", "1", "physmaster", "--quick", "--out", str(copy)]) == 0
    assert capsys.readouterr().out.count(": reused ") == len(STAGES)
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_settings_in_a_toml_file_run_the_same_chain_as_the_flags(quick_run, tmp_path, capsys):
    """``vpo physmaster --config`` (a web chain's export): the quick run's settings read back from
    TOML are those it ran with, so every stage is reused; bad files exit 2 naming the problem."""
    config = tmp_path / "chain.toml"
    config.write_text(PhysMasterConfig.quick(str(quick_run)).to_toml())
    assert PhysMasterConfig.from_toml(config) == PhysMasterConfig.quick(str(quick_run))
    assert main(["--threads", "1", "physmaster", "--config", str(config)]) == 0
    assert capsys.readouterr().out.count(": reused ") == len(STAGES)
    for text, message in (
        ("steps_sft = 2\nsteps_sfd = 3\n", "unknown setting(s) steps_sfd; valid: out, steps_sft"),
        ('out = "x"\nsteps_sft = "many"\n', "steps_sft must be a TOML int, got 'many'"),
        ("steps_sft = 2\n", "names no out folder"),
        ("steps_sft = [\n", "is not valid TOML"),
    ):
        config.write_text(text)
        assert main(["physmaster", "--config", str(config)]) == 2
        assert message in capsys.readouterr().err, text
    assert main(["physmaster", "--config", str(config), "--quick", "--out", str(tmp_path)]) == 2
    assert "--quick and --config: give one" in capsys.readouterr().err
    assert main(["physmaster", "--steps-sft", "3"]) == 2
    assert "give --out (or --config with out in it)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps-sft", "0"], "steps-sft must be >= 1"),
        (["--heldout", "0"], "heldout must be >= 1"),
        (["--steps-dpo", "2"], "other settings"),  # the quick run's stage II took 1 step
    ],
)
def test_bad_input_exits_2_with_a_message(quick_run, capsys, args, message):
    assert main(["physmaster", "--quick", "--out", str(quick_run), *args]) == 2
    assert message in capsys.readouterr().err


def test_an_out_that_is_a_file_exits_2(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    assert main(["physmaster", "--quick", "--out", str(tmp_path / "f")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_the_ablation_trains_stages_i_and_ii_without_a_physencoder_and_joins_the_report(quick_run, tmp_path, capsys):
    results = tmp_path / "results.md"
    results.write_text("# Ablations on the tiny backbone\n\n## (a) Online vs offline DPO\n\nkept\n")
    args = ["--threads", "1", "physmaster", "--quick", "--out", str(quick_run), "--ablation", "--results"]
    assert main([*args, str(results)]) == 0
    out = capsys.readouterr().out
    assert "stage3-dpo-physencoder: reused" in out  # the main chain is the module's run, untouched
    assert "no-physencoder/stage2-dpo-lora: trained" in out
    ablated = quick_run / "no-physencoder"
    assert not (ablated / "stage3-dpo-physencoder").exists()
    for stage in ("stage1-sft", "stage2-dpo-lora"):
        saved = tensors(ablated, stage)
        assert not any(k.startswith(HEAD) for k in saved)  # no PhysEncoder at all
        assert any(k.endswith("lora_B.policy.weight") and v.abs().sum() > 0 for k, v in saved.items())
    report = (quick_run / "report.md").read_text()
    rows = [line.split(" | ")[0][2:] for line in report.splitlines() if line.startswith("| ") and "model" not in line]
    assert rows == [LABELS[k] for k in ("base", *STAGES, "no-physencoder/stage1-sft", "no-physencoder/stage2-dpo-lora")]
    assert "stage II with it vs without" in report and "--ablation" in report
    # every verdict line says which way by the interval rule
    verdicts = [line for line in report.splitlines() if line.startswith("- ")]
    assert len(verdicts) >= 3
    assert all(any(w in v for w in ("**lowers**", "**raises**", "**no change beyond noise**")) for v in verdicts)
    assert any(f"lowers the error: **{w}**" in report for w in ("met", "not met", "not shown"))
    # --results: the report as section (p) of the markdown file, the other sections kept; replaced on a rerun
    text = results.read_text()
    assert "## (a) Online vs offline DPO\n\nkept" in text and text.count("## (p) PhysMaster") == 1
    assert main([*args, str(results)]) == 0
    assert results.read_text().count("## (p) PhysMaster") == 1


def test_results_in_a_missing_folder_exits_2(quick_run, tmp_path, capsys):
    bad = tmp_path / "nowhere" / "results.md"
    assert main(["physmaster", "--quick", "--out", str(quick_run), "--results", str(bad)]) == 2
    assert "existing folder" in capsys.readouterr().err


def test_a_stop_ends_the_stage_in_progress_with_a_checkpoint_and_starts_no_later_one(tmp_path):
    """What the web worker passes: a sink per stage, and a stop (cancel, pause) asked before each step."""
    from vpo.physmaster import physmaster

    class Recorder:  # the three methods of a sink (vpo.train.sinks.Sink), recorded per stage
        def __init__(self, stage):
            self.stage = stage

        def metrics(self, step, values):
            seen.append((self.stage, step))

        def phase(self, *args, **kwargs):
            pass

        def samples(self, *args, **kwargs):
            pass

    seen: list[tuple[str, int]] = []
    cfg = PhysMasterConfig.quick(str(tmp_path / "pm"), steps_sft=3)
    stop = lambda: len(seen) >= 2  # noqa: E731 (stage I's second step has reported)
    assert physmaster(cfg, progress=False, say=lambda line: None, sink_for=lambda s, _: Recorder(s), stop=stop) is None
    assert seen == [("stage1-sft", 1), ("stage1-sft", 2)]
    assert latest_checkpoint(tmp_path / "pm" / "stage1-sft").name == "step_000002"
    assert not (tmp_path / "pm" / "stage2-dpo-lora").exists()
    # run again without a stop: stage I resumes at step 3, the others train, the report is written
    report = physmaster(cfg, progress=False, say=lambda line: None, sink_for=lambda s, _: Recorder(s))
    assert report is not None and report.is_file()
    assert seen[2:] == [("stage1-sft", 3), ("stage2-dpo-lora", 1), ("stage3-dpo-physencoder", 1)]


def test_the_goal_is_met_only_when_every_dpo_stage_lowers_the_error_beyond_noise():
    from vpo.physmaster import goal

    rng = np.random.default_rng(0)
    base = 2 + rng.normal(0, 0.5, 32)

    def rows(d2: float, d3: float) -> dict:
        # scene-to-scene spread shared by every row (paired), a small per-scene jitter
        one, two = base + 0.01 * rng.normal(size=32), base + d2 + 0.01 * rng.normal(size=32)
        return {
            "base": {"trajectory_error": list(base)},
            "stage1-sft": {"trajectory_error": list(one)},
            "stage2-dpo-lora": {"trajectory_error": list(two)},
            "stage3-dpo-physencoder": {"trajectory_error": list(two + d3 + 0.01 * rng.normal(size=32))},
        }

    assert goal(rows(-0.2, -0.2)).startswith("**met**")
    assert goal(rows(-0.2, +0.2)).startswith("**not met**")
    assert goal(rows(-0.2, 0.0)).startswith("**not shown**")
