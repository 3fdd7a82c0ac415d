"""``vpo ablate``: OnlineVPO's ablations reproduced on the tiny default backbone, written to
``docs/results.md`` with PNG plots.

Seven comparisons, each at equal steps and for every seed given:

(a) online vs offline DPO (OnlineVPO Table 4d): where the pairs come from;
(b) curriculum reference update every K in {10, 20, 50} steps vs a fixed reference (K = 0, Sec. 2.3);
(c) online and offline DPO vs ReFL at depths 1 and 4 (Sec. 3, Fig. 3): the training reward next to
    held-out measures not trained on — a model that raises its reward while the held-out measures fall
    is reward-hacking;
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

(b) and (g) also apply (c)'s hacking rule to their own variants: a gain on the compared measure is
read beside whether the subject survived it.

Every variant starts from the same base and shares everything but the one setting compared; the
online-DPO run with K = ``ref_update_every`` is the common baseline of all of them. Each finished run
is evaluated like ``vpo eval`` (fixed held-out prompts and seeds, base alongside), keeping each video's
values, so that every table cell has a 95% interval and every verdict is decided by one stated rule
(``by_rule``): per seed, the paired difference of the two variants compared (same prompts, same
sampling seeds) has a 95% t-interval; "matches" when in every seed it excludes 0 in the paper's
direction, "does not match" when in every seed it excludes 0 the other way, else "inconclusive". Runs already
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

from vpo.stats import t_half_width
from vpo.train.config import TrainConfig
from vpo.train.keys import REWARD_MARGIN, REWARD_MEAN, SAMPLE_S, heldout

# evaluation videos' denoising steps (``vpo eval``'s default), whatever steps the candidates use
EVAL_STEPS = 20
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
    # appended, not inserted: the names above and their run folders ({out}/{name}-s{seed}) are reused
    "refl-d4": {"algorithm": "refl", "refl_depth": 4},
    "ref-every-10": {"ref_update_every": 10},
    "ref-every-50": {"ref_update_every": 50},
    # 6 steps on SD3's schedule shifted by 3 held 20 steps' held-out quality (docs/tiny-backbone.md)
    "candidates-6-steps-shift-3": {"sampling_steps": 6, "flow_shift": 3.0},
}
STUDIES = {
    "a": ("Online vs offline DPO", ["online", "offline"]),
    # online is K = 20 (the default)
    "b": ("Curriculum reference update vs fixed reference", ["fixed-ref", "ref-every-10", "online", "ref-every-50"]),
    "c": ("DPO vs ReFL: training reward and held-out measures", ["online", "offline", "refl", "refl-d4"]),
    "d": ("Video-level vs image-level reward, judged by the video-level temporal measure", ["online", "image-reward"]),
    "e": ("Online DPO vs online Flow-RWR (VideoAlign)", ["online", "online-rwr"]),
    "f": ("Candidates at 20 vs 10 sampling steps", ["online", "candidates-10-steps"]),
    "g": ("Temporal reward without and with the subject veto", ["online", "subject-veto"]),
    "h": ("Candidates at 20 steps vs 6 on the schedule shifted by 3", ["online", "candidates-6-steps-shift-3"]),
}
# what each study's verdict looks at (an eval column, higher is better), the paper's direction, and the
# pairs (x, y) compared, x expected above y; (c), (f), (g) and (h) have rules of their own (see ``report``)
VERDICTS: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "a": (
        "temporal_flickering_all",
        "online > offline (Table 4d: online better on every dimension)",
        [("online", "offline")],
    ),
    "b": (
        "temporal_flickering_all",
        "curriculum > fixed (Sec. 2.3: the moving reference keeps improving)",
        [("ref-every-10", "fixed-ref"), ("online", "fixed-ref"), ("ref-every-50", "fixed-ref")],
    ),
    "c": (
        "presence",  # with alignment (HACK_MEASURES); the training reward's trend beside them
        "ReFL reward-hacks, DPO does not (Sec. 3, Fig. 3)",
        [],
    ),
    "d": (
        "temporal_flickering_all",
        "video-level reward > image-level reward on the video-level temporal measure",
        [("online", "image-reward")],
    ),
    "e": (
        "temporal_flickering_all",
        "online-dpo > online-rwr (VideoAlign: Flow-DPO beats Flow-RWR)",
        [("online", "online-rwr")],
    ),
    # not a paper's claim: the question is whether halving the candidates' steps costs tuning effect
    "f": ("temporal_flickering_all", "none; the question: do candidates at 10 steps tune as well as at 20?", []),
    "g": ("motion_extent", "none; the question: does the veto stop the hacking and keep the gain?", []),
    "h": (
        "temporal_flickering_all",
        "none; the question: do candidates at 6 steps on the shifted schedule tune as well as at 20?",
        [],
    ),
}
# (c): the held-out measures whose fall, while the training reward rises, is reward hacking
HACK_MEASURES = ("presence", "alignment")


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
    """``vpo eval`` columns of the base (``checkpoint`` None) or of a checkpoint, and under ``per_video``
    each video's values (``vpo.eval.per_video``, what the intervals are computed from), cached at ``path``."""
    from vpo.backbones import load_backbone
    from vpo.eval import COLUMNS, per_video, sample_all, summarise
    from vpo.train.checkpoints import load_policy

    if path.exists():
        old = json.loads(path.read_text())
        # else written before a column existed, or a summary without the per-video values the
        # intervals need (or for another number of prompts): evaluate again
        cached = old.get("per_video", {}).get("alignment", [])
        if all(c in old for c in COLUMNS) and len(cached) == len(prompts):
            return old
    backbone = load_backbone("tiny")
    if checkpoint is not None:
        load_policy(backbone, checkpoint)
    values = per_video(sample_all(backbone, prompts, 0, steps, guidance), prompts, backbone.spec.fps)
    # video i of every model has the same prompt and sampling seed: the pairing of ``paired``
    row: dict[str, Any] = {
        **summarise(values),
        "per_video": {k: v.tolist() for k, v in values.items() if k != "static"},
    }
    path.write_text(json.dumps(row, indent=1))  # NaN as the token NaN, which json.loads reads back
    return row


