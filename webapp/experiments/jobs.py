"""What a worker does for the experiments app, as functions of ids (called by ``tasks.py``):
re-fetch the row, call ``vpo``, write the results. ``vpo`` (and torch) are imported inside the
functions: the web process imports this module through ``tasks.py`` and must stay torch-free."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.db.models import Q
from django.utils import timezone

from webapp.celery import ranks_refused, worker_capacity
from webapp.db import retry_once
from webapp.experiments.models import (
    DONE,
    HEARTBEAT_TIMEOUT_S,
    Evaluation,
    Experiment,
    Status,
    stale_heartbeat,
)
from webapp.experiments.sink import DatabaseSink
from webapp.heartbeats import Beating, fail_stalled
from webapp.live import finite_or_none, push

log = logging.getLogger(__name__)


def claim(experiment_id: int, hostname: str) -> bool:
    """Marks the row running on ``hostname``, unless another live worker runs it already (a message
    delivered twice: the reaper's and Redis's own redelivery). A running row may be taken over
    when its heartbeat is stale, or by a worker of the same name (its previous process died). The
    phase of an earlier attempt goes: the new one reports its own from loading the model on."""
    free = Q(status__in=(Status.QUEUED, Status.PAUSED)) | Q(status=Status.RUNNING) & (
        stale_heartbeat() | Q(worker=hostname)
    )
    now = timezone.now()
    return bool(
        retry_once(
            lambda: Experiment.objects.filter(free, pk=experiment_id).update(
                status=Status.RUNNING, worker=hostname, heartbeat=now, error="", phase=None
            )
        )
    )


def train(experiment_id: int, worker_stopping: Callable[[], bool] = lambda: False, hostname: str = "") -> str | None:
    """Train experiment ``experiment_id`` with a database sink until it is done, cancelled or failed;
    returns its final status (None if the row is gone, or another worker runs it). ``worker_stopping``
    says whether the worker is shutting down: then the run stops at its next step with a checkpoint
    and is marked paused, and the task is to go back to the queue. A task that comes back (after a
    pause, after its worker died, or queued again by the reaper) finds the row paused or running
    and resumes from the run's last checkpoint. Every database write survives one dropped
    connection (``webapp/db.py``), and the failure path never reuses the connection that failed."""
    from vpo.device import pick_device
    from vpo.train import train as train_config
    from vpo.train.checkpoints import latest_checkpoint

    experiment = retry_once(lambda: Experiment.objects.filter(pk=experiment_id).first())
    if experiment is None or experiment.is_done:
        return experiment and experiment.status
    if experiment.cancel_requested:
        experiment.set_status(Status.CANCELLED)
        return experiment.status
    redelivered = experiment.status in (Status.RUNNING, Status.PAUSED)
    if not claim(experiment_id, hostname):
        log.info("experiment %s is running on a live worker already: this copy of its task does nothing", experiment_id)
        return None
    experiment.set_status(Status.RUNNING)
    # while the row is still this worker's: if it no longer is (the reaper gave the run to another
    # worker after this one was unreachable), ``lost`` is set and the run stops at its next step
    heartbeat = Beating(Experiment.objects.filter(pk=experiment_id, status=Status.RUNNING, worker=hostname))
    heartbeat.start()
    try:
        cfg = experiment.train_config()
        problem = ranks_refused(cfg.nproc, experiment.queue, [{**worker_capacity(), "hostname": hostname}])
        if problem:  # a worker with fewer GPUs than the run's took it
            raise ValueError(problem)
        stop = lambda: heartbeat.lost.is_set() or experiment.stop_requested() or worker_stopping()  # noqa: E731
        if experiment.physmaster is not None:
            physmaster_chain(experiment, stop)
        else:
            resume = redelivered and latest_checkpoint(cfg.out) is not None
            train_config(cfg, DatabaseSink(experiment), stop=stop, resume=resume, device=pick_device())
    except Exception as e:  # any failure ends the run with its message shown on the page...
        if not worker_stopping() or experiment.stop_requested():
            log.exception("experiment %s failed", experiment.pk)
            heartbeat.stop()
            experiment.set_status(Status.FAILED, f"{type(e).__name__}: {e}")
            return experiment.status
        # ...unless the worker is going down (a cold shutdown cancels the task from inside): it
        # is paused below, the checkpoint kept; the next worker resumes it, or fails it for good
        log.warning("experiment %s interrupted by its worker's shutdown: %s", experiment.pk, e)
    finally:
        heartbeat.stop()
    if heartbeat.lost.is_set():
        log.warning("experiment %s was given to another worker while this one was unreachable", experiment.pk)
        return None
    if experiment.stop_requested():
        experiment.set_status(Status.CANCELLED)
    elif worker_stopping():
        experiment.set_status(Status.PAUSED)
    else:
        experiment.set_status(Status.FINISHED)
    return experiment.status


def physmaster_chain(experiment: Experiment, stop: Callable[[], bool]) -> None:
    """PhysMaster's three stages (``vpo physmaster``) in the run's folder, each stage's metrics,
    videos and phases to the run's page on one step axis (``Experiment.stage_offsets``). A finished
    stage is reused and an unfinished one resumes, so a paused or redelivered run goes on where it
    stopped; the report (``report.md``, the held-out table) is written once all three are done."""
    from vpo.device import pick_device
    from vpo.physmaster import LABELS, PhysMasterConfig, physmaster

    cfg = PhysMasterConfig(**experiment.physmaster, out=str(experiment.run_dir / "run"))
    offsets, between = experiment.stage_offsets(), DatabaseSink(experiment)

    def say(line: str) -> None:
        log.info("experiment %s: %s", experiment.pk, line)
        if "\n" not in line:  # a stage done, the evaluation begun (not the final table) on the page
            between.phase(experiment.total_steps, line)

    physmaster(
        cfg,
        progress=False,
        say=say,
        device=pick_device(),
        sink_for=lambda stage, _: DatabaseSink(experiment, offset=offsets[stage], label=LABELS[stage]),
        stop=stop,
    )


def runs_without_worker(restarted: str = "") -> list[Experiment]:
    """The reaper's first half: running rows whose heartbeat is stale (their worker is gone), and
    at a worker's start-up those its previous process of the same name ``restarted`` left running,
    are marked paused (so they resume from their last checkpoint) and returned, to be queued again."""
    lost = Q(status=Status.RUNNING) & (stale_heartbeat() | (Q(worker=restarted) if restarted else Q(pk__in=[])))
    taken = []
    for e in retry_once(lambda: list(Experiment.objects.filter(lost))):
        # taken only if nobody beat or took it meanwhile (another worker's reaper, a late heartbeat)
        if Experiment.objects.filter(pk=e.pk, status=Status.RUNNING, heartbeat=e.heartbeat).update(
            status=Status.PAUSED, worker="", heartbeat=timezone.now()
        ):
            log.warning("experiment %s lost its worker %s: queued again from its last checkpoint", e.pk, e.worker)
            e.refresh_from_db()
            push(e.group, {"type": "status.event", **e.status_payload()})
            taken.append(e)
    return taken


def waiting_runs() -> list[Experiment]:
    """The reaper's second half: rows waiting for a worker (queued, or paused) for longer than
    HEARTBEAT_TIMEOUT_S, whose message may have been lost (a Redis restart without persistence);
    the caller looks for their messages on the broker."""
    cutoff = timezone.now() - timedelta(seconds=HEARTBEAT_TIMEOUT_S)
    old = Q(heartbeat__lt=cutoff) | Q(heartbeat__isnull=True, created__lt=cutoff)
    return retry_once(lambda: list(Experiment.objects.filter(old, status__in=(Status.QUEUED, Status.PAUSED))))


def requeued(experiment: Experiment) -> bool:
    """Notes that ``experiment``'s message was sent again now (the next sweep waits a timeout
    before looking again); False if the row moved on meanwhile (a worker took it)."""
    return bool(
        Experiment.objects.filter(pk=experiment.pk, status=experiment.status, heartbeat=experiment.heartbeat).update(
            heartbeat=timezone.now()
        )
    )


def evaluate(evaluation_id: int) -> None:
    """``vpo eval`` of evaluation ``evaluation_id``'s checkpoint against the base; the result (and
    the paired difference) stored on the row, then announced on the experiment's page."""
    evaluation = Evaluation.objects.filter(pk=evaluation_id).select_related("experiment").first()
    if evaluation is None or evaluation.status in DONE:
        return
    # the first heartbeat with the status: a running row without one would look stalled to the reaper
    evaluation.status, evaluation.heartbeat = Status.RUNNING, timezone.now()
    evaluation.save(update_fields=["status", "heartbeat"])
    try:
        with Beating(Evaluation.objects.filter(pk=evaluation.pk, status=Status.RUNNING)):
            evaluation.result = evaluation_result(evaluation)
        evaluation.status = Status.FINISHED
    except Exception as e:  # shown on the page next to the evaluation
        log.exception("evaluation %s failed", evaluation.pk)
        evaluation.status, evaluation.error = Status.FAILED, f"{type(e).__name__}: {e}"
    evaluation.save(update_fields=["status", "result", "error"])
    push(evaluation.experiment.group, {"type": "evaluation.event", "id": evaluation.pk, "status": evaluation.status})


