"""Celery tasks: thin glue. Each takes an id, re-fetches the row, exits if it is gone, and calls the
model method that does the work (which calls ``vpo``). GPU work goes to the ``gpu`` queue
(``worker/celery.py``). No retries: a failed run is shown as failed with its error, and a worker
that dies mid-run gets the task back (acks_late) and the run resumes from its checkpoint."""

from worker.celery import app


@app.task
def train_experiment(experiment_id: int) -> None:
    from webapp.experiments.models import Experiment

    experiment = Experiment.objects.filter(pk=experiment_id).first()
    if experiment is not None:
        experiment.run()


@app.task
def evaluate_checkpoint(evaluation_id: int) -> None:
    from webapp.experiments.models import Evaluation

    evaluation = Evaluation.objects.filter(pk=evaluation_id).select_related("experiment").first()
    if evaluation is not None:
        evaluation.run()


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