def ablate(
    base: TrainConfig,
    seeds: list[int],
    out,
    results,
    eval_prompts: int = 32,
    progress: bool = True,
    studies: list[str] | None = None,
    eval_steps: int = EVAL_STEPS,
) -> Path:
    """Run every variant of ``studies`` (default: all) for every seed, evaluate (``eval_steps``
    denoising steps), and write ``results`` (markdown) with plots beside it in ``<results stem>/``.
    Returns the path of the markdown file."""
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
        key: evaluated(folder / "eval.json", prompts, eval_steps, base.guidance, latest_checkpoint(folder))
        for key, folder in runs.items()
    }
    base_eval = evaluated(out / "base-eval.json", prompts, eval_steps, base.guidance)
    wall = time.perf_counter() - t0
    curves = {key: read_metrics(folder) for key, folder in runs.items()}
    # each run's own clock (metrics' "time" at its last step), so reused runs still count
    train_s = sum(max(r.get("time", 0.0) for r in rows) for rows in curves.values())
    figures = results.parent / results.stem
    figures.mkdir(parents=True, exist_ok=True)
    for study in chosen:
        plot_study(study, curves, seeds, figures / f"{study}.png")
    text = report(
        base, seeds, evals, base_eval, curves, figures, results, train_s, wall, len(prompts), chosen, eval_steps
    )
    if len(chosen) < len(STUDIES) and results.exists():
        text = merge_sections(results.read_text(), text)
    results.write_text(text)
    return results


