"""What a worker does for the experiments app, as functions of ids (called by ``tasks.py``):
re-fetch the row, call ``vpo``, write the results. ``vpo`` (and torch) are imported inside the
functions: the web process imports this module through ``tasks.py`` and must stay torch-free."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from webapp.experiments.models import DONE, Evaluation, Experiment, Status
from webapp.experiments.sink import DatabaseSink
from webapp.live import finite_or_none, push

log = logging.getLogger(__name__)


def train(experiment_id: int, worker_stopping: Callable[[], bool] = lambda: False) -> str | None:
    """Train experiment ``experiment_id`` with a database sink until it is done, cancelled or failed;
    returns its final status (None if the row is gone). ``worker_stopping`` says whether the worker
    is shutting down: then the run stops at its next step with a checkpoint and is marked paused,
    and the task is to go back to the queue. A task that comes back (after a pause, or after its
    worker died) finds the row paused or running and resumes from the run's last checkpoint."""
    from vpo.device import pick_device
    from vpo.train import train as train_config
    from vpo.train.checkpoints import latest_checkpoint

    experiment = Experiment.objects.filter(pk=experiment_id).first()
    if experiment is None or experiment.is_done:
        return experiment and experiment.status
    if experiment.cancel_requested:
        experiment.set_status(Status.CANCELLED)
        return experiment.status
    redelivered = experiment.status in (Status.RUNNING, Status.PAUSED)
    experiment.set_status(Status.RUNNING)
    try:
        cfg = experiment.train_config()
        resume = redelivered and latest_checkpoint(cfg.out) is not None
        train_config(
            cfg,
            DatabaseSink(experiment),
            stop=lambda: experiment.stop_requested() or worker_stopping(),
            resume=resume,
            device=pick_device(),
        )
    except Exception as e:  # any failure ends the run with its message shown on the page...
        if not worker_stopping() or experiment.stop_requested():
            log.exception("experiment %s failed", experiment.pk)
            experiment.set_status(Status.FAILED, f"{type(e).__name__}: {e}")
            return experiment.status
        # ...unless the worker is going down (a cold shutdown cancels the task from inside): it
        # is paused below, the checkpoint kept; the next worker resumes it, or fails it for good
        log.warning("experiment %s interrupted by its worker's shutdown: %s", experiment.pk, e)
    if experiment.stop_requested():
        experiment.set_status(Status.CANCELLED)
    elif worker_stopping():
        experiment.set_status(Status.PAUSED)
    else:
        experiment.set_status(Status.FINISHED)
    return experiment.status


def evaluate(evaluation_id: int) -> None:
    """``vpo eval`` of evaluation ``evaluation_id``'s checkpoint against the base; the result (and
    the paired difference) stored on the row, then announced on the experiment's page."""
    from vpo.data.prompts import read_prompts
    from vpo.device import pick_device
    from vpo.eval import columns_of, compare

    evaluation = Evaluation.objects.filter(pk=evaluation_id).select_related("experiment").first()
    if evaluation is None or evaluation.status in DONE:
        return
    evaluation.status = Status.RUNNING
    evaluation.save(update_fields=["status"])
    try:
        cfg = evaluation.experiment.config
        folder = evaluation.experiment.run_dir / "run" / "checkpoints" / evaluation.checkpoint
        rows = compare(
            cfg["backbone"],
            folder,
            read_prompts(evaluation.prompts),
            steps=cfg["sampling_steps"],
            guidance=cfg["guidance"],
            device=pick_device(),
            suite=evaluation.suite,
        )
        columns = columns_of(rows)
        # jsonb does not keep key order: store the columns' order with the values
        diff = rows["difference"]
        evaluation.result = {
            "columns": list(columns),
            "labels": rows["labels"],
            "quality": rows["quality"],
            "suite": evaluation.suite,
            **{m: [finite_or_none(rows[m][c]) for c in columns] for m in ("base", "checkpoint")},
            "static": {m: [rows[m].get("static_kept"), rows[m]["videos"]] for m in ("base", "checkpoint")},
            "difference": [difference_cell(diff.get(c)) for c in columns],
        }
        evaluation.status = Status.FINISHED
    except Exception as e:  # shown on the page next to the evaluation
        log.exception("evaluation %s failed", evaluation.pk)
        evaluation.status, evaluation.error = Status.FAILED, f"{type(e).__name__}: {e}"
    evaluation.save(update_fields=["status", "result", "error"])
    push(evaluation.experiment.group, {"type": "evaluation.event", "id": evaluation.pk, "status": evaluation.status})


def difference_cell(d: dict[str, Any] | None) -> dict[str, Any] | None:
    """One column of ``paired_difference`` as jsonb can hold it (no NaN); None where there is none
    (the quality score is a score of means, not of videos)."""
    if d is None:
        return None
    return {
        "mean": finite_or_none(d["mean"]),
        "ci95": [finite_or_none(x) for x in d["ci95"]],
        "better": d["better"],
        "worse": d["worse"],
        "n": d["n"],
    }