def evaluation_result(evaluation: Evaluation) -> dict[str, Any]:
    """``vpo eval`` of the evaluation's checkpoint against the base, as the row stores it."""
    from vpo.data.prompts import read_prompts
    from vpo.device import pick_device
    from vpo.eval import columns_of, compare

    cfg = evaluation.experiment.config
    folder = evaluation.experiment.run_dir / "run" / "checkpoints" / evaluation.checkpoint
    rows = compare(
        cfg["backbone"],
        folder,
        read_prompts(evaluation.prompts),
        steps=evaluation.sampling_steps,
        guidance=evaluation.guidance,
        device=pick_device(),
        suite=evaluation.suite,
        flow_shift=evaluation.flow_shift,
    )
    columns = columns_of(rows)
    # jsonb does not keep key order: store the columns' order with the values
    diff = rows["difference"]
    return {
        "columns": list(columns),
        "labels": rows["labels"],
        "quality": rows["quality"],
        "suite": evaluation.suite,
        "sampling": rows["sampling"],
        **{m: [finite_or_none(rows[m][c]) for c in columns] for m in ("base", "checkpoint")},
        "static": {m: [rows[m].get("static_kept"), rows[m]["videos"]] for m in ("base", "checkpoint")},
        "difference": [difference_cell(diff.get(c)) for c in columns],
    }


def stalled_evaluations() -> list[int]:
    """The reaper's sweep of evaluations: running ones whose worker is gone are marked failed, and
    their experiment's page is told."""
    failed = fail_stalled(Evaluation.objects.filter(status=Status.RUNNING), status=Status.FAILED)
    for evaluation in Evaluation.objects.filter(pk__in=failed).select_related("experiment"):
        push(evaluation.experiment.group, {"type": "evaluation.event", "id": evaluation.pk, "status": Status.FAILED})
    return failed


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