def merge_sections(old: str, new: str) -> str:
    """``old`` with each ``## (x)`` section of ``new`` in place of its namesake (or added at the end).

    A report written by a full run carries its command and settings once, under the title; a merged
    report's sections come from different runs, so that text moves into each old section that stays
    and has no command of its own, and the title stands alone: a replaced section never sits under
    another run's settings."""

    def split(text: str) -> tuple[str, dict[str, str]]:
        head, *parts = text.split("\n## (")
        return head, {part.split(")", 1)[0]: "\n## (" + part.rstrip("\n") for part in parts}

    head, sections = split(old)
    title, _, about = head.strip("\n").partition("\n")
    about = about.strip("\n")
    if about:
        for key, text in sections.items():
            if "Reproduce:" not in text:
                heading, _, body = text.lstrip("\n").partition("\n")
                sections[key] = f"{heading}\n\n{about}\n{body}"
    sections.update(split(new)[1])
    return title + "\n" + "".join(f"\n{sections[k].lstrip(chr(10))}\n" for k in sorted(sections))


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
VERDICT = {1: "matches", -1: "does not match", 0: "inconclusive"}
RULE = (
    "Verdicts by one rule, never by eye: for each seed, the paired difference of the two variants compared "
    "(video by video: same prompt, same sampling seed) and its 95% t-interval, in points; **matches** when in "
    "every seed the interval excludes 0 in the paper's direction, **does not match** when in every seed it "
    "excludes 0 the other way, **inconclusive** otherwise."
)


def _per_prompt(rows: list[dict], column: str) -> np.ndarray:
    """Each prompt's value averaged over the runs ``rows`` (one per seed); a prompt no run has a value
    for (alignment of a prompt the detector cannot parse) is left out."""
    m = np.array([row["per_video"][column] for row in rows], dtype=float)  # (seeds, prompts)
    kept = np.isfinite(m)
    n = kept.sum(0)
    return np.where(kept, m, 0.0).sum(0)[n > 0] / n[n > 0]


def cell(rows: list[dict], column: str) -> str:
    """A table cell in points: the mean over seeds and prompts ± the half-width of its 95% interval.

    The interval is a t-interval over the per-prompt means across seeds. The prompts are the units
    drawn from a population (the held-out set, 32 by default), while two or three seeds would give an
    interval over seeds one or two degrees of freedom; a prompt's runs in different seeds share its
    sampling noise, so averaging them first keeps each prompt one independent observation. It is what a
    bootstrap over prompts resampled jointly across seeds approximates, in closed form (and symmetric,
    hence ±). The seeds' own spread is judged where it matters, by the verdicts' every-seed rule."""
    if column not in rows[0].get("per_video", {}):  # quality: a score of the means, no per-video value
        v = np.array([row[column] for row in rows], dtype=float)
        return f"{100 * float(np.nanmean(v)):.2f}" if np.isfinite(v).any() else "–"
    x = _per_prompt(rows, column)
    if len(x) == 0:
        return "–"  # e.g. flickering when the static filter kept no video
    half = t_half_width(x)
    return f"{100 * x.mean():.2f}" + (f" ± {100 * half:.2f}" if np.isfinite(half) else "")


def paired(x_row: dict, y_row: dict, column: str) -> tuple[float, float, float]:
    """``x`` minus ``y`` on ``column``, paired by video (same prompt, same sampling seed): the mean and
    the 95% t-interval of ``vpo.eval.paired_difference``; NaNs where no pair of videos has a value."""
    from vpo.eval import paired_difference

    d = paired_difference(
        {column: np.asarray(y_row["per_video"][column], dtype=float)},
        {column: np.asarray(x_row["per_video"][column], dtype=float)},
    ).get(column)
    if d is None:
        return float("nan"), float("nan"), float("nan")
    return d["mean"], d["ci95"][0], d["ci95"][1]


def by_rule(intervals: list[tuple[float, float, float]]) -> int:
    """The every-seed rule on (mean, low, high) per seed: 1 when every interval lies above 0, -1 when
    every one lies below, else 0 (a NaN bound, too few videos for an interval, is neither)."""
    if intervals and all(lo > 0 for _, lo, _ in intervals):
        return 1
    if intervals and all(hi < 0 for _, _, hi in intervals):
        return -1
    return 0


def _per_seed(intervals: list[tuple[float, float, float]], seeds: list[int], scale: float = 100) -> str:
    """Each seed's (mean, low, high) scaled, "–" where there was nothing to compare."""
    return "; ".join(
        f"seed {s} {scale * m:+.2f} [{scale * lo:+.2f}, {scale * hi:+.2f}]" if np.isfinite(m) else f"seed {s} –"
        for s, (m, lo, hi) in zip(seeds, intervals)
    )


