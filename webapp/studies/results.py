"""A study's results: per pair of systems, the votes of participants who were neither excluded nor
pilots, with ``vpo.stats`` (Wilson interval, exact binomial test, tie rate, left-side bias,
Bradley–Terry), the coordinates of their plots (drawn as SVG by ``summary.html``), every
participant with their exclusion, and the CSV of every vote with the trial page's timings."""

from __future__ import annotations

import csv
import io
import math
import zipfile
from collections import Counter, defaultdict
from dataclasses import asdict
from itertools import combinations
from pathlib import Path

import numpy as np
from django.db.models import Count

from vpo.pairs import Pair
from vpo.stats import bradley_terry_bootstrap, pairwise, side_bias
from webapp.studies.models import TIMING, Participant, Study, Vote


def vote_rows(study: Study):
    """Every vote with what it compared, oldest first."""
    return (
        Vote.objects.filter(trial__study=study)
        .select_related("participant", "trial__clip_a__system", "trial__clip_b__system", "left", "chosen")
        .order_by("created", "pk")
    )


def summarise(study: Study, bootstrap: int = 500) -> dict:
    systems = list(study.systems.all())
    label = {s.pk: s.label for s in systems}
    counts = defaultdict(Counter)  # (a, b) with a < b by pk -> {"a": wins, "b": wins, "tie": n}
    left = right = gold_votes = gold_passed = pilot_votes = 0
    bt_votes = []
    for v in vote_rows(study):
        trial = v.trial
        if v.participant.pilot:  # kept apart: counted nowhere but in their own line
            pilot_votes += 1
            continue
        if trial.is_gold:
            gold_votes += 1
            gold_passed += v.chosen_id == trial.clip_a_id
            continue
        if v.participant.excluded:
            continue
        a, b = sorted((trial.clip_a.system_id, trial.clip_b.system_id))
        if v.chosen_id is None:
            counts[(a, b)]["tie"] += 1
            bt_votes.append((label[a], label[b], 0.5))
        else:
            winner = v.chosen.system_id
            counts[(a, b)]["a" if winner == a else "b"] += 1
            bt_votes.append((label[a], label[b], 1.0 if winner == a else 0.0))
            if v.chosen_id == v.left_id:
                left += 1
            else:
                right += 1
    pairs = []
    for x, y in combinations(sorted(label), 2):
        c = counts[(x, y)]
        pairs.append(asdict(pairwise(label[x], label[y], c["a"], c["b"], c["tie"])))
    anchor = study.base_system().label
    ratings = None
    if len(systems) >= 3 and bt_votes:
        fit = bradley_terry_bootstrap([s.label for s in systems], bt_votes, anchor, samples=bootstrap)
        # a system without votes has no rating (vpo.stats): it is listed after the rated ones, without numbers
        ratings = [
            {"system": s, **dict(zip(("rating", "low", "high"), v or (None, None, None)))}
            for s, v in sorted(fit.items(), key=lambda kv: -kv[1][0] if kv[1] else np.inf)
        ]
    everyone = Participant.objects.filter(study=study).annotate(n_votes=Count("votes")).order_by("created")
    participants = everyone.filter(pilot=False)
    return {
        "systems": [s.label for s in systems],
        "anchor": anchor,
        "pairs": pairs,
        "bias": asdict(side_bias(left, right)),
        "ratings": ratings,
        "participants": participants.count(),
        "completed": participants.filter(completed__isnull=False).count(),
        "votes": sum(sum(c.values()) for c in counts.values()),
        "gold": {"votes": gold_votes, "passed": gold_passed},
        "pilot": {"participants": everyone.filter(pilot=True).count(), "votes": pilot_votes},
        "excluded": [
            {"participant": p.token[:8], "prolific_pid": p.prolific_pid, "reason": "; ".join(p.reasons)}
            for p in participants.filter(excluded=True)
        ],
        "people": [
            {
                "token": p.token,
                "participant": p.token[:8],
                "prolific_pid": p.prolific_pid,
                "votes": p.n_votes,
                "completed": p.completed is not None,
                "excluded": p.excluded,
                "excluded_manually": p.excluded_manually,
                "reasons": p.reasons,
            }
            for p in participants
        ],
        "plots": {"win_rates": win_rate_plot(pairs), "ratings": rating_plot(ratings or [], anchor)},
    }


