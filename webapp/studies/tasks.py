"""The studies app's Celery tasks: thin glue around ``jobs.py``. Rendering, reward-model training and
guided sampling go to the ``gpu`` queue, the feedback analysis to ``cpu`` (``webapp/celery.py``)."""

from __future__ import annotations

from webapp.celery import ANALYSE_FEEDBACK, GUIDED_SAMPLE, RENDER_STUDY, TRAIN_REWARD_MODEL, app
from webapp.studies import jobs


@app.task(name=RENDER_STUDY)
def render_study(study_id: int) -> None:
    jobs.render(study_id)


@app.task(name=ANALYSE_FEEDBACK)
def analyse_study_feedback(study_id: int) -> None:
    jobs.analyse_feedback(study_id)


@app.task(name=TRAIN_REWARD_MODEL)
def train_reward_model(reward_model_id: int) -> None:
    jobs.train_reward_model(reward_model_id)


@app.task(name=GUIDED_SAMPLE)
def guided_sample(sampling_id: int) -> None:
    jobs.guided_sample(sampling_id)
