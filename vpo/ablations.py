"""``vpo ablate``: OnlineVPO's ablations reproduced on the tiny default backbone, written to
``docs/results.md`` with PNG plots.

Seven comparisons, each at equal steps and for every seed given:

(a) online vs offline DPO (OnlineVPO Table 4d): where the pairs come from;
(b) curriculum reference update every K steps vs a fixed reference (Sec. 2.3);
(c) DPO vs ReFL (Sec. 3, Fig. 3): the training reward next to a held-out measure not trained on —
    a model that raises its reward while the held-out measure falls is reward-hacking;
(d) training on the video-level ``metrics`` temporal score vs the image-level ``image-metrics``
    one (Table 2's modality gap), both judged by the video-level temporal measure.
(e) online DPO vs online Flow-RWR (VideoAlign's two training-time algorithms): the same prompts,
    seeds, candidates and steps, only the update differs.
(f) candidates sampled with 10 Euler steps vs the default 20 (not a paper's claim: whether cheaper
    candidates make pairs as informative — the reward margin — and tune as well, judged by the
    same evaluation at 20 steps).
(g) the temporal reward with the subject veto vs without (``reward_guard = "subject-veto"``,
    ``vpo/rewards/guard.py``; not a paper's claim): does the veto stop the hacking the held-out
    motion extent shows, and keep the gain in flickering?

Every variant starts from the same base and shares everything but the one setting compared; the
online-DPO run with K = ``ref_update_every`` is the common baseline of all of them. Each finished run
is evaluated like ``vpo eval`` (fixed held-out prompts and seeds, base alongside). Runs already
finished in ``--out`` are reused, so an interrupted study resumes where it stopped. ``studies``
runs a subset (only their variants); its sections then replace or join those of the same letter in
an existing report, each with its own command, settings and time, and the rest stays as it was.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from vpo.train.config import TrainConfig
from vpo.train.keys import REWARD_MARGIN, REWARD_MEAN, SAMPLE_S, heldout

# name -> the settings that differ from the baseline
VARIANTS: dict[str, dict[str, Any]] = {
    "online": {},
    "offline": {"algorithm": "offline-dpo"},
    "fixed-ref": {"ref_update_every": 0},
    "refl": {"algorithm": "refl"},
    "image-reward": {"reward": "image-metrics"},
    "online-rwr": {"algorithm": "online-rwr"},
    "candidates-10-steps": {"sampling_steps": 10},
    "subject-veto": {"reward_guard": "subject-veto"},
}
STUDIES = {
    "a": ("Online vs offline DPO", ["online", "offline"]),
    "b": ("Curriculum reference update vs fixed reference", ["online", "fixed-ref"]),
    "c": ("DPO vs ReFL: training reward and a held-out measure", ["online", "refl"]),
    "d": ("Video-level vs image-level reward, judged by the video-level temporal measure", ["online", "image-reward"]),
    "e": ("Online DPO vs online Flow-RWR (VideoAlign)", ["online", "online-rwr"]),
    "f": ("Candidates at 20 vs 10 sampling steps", ["online", "candidates-10-steps"]),
    "g": ("Temporal reward without and with the subject veto", ["online", "subject-veto"]),
}
# what each study's verdict looks at (an eval column, higher is better) and the paper's direction
VERDICTS = {
    "a": ("temporal_flickering_all", "online > offline (Table 4d: online better on every dimension)"),
    "b": ("temporal_flickering_all", "curriculum > fixed (Sec. 2.3: the moving reference keeps improving)"),
    "c": ("dynamic_degree", "ReFL's held-out dynamic degree falls further than DPO's (ReFL reward-hacks)"),
    "d": ("temporal_flickering_all", "video-level reward > image-level reward on the video-level temporal measure"),
    "e": ("temporal_flickering_all", "online-dpo > online-rwr (VideoAlign: Flow-DPO beats Flow-RWR)"),
    # not a paper's claim: the question is whether halving the candidates' steps costs tuning effect
    "f": ("temporal_flickering_all", "none; the question: do candidates at 10 steps tune as well as at 20?"),
    "g": ("motion_extent", "none; the question: does the veto stop the hacking and keep the gain?"),
}


def check_studies(studies) -> list[str]:
    """The studies asked for, in report order; an unknown letter is a ValueError naming the valid ones."""
    if not studies:
        return list(STUDIES)
    unknown = [s for s in studies if s not in STUDIES]
    if unknown:
        raise ValueError(
            f"unknown stud{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}; valid: {', '.join(STUDIES)}"
        )
    return [s for s in STUDIES if s in studies]


def run_variant(base: TrainConfig, name: str, seed: int, out: Path, progress: bool = True) -> Path:
    """Train one variant for one seed (or reuse a finished run); returns its run folder."""
    from vpo.train import train
    from vpo.train.checkpoints import latest_checkpoint
    from vpo.train.sinks import JsonlSink

    folder = out / f"{name}-s{seed}"
    cfg = TrainConfig.from_dict({**base.to_dict(), **VARIANTS[name], "seed": seed, "out": str(folder)})
    last = latest_checkpoint(folder)
    if last is not None and last.name == f"step_{cfg.steps:06d}":
        return folder
    sink = JsonlSink(folder, cfg.steps, progress=progress, start_step=0)
    try:
        train(cfg, sink, resume=last is not None)
    finally:
        sink.close()
    return folder


def evaluated(path: Path, prompts: list[str], steps: int, guidance: float, checkpoint: Path | None = None) -> dict:
    """``vpo eval`` columns of the base (``checkpoint`` None) or of a checkpoint, cached at ``path``."""
    from vpo.backbones import load_backbone
    from vpo.eval import COLUMNS, evaluate_videos, sample_all
    from vpo.train.checkpoints import load_policy

    if path.exists():
        row = json.loads(path.read_text())
        if all(c in row for c in COLUMNS):  # else written before a column existed: evaluate again
            return row
    backbone = load_backbone("tiny")
    if checkpoint is not None:
        load_policy(backbone, checkpoint)
    row = evaluate_videos(sample_all(backbone, prompts, 0, steps, guidance), prompts, backbone.spec.fps)
    path.write_text(json.dumps(row, indent=1))
    return row


def ablate(
    base: TrainConfig,
    seeds: list[int],
    out,
    results,
    eval_prompts: int = 32,
    progress: bool = True,
    studies: list[str] | None = None,
) -> Path:
    """Run every variant of ``studies`` (default: all) for every seed, evaluate, and write ``results``
    (markdown) with plots beside it in ``<results stem>/``. Returns the path of the markdown file."""
    from vpo.data.prompts import read_prompts
    from vpo.train.checkpoints import latest_checkpoint
    from vpo.train.sinks import read_metrics

    chosen = check_studies(studies)
    names = [name for name in VARIANTS if any(name in STUDIES[study][1] for study in chosen)]
    out, results = Path(out), Path(results)
    out.mkdir(parents=True, exist_ok=True)
    prompts = read_prompts(base.heldout_prompts)[:eval_prompts]
    t0 = time.perf_counter()
    runs = {(name, s): run_variant(base, name, s, out, progress) for name in names for s in seeds}
    evals = {
        key: evaluated(folder / "eval.json", prompts, base.sampling_steps, base.guidance, latest_checkpoint(folder))
        for key, folder in runs.items()
    }
    base_eval = evaluated(out / "base-eval.json", prompts, base.sampling_steps, base.guidance)
    wall = time.perf_counter() - t0
    curves = {key: read_metrics(folder) for key, folder in runs.items()}
    # each run's own clock (metrics' "time" at its last step), so reused runs still count
    train_s = sum(max(r.get("time", 0.0) for r in rows) for rows in curves.values())
    figures = results.parent / results.stem
    figures.mkdir(parents=True, exist_ok=True)
    for study in chosen:
        plot_study(study, curves, seeds, figures / f"{study}.png")
    text = report(base, seeds, evals, base_eval, curves, figures, results, train_s, wall, len(prompts), chosen)
    if len(chosen) < len(STUDIES) and results.exists():
        text = merge_sections(results.read_text(), text)
    results.write_text(text)
    return results


def merge_sections(old: str, new: str) -> str:
    """``old`` with each ``## (x)`` section of ``new`` in place of its namesake (or added at the end)."""

    def split(text: str) -> tuple[str, dict[str, str]]:
        head, *parts = text.split("\n## (")
        return head, {part.split(")", 1)[0]: "\n## (" + part.rstrip("\n") for part in parts}

    head, sections = split(old)
    sections.update(split(new)[1])
    return head.rstrip("\n") + "\n" + "".join(f"\n{sections[k].lstrip(chr(10))}\n" for k in sorted(sections))