# --- plots: coordinates in an SVG of PLOT_W x (rows x ROW_H), labels left of LABEL_W ---------------
PLOT_W, LABEL_W, ROW_H, PAD = 640, 220, 26, 16


def interval_plot(rows: list[tuple[str, tuple[float, float, float] | None]], lo: float, hi: float, ticks, mark) -> dict:
    """One row per (label, (value, interval low, interval high) or None), on an axis from ``lo`` to
    ``hi`` with ``ticks`` and a dashed line at ``mark`` (no preference, the anchor)."""
    width = PLOT_W - LABEL_W - 2 * PAD

    def x(v: float) -> float:
        return round(LABEL_W + PAD + (v - lo) / (hi - lo) * width, 1)

    out = []
    for i, (label, value) in enumerate(rows):
        row = {"label": label, "y": PAD + i * ROW_H + ROW_H // 2, "x": None}
        if value is not None:
            row.update(x=x(value[0]), lo=x(value[1]), hi=x(value[2]), value=value[0])
        out.append(row)
    height = 2 * PAD + len(rows) * ROW_H + 14
    return {
        "rows": out,
        "width": PLOT_W,
        "height": height,
        "axis_y": height - 14 - PAD // 2,
        "ticks": [{"x": x(float(t)), "label": f"{t:.3g}"} for t in ticks],
        "mid": x(mark),
        "top": PAD,
    }


def win_rate_plot(pairs: list[dict]) -> dict:
    """A's win rate (ties left out) per pair, with its Wilson 95% interval, on [0, 1] with 0.5 marked."""
    rows = [
        (f"{p['a']} vs {p['b']}", None if p["win_rate_a"] is None else (p["win_rate_a"], p["ci_low"], p["ci_high"]))
        for p in pairs
    ]
    return interval_plot(rows, 0.0, 1.0, (0, 0.25, 0.5, 0.75, 1), 0.5)


def rating_plot(ratings: list[dict], anchor: str) -> dict:
    """Bradley–Terry log-strengths with their bootstrap 95% intervals, the anchor at 0."""
    rated = [r for r in ratings if r["rating"] is not None]
    if not rated:
        return {"rows": []}
    lo = min(0.0, *(r["low"] for r in rated))
    hi = max(0.0, *(r["high"] for r in rated))
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    lo, hi = lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)
    step = nice_step(hi - lo)
    rows = [
        (
            r["system"] + (" (anchor)" if r["system"] == anchor else ""),
            None if r["rating"] is None else (r["rating"], r["low"], r["high"]),
        )
        for r in ratings
    ]
    return interval_plot(rows, lo, hi, np.arange(math.ceil(lo / step) * step, hi, step), 0.0)


def nice_step(span: float) -> float:
    """A tick spacing of 1, 2 or 5 times a power of ten giving four to ten ticks over ``span``."""
    base = 10 ** math.floor(math.log10(span / 5))
    return next(m * base for m in (1, 2, 5, 10) if span / (m * base) <= 10)