def report(
    base,
    seeds,
    evals,
    base_eval,
    curves,
    figures,
    results,
    train_s,
    wall,
    n_prompts,
    studies=None,
    eval_steps=EVAL_STEPS,
) -> str:
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
        f"CFG {base.guidance}; ReFL back-propagates through the last {base.refl_depth} step(s) unless its "
        f"variant says otherwise; held-out monitor: {base.heldout_count} prompts every {base.heldout_every} "
        f"steps.{rwr} Evaluation: {n_prompts} held-out prompts (wordings never seen in pretraining), fixed "
        f"seeds, {eval_steps} sampling steps, the columns of `vpo eval` in %; each cell is the mean over seeds "
        f"and prompts ± the half-width of its 95% t-interval over the per-prompt means across seeds (prompts "
        f"are the sampled units; `vpo/ablations.py`, `cell`); quality has no interval (a score of the means, "
        f"no per-video value).",
        "flicker: VBench's formula on videos its static filter keeps (flicker.all: on every video); subject, "
        "smooth, dynamic and imaging are weight-free proxies (docs/metrics.md); quality is VBench's formula over "
        "these 5 of its 7 quality dimensions, not VBench's score.",
        "",
        RULE,
        "",
    ]
    # a subset's sections go into an existing report beside others run with other settings: each
    # carries its own command and settings
    lines = ["# Ablations on the tiny backbone", ""] + ([] if subset else about)
    for study in studies:
        title, names = STUDIES[study]
        column, paper, pairs = VERDICTS[study]
        lines += [
            f"## ({study}) {title}",
            "",
            *(about if subset else []),
            f"![{title}]({figures.relative_to(results.parent) / f'{study}.png'})",
            "",
        ]
        lines.append("| model | " + " | ".join(head) + " |")
        lines.append("|---|" + "---|" * len(head))
        lines.append("| base | " + " | ".join(cell([base_eval], c) for c in cols) + " |")
        for name in names:
            lines.append(f"| {name} | " + " | ".join(cell([evals[(name, s)] for s in seeds], c) for c in cols) + " |")
        lines.append("")
        if study in ("f", "h"):  # no paper to match: what the cheaper candidates cost and save
            full, fast = names
            steps = {name: _schedule({**base.to_dict(), **VARIANTS[name]}) for name in names}
            lines += [_candidate_steps_finding(curves, evals, seeds, column, full, fast, steps), ""]
        elif study == "g":
            lines += [_veto_finding(evals, base_eval, seeds, *names), ""]
            lines += [_hacking_beside(curves, evals, base_eval, seeds, names, base.dimension), ""]
        elif study == "c":
            lines += [_hacking_finding(curves, evals, base_eval, seeds, names, paper, base.dimension), ""]
        else:
            lines += [f"Paper: {paper}. Here, {column} per seed (points, 95% interval):", ""]
            for x, y in pairs:
                intervals = [paired(evals[(x, s)], evals[(y, s)], column) for s in seeds]
                lines.append(f"- {x} minus {y}: {_per_seed(intervals, seeds)} — **{VERDICT[by_rule(intervals)]}**")
            lines.append("")
            if study == "b":
                lines += [_reference_moves(base, names), ""]
                lines += [_hacking_beside(curves, evals, base_eval, seeds, names, base.dimension), ""]
            if study == "a":
                lines += [_sample_efficiency(curves, seeds, base, *names), ""]
    return "\n".join(lines) + "\n"


def _reference_moves(base: TrainConfig, names: list[str]) -> str:
    """How often each variant's reference moved while it could still shape training (K = 0: never).
    The update after step S (S a multiple of K) serves steps S + 1 on, so one after the last step counts
    for nothing."""
    parts = []
    for name in names:
        k = {**base.to_dict(), **VARIANTS[name]}["ref_update_every"]
        parts.append(f"{name} (K = {k}) {(base.steps - 1) // k if k else 0}")
    return f"Reference updates that later steps trained against, in {base.steps} steps: " + ", ".join(parts) + "."


