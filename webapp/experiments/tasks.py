"""The experiments app's Celery tasks: thin glue around ``jobs.py`` (ids in; the job re-fetches the
row). Training and evaluation go to the ``gpu`` queue (``webapp/celery.py``). No retries: a failed
run is shown as failed with its error; a worker that dies mid-run gets the task back (acks_late)
and the run resumes from its checkpoint; one that shuts down cleanly stops the run at its next step
and puts the task back itself."""

from __future__ import annotations

from typing import Any

from celery.exceptions import Reject

from webapp.celery import EVALUATE, EVALUATE_VBENCH, TRAIN, app, worker_stopping
from webapp.experiments import jobs
from webapp.experiments.models import Status


@app.task(bind=True, name=TRAIN)
def train_experiment(self: Any, experiment_id: int) -> None:
    hostname = self.request.hostname
    if jobs.train(experiment_id, worker_stopping=lambda: worker_stopping(hostname)) == Status.PAUSED:
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