CSV_HEADER = [
    "vote_id",
    "created",
    "participant",
    "prolific_pid",
    "prolific_study_id",
    "prolific_session_id",
    "excluded",
    "exclusion_reason",
    "pilot",
    "trial",
    "gold",
    "prompt",
    "seed",
    "scene",  # image-to-video: the index of the first frame's scene in the study's image set (captions repeat)
    "left_system",
    "right_system",
    "choice",
    "chosen_system",
    "completion_code",
    "onset_ms",
    "reaction_ms",
    "plays",
    "hidden_count",
    "hidden_ms",
]
# a cell a spreadsheet would run as a formula (OWASP "CSV injection"): these first characters
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def cell(value):
    """``value`` safe for a spreadsheet: text starting like a formula gets a leading apostrophe,
    which spreadsheets show as text and do not evaluate. Numbers stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def votes_csv(study: Study) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_HEADER)
    for v in vote_rows(study):
        a, b = v.trial.clip_a, v.trial.clip_b
        right = b if v.left_id == a.pk else a
        left_label = f"{v.left.system.label}{' (degraded)' if v.left.degraded else ''}"
        right_label = f"{right.system.label}{' (degraded)' if right.degraded else ''}"
        chosen = "" if v.chosen_id is None else (left_label if v.chosen_id == v.left_id else right_label)
        p = v.participant
        # the volunteers' Prolific ids and the researcher's prompts and labels are escaped; the
        # app's own values (tokens, numbers, codes) never start like a formula's text would need to
        writer.writerow(
            [
                v.pk,
                v.created.isoformat(),
                p.token,
                cell(p.prolific_pid),
                cell(p.prolific_study_id),
                cell(p.prolific_session_id),
                int(p.excluded),
                cell("; ".join(p.reasons)),
                int(p.pilot),
                v.trial_id,
                int(v.trial.is_gold),
                cell(a.prompt),
                a.seed,
                "" if a.scene is None else a.scene,
                cell(left_label),
                cell(right_label),
                v.choice,
                cell(chosen),
                p.completion_code,
                *("" if getattr(v, name) is None else getattr(v, name) for name in TIMING),
            ]
        )
    return out.getvalue()


def human_groups(study: Study) -> list[tuple[str, list, int]]:
    """For the feedback-source analysis: per (prompt, scene, seed), the clean clips of every system and
    the one people preferred most (most decisive wins; groups without a single favourite are
    left out). Returns (prompt, clips, index of the favourite)."""
    wins = Counter()
    clips_of = defaultdict(dict)
    for clip in study.clips.filter(degraded=False).select_related("system"):
        clips_of[clip.pairing_key][clip.pk] = clip
    for v in vote_rows(study).filter(
        trial__is_gold=False, participant__excluded=False, participant__pilot=False, chosen__isnull=False
    ):
        wins[v.chosen_id] += 1
    groups = []
    for (prompt, _, _), clips in sorted(clips_of.items(), key=lambda item: (item[0][0], item[0][1] or 0, item[0][2])):
        ordered = sorted(clips.values(), key=lambda c: c.system_id)
        tally = [wins[c.pk] for c in ordered]
        best = max(tally)
        if best > 0 and tally.count(best) == 1:
            groups.append((prompt, ordered, tally.index(best)))
    return groups


def study_pairs(study: Study, folder: Path | None = None) -> list[Pair]:
    """The study's votes as preference pairs (``vpo/pairs.py``): one per vote of a participant who
    was not excluded, gold trials left out; ``a`` and ``b`` are the trial's two clips' frames
    (``.npy``), in ``folder`` (relative names) or where the study keeps them."""
    pairs = []
    votes = vote_rows(study).filter(trial__is_gold=False, participant__excluded=False)
    for v in votes:
        a, b = v.trial.clip_a, v.trial.clip_b
        choice = "tie" if v.chosen_id is None else "a" if v.chosen_id == a.pk else "b"
        where = folder if folder is not None else study.media_dir
        pairs.append(Pair(a.prompt, where / f"{a.token}.npy", where / f"{b.token}.npy", choice))
    return pairs


def folder_zip(folder: Path, name: str) -> bytes:
    """Every file under ``folder``, in a zip under ``name/``."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            z.write(path, f"{name}/{path.relative_to(folder).as_posix()}")
    return out.getvalue()


def pairs_zip(study: Study) -> bytes:
    """``pairs.jsonl`` with the clips it names under ``videos/``: a download that
    ``vpo reward-model train --pairs pairs.jsonl`` reads as it is, once unzipped."""
    pairs = study_pairs(study, Path("videos"))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("pairs.jsonl", "".join(p.to_json() + "\n" for p in pairs))
        for name in sorted({p.a.name for p in pairs} | {p.b.name for p in pairs}):
            z.write(study.media_dir / name, f"videos/{name}")
    return out.getvalue()