def machine() -> str:
    """This machine in a few words, for the report: CPU model, cores, native bf16 or not."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{os.cpu_count()}-core CPU"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "CPU")
    bf16 = "native bf16" if "avx512_bf16" in info or "amx_bf16" in info else "no native bf16"
    return f"{os.cpu_count()}-core {model} ({bf16})"


# --- report --------------------------------------------------------------------------------
def _mean_range(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    if not np.isfinite(v).any():
        return "–"  # e.g. flickering when the static filter kept no video
    return f"{100 * v.mean():.2f}" + (f" ± {100 * (v.max() - v.min()) / 2:.2f}" if len(v) > 1 else "")


def report(base, seeds, evals, base_eval, curves, figures, results, train_s, wall, n_prompts, studies=None) -> str:
    from vpo.eval import COLUMNS, SHORT

    studies = check_studies(studies)
    subset = len(studies) < len(STUDIES)
    cols = COLUMNS
    head = tuple(SHORT[c] for c in cols)
    only = f" --studies {','.join(studies)}" if subset else ""
    rwr = (
        f" Flow-RWR: temperature {base.rwr_temperature}, {base.noise_draws} noise draw(s) per video, no reference."
        if "e" in studies
        else ""
    )
    about = [
        f"Reproduce: `vpo ablate --seeds {','.join(map(str, seeds))} --steps {base.steps}{only}` "
        f"({machine()}: training {train_s / 60:.1f} min, the sum of the runs' own clocks; this command took "
        f"{wall / 60:.1f} min in all, evaluation included; finished runs in `--out` are reused, not re-run).",
        "",
        f"Shared settings: `{base.reward}` reward on `{base.dimension}`, N = {base.num_candidates} candidates, "
        f"K = {base.ref_update_every}, beta = {base.beta}, {base.noise_draws} noise draw(s) per pair, "
        f"LoRA rank {base.lora_rank}, lr {base.lr}, "
        f"{base.steps} steps of {base.prompts_per_step} prompt(s), {base.sampling_steps} sampling steps, "
        f"CFG {base.guidance}; ReFL back-propagates through the last {base.refl_depth} step(s).{rwr} "
        f"Evaluation: {n_prompts} held-out prompts (wordings never seen in pretraining), fixed seeds, "
        f"the columns of `vpo eval` in %; each cell is the mean over seeds ± half their range.",
        "flicker: VBench's formula on videos its static filter keeps (flicker.all: on every video); subject, "
        "smooth, dynamic and imaging are weight-free proxies (docs/metrics.md); quality is VBench's formula over "
        "these 5 of its 7 quality dimensions, not VBench's score.",
        "",
    ]
    # a subset's sections go into an existing report beside others run with other settings: each
    # carries its own command and settings
    lines = ["# Ablations on the tiny backbone", ""] + ([] if subset else about)
    for study in studies:
        title, names = STUDIES[study]
        column, paper = VERDICTS[study]
        lines += [
            f"## ({study}) {title}",
            "",
            *(about if subset else []),
            f"![{title}]({figures.relative_to(results.parent) / f'{study}.png'})",
            "",
        ]
        lines.append("| model | " + " | ".join(head) + " |")
        lines.append("|---|" + "---|" * len(head))
        lines.append("| base | " + " | ".join(_mean_range([base_eval[c]]) for c in cols) + " |")
        for name in names:
            lines.append(
                f"| {name} | " + " | ".join(_mean_range([evals[(name, s)][c] for s in seeds]) for c in cols) + " |"
            )
        a, b = names
        da = np.mean([evals[(a, s)][column] for s in seeds])
        db = np.mean([evals[(b, s)][column] for s in seeds])
        # per seed, does the paper's direction hold? (study c: b lost more held-out dynamic than a)
        holds = [evals[(a, s)][column] > evals[(b, s)][column] for s in seeds]
        ties = [evals[(a, s)][column] == evals[(b, s)][column] for s in seeds]
        if study == "f":  # no paper to match: what the cheaper candidates cost and save
            lines += ["", _candidate_steps_finding(curves, evals, seeds, column, a, b), ""]
            continue
        if study == "g":
            lines += ["", _veto_finding(evals, base_eval, seeds, a, b), ""]
            continue
        if study == "c":  # the reward-hacking question: who lost more held-out dynamic degree?
            drop_a, drop_b = base_eval[column] - da, base_eval[column] - db
            finding = (
                f"held-out {column} vs base: {a} {-100 * drop_a:+.2f}, {b} {-100 * drop_b:+.2f} points; "
                f"final training reward {a} {_final(curves, a, seeds):.3f}, {b} {_final(curves, b, seeds):.3f}"
            )
        else:
            finding = (
                f"{column}: {a} {100 * da:.2f} vs {b} {100 * db:.2f} "
                f"(the paper's direction in {sum(holds)} of {len(seeds)} seeds)"
            )
        # a direction counts only when every seed shows it; a split or a tie is no evidence either way
        verdict = (
            "matches" if all(holds) else "is inconclusive against" if any(holds) or any(ties) else "does not match"
        )
        lines += ["", f"Paper: {paper}. Here: {finding} — **{verdict} the paper**.", ""]
    return "\n".join(lines) + "\n"


def _candidate_steps_finding(curves, evals, seeds, column, full, fast) -> str:
    """Study (f) in words: the pairs' reward margin and the sampling time per step of each variant
    (means over all steps and seeds), and the tuning effect by the rule of the other studies: 10
    steps "tune as well" only if no seed is worse at 10 steps than at 20, "tune worse" if every
    seed is, and a split is inconclusive."""

    def mean_of(name, key) -> float:
        return float(np.mean([r[key] for s in seeds for r in curves[(name, s)] if key in r]))

    margin = {name: mean_of(name, REWARD_MARGIN) for name in (full, fast)}
    sample_s = {name: mean_of(name, SAMPLE_S) for name in (full, fast)}
    worse = [evals[(fast, s)][column] < evals[(full, s)][column] for s in seeds]
    verdict = (
        "tune as well in every seed"
        if not any(worse)
        else "tune worse in every seed"
        if all(worse)
        else "are inconclusive (the seeds split)"
    )
    d = np.mean([evals[(fast, s)][column] - evals[(full, s)][column] for s in seeds])
    return (
        f"Pairs: reward margin (winner minus loser) {margin[full]:.4f} at 20 steps vs {margin[fast]:.4f} at 10 "
        f"({margin[fast] / margin[full]:.2f}x); sampling {sample_s[full]:.1f} s vs {sample_s[fast]:.1f} s a step "
        f"({sample_s[full] / sample_s[fast]:.2f}x faster). Tuning: {column} 10 steps minus 20 steps "
        f"{100 * d:+.2f} points (worse in {sum(worse)} of {len(seeds)} seeds) — candidates at 10 steps **{verdict}**."
    )


def _veto_finding(evals, base_eval, seeds, plain, vetoed) -> str:
    """Study (g) in words, each answer by the every-seed rule: the veto "stops the hacking" if its
    held-out motion extent is at least the unguarded run's in every seed, and "keeps the gain" if its
    flicker.all is above the base's in every seed (a split either way is inconclusive)."""

    def rule(holds: list[bool], yes: str, no: str, about: str) -> str:
        split = f"is inconclusive on {about} (in {sum(holds)} of {len(holds)} seeds)"
        return yes if all(holds) else no if not any(holds) else split

    def change(name: str, column: str) -> str:
        d = np.mean([evals[(name, s)][column] - base_eval[column] for s in seeds])
        return f"{100 * d:+.2f}"

    motion = rule(
        [evals[(vetoed, s)]["motion_extent"] >= evals[(plain, s)]["motion_extent"] for s in seeds],
        "stops the hacking",
        "does not stop the hacking",
        "the hacking",
    )
    gain = rule(
        [evals[(vetoed, s)]["temporal_flickering_all"] > base_eval["temporal_flickering_all"] for s in seeds],
        "keeps the gain",
        "loses the gain",
        "the gain",
    )
    return (
        f"Held-out change from base (points, mean over seeds): motion_extent {plain} {change(plain, 'motion_extent')}, "
        f"{vetoed} {change(vetoed, 'motion_extent')}; presence {plain} {change(plain, 'presence')}, "
        f"{vetoed} {change(vetoed, 'presence')}; flicker.all {plain} {change(plain, 'temporal_flickering_all')}, "
        f"{vetoed} {change(vetoed, 'temporal_flickering_all')}. By the every-seed rule the veto **{motion}** and "
        f"**{gain}**."
    )


def _final(curves, name, seeds) -> float:
    return float(np.mean([[r[REWARD_MEAN] for r in curves[(name, s)] if REWARD_MEAN in r][-1] for s in seeds]))


def plot_study(study: str, curves: dict, seeds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title, names = STUDIES[study]
    panels = [
        (REWARD_MEAN, "training reward (own source)"),
        (heldout("temporal"), "held-out temporal (metrics)"),
        (heldout("dynamic"), "held-out dynamic degree"),
        (heldout("alignment"), "held-out alignment"),
        (heldout("presence"), "held-out presence of the object"),
        (heldout("motion_extent"), "held-out motion extent"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (key, label) in zip(axes, panels):
        for colour, name in zip(("C0", "C1"), names):
            for s in seeds:
                pts = [(r["step"], r[key]) for r in curves[(name, s)] if key in r]
                if pts:
                    x, y = zip(*pts)
                    ax.plot(
                        x, y, color=colour, alpha=0.8 if s == seeds[0] else 0.45, label=name if s == seeds[0] else None
                    )
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"({study}) {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
