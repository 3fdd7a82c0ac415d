"""The studies app's Celery tasks: thin glue around ``jobs.py``. Rendering goes to the ``gpu``
queue, the feedback analysis to ``cpu`` (``webapp/celery.py``)."""

from __future__ import annotations

from webapp.celery import ANALYSE_FEEDBACK, RENDER_STUDY, app
from webapp.studies import jobs


@app.task(name=RENDER_STUDY)
def render_study(study_id: int) -> None:
    jobs.render(study_id)


@app.task(name=ANALYSE_FEEDBACK)
def analyse_study_feedback(study_id: int) -> None:
    jobs.analyse_feedback(study_id)
