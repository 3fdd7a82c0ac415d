"""Celery tasks: thin glue. Each takes an id, re-fetches the row, exits if it is gone, and calls the
model method that does the work (which calls ``vpo``). GPU work goes to the ``gpu`` queue
(``worker/celery.py``). No retries: a failed run is shown as failed with its error, and a worker
that dies mid-run gets the task back (acks_late) and the run resumes from its checkpoint; one that
shuts down cleanly stops the run at its next step and puts the task back itself."""

from celery.exceptions import Reject

from worker.celery import app, worker_stopping


@app.task(bind=True)
def train_experiment(self, experiment_id: int) -> None:
    from webapp.experiments.models import Experiment

    experiment = Experiment.objects.filter(pk=experiment_id).first()
    hostname = self.request.hostname
    if experiment is not None and not experiment.run(worker_stopping=lambda: worker_stopping(hostname)):
        raise Reject(
            f"worker {hostname} is shutting down; experiment {experiment_id} goes back to the queue", requeue=True
        )


@app.task
def evaluate_checkpoint(evaluation_id: int) -> None:
    from webapp.experiments.models import Evaluation

    evaluation = Evaluation.objects.filter(pk=evaluation_id).select_related("experiment").first()
    if evaluation is not None:
        evaluation.run()


@app.task
def evaluate_checkpoint_vbench(evaluation_id: int) -> None:
    """The same on queue ``vbench``: workers that have .venv-vbench and VBENCH_CACHE_DIR's weights."""
    evaluate_checkpoint(evaluation_id)


@app.task
def render_study(study_id: int) -> None:
    from webapp.studies.models import Study

    study = Study.objects.filter(pk=study_id).first()
    if study is not None:
        study.render()


@app.task
def analyse_study_feedback(study_id: int) -> None:
    from webapp.studies.models import Study

    study = Study.objects.filter(pk=study_id).first()
    if study is not None:
        study.analyse_feedback()
