"""Evaluations beside each other: the leaderboard (OnlineVPO's Table 3 over the user's own runs) and the user
studies that compared a run, shown on its evaluation view next to the automatic measures.

Leaderboard rows: the newest finished evaluation of each experiment the user sees, per (suite, prompt set,
sampling steps, CFG, the run's flow shift); one base row per (backbone, suite, prompt set, steps, CFG, shift),
marked: videos sampled otherwise are not the same base and sit in a table of their own. A run's cell is its
mean with the 95% t-interval of its paired difference from the base moved onto it (mean - diff + [lo, hi]: the
interval of the run's value given the base's); the base row has no interval of its own. Columns are those of
the suite (each labelled exact/proxy)."""

from __future__ import annotations

import csv
import io

from webapp.experiments.models import Evaluation, Experiment, Status


def leaderboard(user) -> list[dict]:
    """Tables, one per (suite, prompts, backbone, steps, guidance, flow shift): {"suite", "prompts", "backbone",
    "steps", "guidance", "flow_shift", "columns": [(name, label)],
    "rows": [{"name", "experiment", "checkpoint", "base": bool, "cells": [(value, low, high) or None]}]}."""
    experiments = Experiment.objects.visible_to(user)
    evaluations = (
        Evaluation.objects.filter(experiment__in=experiments, status=Status.FINISHED)
        .select_related("experiment")
        .order_by("-created")
    )
    tables: dict[tuple, dict] = {}
    seen: set[tuple] = set()
    for ev in evaluations:
        result = ev.result or {}
        columns = result.get("columns")
        if not columns:
            continue
        suite = result.get("suite", ev.suite)
        backbone = ev.experiment.config.get("backbone", "?")
        # the schedule base and checkpoint were sampled on: the evaluation's own, else the run's
        shift = float(ev.experiment.config.get("flow_shift") or 0.0) if ev.flow_shift is None else ev.flow_shift
        key = (suite, ev.prompts, backbone, ev.sampling_steps, ev.guidance, shift)
        if (key, ev.experiment_id) in seen:
            continue  # only the newest evaluation of a run
        seen.add((key, ev.experiment_id))
        labels = result.get("labels", {})
        table = tables.setdefault(
            key,
            {
                "suite": suite,
                "prompts": ev.prompts,
                "backbone": backbone,
                "steps": ev.sampling_steps,
                "guidance": ev.guidance,
                "flow_shift": shift,
                "columns": [(c, labels.get(c, "")) for c in columns],
                "rows": [],
                "_base": None,
            },
        )
        if [c for c, _ in table["columns"]] != columns:
            continue  # stored by an older version with other columns
        diff = result.get("difference") or [None] * len(columns)
        cells = []
        for value, base, d in zip(result["checkpoint"], result["base"], diff):
            if value is None:
                cells.append(None)
            elif d and d.get("ci95") and None not in d["ci95"] and base is not None:
                cells.append((value, base + d["ci95"][0], base + d["ci95"][1]))
            else:
                cells.append((value, None, None))
        table["rows"].append(
            {
                "name": ev.experiment.name,
                "experiment": ev.experiment,
                "checkpoint": ev.checkpoint,
                "base": False,
                "cells": cells,
            }
        )
        if table["_base"] is None:  # the base model's row, once per table (same prompts and seeds)
            table["_base"] = {
                "name": f"base ({backbone})",
                "experiment": None,
                "checkpoint": "",
                "base": True,
                "cells": [None if v is None else (v, None, None) for v in result["base"]],
            }
    out = []
    for table in tables.values():
        base = table.pop("_base")
        table["rows"].insert(0, base)
        for row in table["rows"]:  # what the page prints: % with 2 decimals; data-value sorts
            row["shown"] = [
                ("", "–", "")
                if c is None
                else (
                    f"{c[0]:.6f}",
                    f"{100 * c[0]:.2f}",
                    "" if c[1] is None else f"{100 * c[1]:.2f} to {100 * c[2]:.2f}",
                )
                for c in row["cells"]
            ]
        out.append(table)
    return out


def leaderboard_csv(tables: list[dict]) -> str:
    """One line per (table, row, column): long format, so tables with other columns fit one file."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "suite",
            "prompts",
            "backbone",
            "sampling_steps",
            "guidance",
            "flow_shift",
            "run",
            "checkpoint",
            "is_base",
            "dimension",
            "label",
            "value",
            "ci95_low",
            "ci95_high",
        ]
    )
    for t in tables:
        for row in t["rows"]:
            for (column, label), cell in zip(t["columns"], row["cells"]):
                value, low, high = cell if cell else (None, None, None)
                w.writerow(
                    [
                        t["suite"],
                        t["prompts"],
                        t["backbone"],
                        t["steps"],
                        t["guidance"],
                        t["flow_shift"],
                        row["name"],
                        row["checkpoint"],
                        int(row["base"]),
                        column,
                        label,
                        _num(value),
                        _num(low),
                        _num(high),
                    ]
                )
    return buf.getvalue()


def _num(x) -> str:
    return "" if x is None else f"{x:.6f}"


def studies_of(experiment: Experiment, bootstrap: int = 300) -> list[dict]:
    """Closed user studies that compared a checkpoint of ``experiment``: per study, its pairs that involve one
    of the run's systems (votes, win rate, Wilson 95% interval, p) and all Bradley–Terry ratings (bootstrap)."""
    from webapp.studies.models import StudyStatus, System
    from webapp.studies.results import summarise

    systems = System.objects.filter(experiment=experiment, study__status=StudyStatus.CLOSED).select_related("study")
    out = []
    for study in {s.study for s in systems}:
        mine = {s.label for s in systems if s.study_id == study.pk}
        summary = summarise(study, bootstrap=bootstrap)
        out.append(
            {
                "study": study,
                "systems": sorted(mine),
                "pairs": [p for p in summary["pairs"] if p["a"] in mine or p["b"] in mine],
                "ratings": summary["ratings"],
                "anchor": summary["anchor"],
                "votes": summary["votes"],
            }
        )
    return sorted(out, key=lambda s: -s["study"].pk)