def _sample_efficiency(curves, seeds, base: TrainConfig, online: str, offline: str) -> str:
    """OnlineVPO's sample-efficiency claim, read off the held-out monitor: per seed, the first logged
    step at which online DPO's ``heldout/temporal`` reaches offline DPO's final logged value."""
    claim = "Sample efficiency (OnlineVPO: online DPO needs fewer steps than offline DPO for the same result): "
    if not base.heldout_every:
        return claim + "the held-out monitor was off (heldout_every = 0), no curve to read."
    key = heldout("temporal")
    parts = []
    for s in seeds:
        off = [r[key] for r in curves[(offline, s)] if key in r]
        on = [(r["step"], r[key]) for r in curves[(online, s)] if key in r]
        if not off or not on:
            parts.append(f"seed {s}: no held-out curve")
            continue
        target = off[-1]
        reached = next((step for step, v in on if v >= target), None)
        where = (
            f"not within {on[-1][0]} steps"
            if reached is None
            else "at step 0 (the base already scores as high)"
            if reached == 0
            else f"at step {reached}"
        )
        parts.append(f"seed {s}: offline's final {100 * target:.2f}, online reaches it {where}")
    e = base.heldout_every
    return (
        claim
        + f"the first step at which online DPO's held-out temporal score (`{key}`) reaches offline DPO's final "
        + "one — "
        + "; ".join(parts)
        + f". Resolution: the monitor looks every {e} steps, so step S means somewhere in (S − {e}, S]; it "
        f"scores {base.heldout_count} prompts, so one crossing can be the noise of that small set."
    )


def _reward_trend(rows: list[dict], key: str) -> tuple[float, float, float]:
    """The least-squares slope of ``key`` over the logged steps, per 100 steps, with its 95% t-interval
    (steps taken as independent: each draws its own prompts); NaNs with fewer than three points."""
    from scipy import stats

    pts = np.array([(r["step"], r[key]) for r in rows if key in r], dtype=float)
    if len(pts) < 3:
        return float("nan"), float("nan"), float("nan")
    fit = stats.linregress(pts[:, 0], pts[:, 1])
    half = float(stats.t.ppf(0.975, len(pts) - 2) * fit.stderr)
    return 100 * fit.slope, 100 * (fit.slope - half), 100 * (fit.slope + half)


HACK_RULE = (
    "Rule: in a seed, a held-out measure **falls** when its 95% interval (final model minus base, paired "
    "by video) is below 0. A variant **hacks** when in every seed the training reward's least-squares "
    "slope over the logged steps has a 95% interval above 0 while held-out "
    + " or ".join(HACK_MEASURES)
    + " falls; it **does not hack** when in no seed either falls; else **inconclusive**."
)


def _hacking_verdicts(curves, evals, base_eval, seeds, names, dimension: str) -> tuple[list[str], dict[str, str]]:
    """The hacking rule (``HACK_RULE``) for each variant of ``names``: a line of figures each, and
    name -> "hacks" / "does not hack" / "inconclusive". Offline DPO samples no candidates and so logs
    no ``reward/mean``: its reward is the held-out monitor's score on the trained ``dimension``."""
    lines, said = [], {}
    for name in names:
        logs_reward = any(REWARD_MEAN in r for s in seeds for r in curves[(name, s)])
        key = REWARD_MEAN if logs_reward else heldout(dimension)
        trends = [_reward_trend(curves[(name, s)], key) for s in seeds]
        held = {m: [paired(evals[(name, s)], base_eval, m) for s in seeds] for m in HACK_MEASURES}
        falls = [any(held[m][i][2] < 0 for m in HACK_MEASURES) for i in range(len(seeds))]
        hacks = [lo > 0 and fell for (_, lo, _), fell in zip(trends, falls)]
        clean = [not fell for fell in falls]
        said[name] = "hacks" if all(hacks) else "does not hack" if all(clean) else "inconclusive"
        ends = []
        for s in seeds:
            logged = [r[key] for r in curves[(name, s)] if key in r]
            ends.append(f"{logged[0]:.3f} → {logged[-1]:.3f}" if logged else "–")
        lines.append(
            f"- {name}: {key} slope per 100 steps {_per_seed(trends, seeds, scale=1)} (first → last "
            f"logged: {', '.join(ends)}); "
            + "; ".join(f"held-out {m} vs base {_per_seed(held[m], seeds)}" for m in HACK_MEASURES)
            + f" — **{said[name]}**"
        )
    return lines, said


