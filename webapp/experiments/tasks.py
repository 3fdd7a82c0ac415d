"""The experiments app's Celery tasks: thin glue around ``jobs.py`` (ids in; the job re-fetches the
row). Training and evaluation go to the ``gpu`` queue (``webapp/celery.py``). No retries: a failed
run is shown as failed with its error; a worker that dies mid-run gets the task back (acks_late)
and the run resumes from its checkpoint; one that shuts down cleanly stops the run at its next step
and puts the task back itself."""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import Reject

from webapp.celery import EVALUATE, EVALUATE_VBENCH, TRAIN, app, queued_task_args, worker_stopping
from webapp.experiments import jobs
from webapp.experiments.models import Experiment, Status

log = logging.getLogger(__name__)


@app.task(bind=True, name=TRAIN)
def train_experiment(self: Any, experiment_id: int) -> None:
    hostname = self.request.hostname
    if jobs.train(experiment_id, worker_stopping=lambda: worker_stopping(hostname), hostname=hostname) == Status.PAUSED:
        raise Reject(
            f"worker {hostname} is shutting down; experiment {experiment_id} goes back to the queue", requeue=True
        )


@app.task(name=EVALUATE)
def evaluate_checkpoint(evaluation_id: int) -> None:
    jobs.evaluate(evaluation_id)


@app.task(name=EVALUATE_VBENCH)
def evaluate_checkpoint_vbench(evaluation_id: int) -> None:
    """The same on queue ``vbench``: workers that have .venv-vbench and VBENCH_CACHE_DIR's weights."""
    jobs.evaluate(evaluation_id)


def enqueue(experiment: Experiment) -> bool:
    """Sends ``experiment``'s training task to its queue; if the broker cannot take it, the row is
    marked failed with the reason (no ``queued`` row is left without a message) and False returned."""
    try:
        train_experiment.apply_async((experiment.pk,), queue=experiment.queue)
    except Exception as e:  # kombu's OperationalError, redis' errors: all mean "not queued"
        log.warning("experiment %s could not be queued: %s", experiment.pk, e)
        experiment.set_status(Status.FAILED, f"could not be queued (the task broker did not answer): {e}")
        return False
    return True


def reap(restarted: str = "") -> list[int]:
    """The reaper's sweep (run by every worker at start-up and then periodically, worker/celery.py):
    runs whose worker is gone are queued again and resume from their last checkpoint; waiting rows
    whose message the broker lost are queued again. Returns the ids sent again."""
    sent = []
    lost = jobs.runs_without_worker(restarted)
    waiting = jobs.waiting_runs()
    if waiting:
        held = queued_task_args(TRAIN, {e.queue for e in waiting})
        for e in waiting:
            if (e.pk,) not in held and jobs.requeued(e):
                log.warning("experiment %s was %s but its message was lost: queued again", e.pk, e.status)
                lost.append(e)
    for e in lost:
        # not enqueue(): a send that fails here leaves the row paused or queued, and a later sweep
        # (its message still missing) sends it again
        train_experiment.apply_async((e.pk,), queue=e.queue)
        sent.append(e.pk)
    return sent