def _hacking_finding(curves, evals, base_eval, seeds, names, paper: str, dimension: str) -> str:
    """Study (c) by its rule (``HACK_RULE``): in a seed a held-out measure **falls** when its paired
    95% interval (final model minus base, video by video) is below 0. A variant **hacks** when in every
    seed its training reward's slope has an interval above 0 while held-out presence or alignment
    falls; it **does not hack** when in no seed either of them falls; else **inconclusive**. (A rise
    with nothing falling is what the paper calls no hacking; requiring the held-out measures to *rise*
    would ask DPO for more than the claim.) The paper's claim (ReFL hacks, DPO does not) matches when
    every ReFL run hacks and every DPO run does not, does not match when a ReFL run does not hack or a
    DPO run hacks, else is inconclusive."""
    verdicts, said = _hacking_verdicts(curves, evals, base_eval, seeds, names, dimension)
    refl = [n for n in names if VARIANTS[n].get("algorithm") == "refl"]
    dpo = [n for n in names if n not in refl]
    claim = (
        "matches"
        if all(said[n] == "hacks" for n in refl) and all(said[n] == "does not hack" for n in dpo)
        else "does not match"
        if any(said[n] == "does not hack" for n in refl) or any(said[n] == "hacks" for n in dpo)
        else "inconclusive"
    )
    paper_line = (
        f"Paper: {paper}. Here: {', '.join(refl)} vs {', '.join(dpo)} "
        f"— **{claim}** (matches when every ReFL run hacks and every DPO run does not; does not match when a "
        "ReFL run does not hack or a DPO run hacks)."
    )
    return "\n".join([HACK_RULE, "", *verdicts, "", paper_line])


def _hacking_beside(curves, evals, base_eval, seeds, names, dimension: str) -> str:
    """(b) and (g): the hacking rule of (c) applied to the study's own variants, so that a gain on
    the compared measure is read beside whether the subject survived it."""
    verdicts, _ = _hacking_verdicts(curves, evals, base_eval, seeds, names, dimension)
    return "\n".join(["Reward hacking, by the rule of (c). " + HACK_RULE, "", *verdicts])


def _schedule(settings: dict[str, Any]) -> str:
    """A variant's candidate sampling schedule in words: "10 steps", "6 steps shifted by 3"."""
    shift = settings["flow_shift"]
    return f"{settings['sampling_steps']} steps" + (f" shifted by {shift:g}" if shift not in (0, 1) else "")


def _candidate_steps_finding(curves, evals, seeds, column, full, fast, steps: dict[str, str]) -> str:
    """Studies (f) and (h) in words: the pairs' reward margin and the sampling time per step of each
    variant (means over all steps and seeds), and the tuning effect by the every-seed rule on the paired
    difference fewer steps minus more (``steps``: each variant's schedule, ``_schedule``): "tune worse" when
    every seed's interval is below 0, "tune better" when every one is above, else inconclusive (equal
    tuning is not something the rule can show)."""

    def mean_of(name, key) -> float:
        return float(np.mean([r[key] for s in seeds for r in curves[(name, s)] if key in r]))

    margin = {name: mean_of(name, REWARD_MARGIN) for name in (full, fast)}
    sample_s = {name: mean_of(name, SAMPLE_S) for name in (full, fast)}
    intervals = [paired(evals[(fast, s)], evals[(full, s)], column) for s in seeds]
    verdict = {
        1: "tune better in every seed",
        -1: "tune worse in every seed",
        0: "are inconclusive (no seed-consistent difference)",
    }[by_rule(intervals)]
    return (
        f"Pairs: reward margin (winner minus loser) {margin[full]:.4f} at {steps[full]} vs {margin[fast]:.4f} "
        f"at {steps[fast]} ({margin[fast] / margin[full]:.2f}x); sampling {sample_s[full]:.1f} s vs "
        f"{sample_s[fast]:.1f} s a step ({sample_s[full] / sample_s[fast]:.2f}x faster). Tuning: {column} "
        f"{steps[fast]} minus {steps[full]}, points with 95% intervals: {_per_seed(intervals, seeds)} "
        f"— by the every-seed rule candidates at {steps[fast]} **{verdict}**."
    )


def _veto_finding(evals, base_eval, seeds, plain, vetoed) -> str:
    """Study (g) in words, each answer by the every-seed rule on paired intervals: the veto "stops the
    hacking" when its held-out motion extent minus the unguarded run's is above 0 in every seed ("does
    not" when below in every seed), and "keeps the gain" when its flicker.all minus the base's is above
    0 in every seed ("loses" it when below in every seed); anything else is inconclusive."""

    def rule(intervals, yes: str, no: str, about: str) -> str:
        return {1: yes, -1: no, 0: f"is inconclusive on {about}"}[by_rule(intervals)]

    def change(name: str, column: str) -> str:
        d = np.mean([evals[(name, s)][column] - base_eval[column] for s in seeds])
        return f"{100 * d:+.2f}"

    motion_ci = [paired(evals[(vetoed, s)], evals[(plain, s)], "motion_extent") for s in seeds]
    gain_ci = [paired(evals[(vetoed, s)], base_eval, "temporal_flickering_all") for s in seeds]
    motion = rule(motion_ci, "stops the hacking", "does not stop the hacking", "the hacking")
    gain = rule(gain_ci, "keeps the gain", "loses the gain", "the gain")
    return (
        f"Held-out change from base (points, mean over seeds): motion_extent {plain} {change(plain, 'motion_extent')}, "
        f"{vetoed} {change(vetoed, 'motion_extent')}; presence {plain} {change(plain, 'presence')}, "
        f"{vetoed} {change(vetoed, 'presence')}; flicker.all {plain} {change(plain, 'temporal_flickering_all')}, "
        f"{vetoed} {change(vetoed, 'temporal_flickering_all')}. Paired, points with 95% intervals: motion_extent "
        f"{vetoed} minus {plain} {_per_seed(motion_ci, seeds)}; flicker.all {vetoed} minus base "
        f"{_per_seed(gain_ci, seeds)}. By the every-seed rule the veto **{motion}** and **{gain}**."
    )


# the curves each study's figure shows; (c) is the reward-hacking picture: the reward beside the
# held-out measures it must not cost
PANELS = {
    "default": [
        (REWARD_MEAN, "training reward (own source)"),
        (heldout("temporal"), "held-out temporal (metrics)"),
        (heldout("dynamic"), "held-out dynamic degree"),
        (heldout("alignment"), "held-out alignment"),
        (heldout("presence"), "held-out presence of the object"),
        (heldout("motion_extent"), "held-out motion extent"),
    ],
    "c": [
        (REWARD_MEAN, "training reward (own source)"),
        (heldout("temporal"), "held-out temporal (offline DPO's only reward curve)"),
        (heldout("presence"), "held-out presence of the object"),
        (heldout("alignment"), "held-out alignment"),
        (heldout("motion_extent"), "held-out motion extent"),
    ],
}


def plot_study(study: str, curves: dict, seeds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    title, names = STUDIES[study]
    panels = PANELS.get(study, PANELS["default"])
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (key, label) in zip(axes, panels):
        for i, name in enumerate(names):  # one colour per variant, its seeds in lighter lines
            for s in seeds:
                pts = [(r["step"], r[key]) for r in curves[(name, s)] if key in r]
                if pts:
                    x, y = zip(*pts)
                    # markers on a sparse curve (the held-out monitor's checks): its resolution shows
                    ax.plot(
                        x, y, color=f"C{i}", alpha=0.8 if s == seeds[0] else 0.45, marker="." if len(x) < 20 else None
                    )
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    # every variant in the legend, also one without a curve in the first panel (offline DPO logs no reward)
    axes[0].legend(handles=[Line2D([], [], color=f"C{i}", label=name) for i, name in enumerate(names)], fontsize=8)
    fig.suptitle(f"({study}) {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
