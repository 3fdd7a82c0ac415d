"""A run its held-out alarm stopped goes on from its page, the alarm switched off, on a real Celery
worker: launched from the form with the shipped model broken on purpose (``tests/test_train.py``'s
``ALARMED_RUN``: one step at lr 0.5 makes its held-out videos fall apart over time), stopped by
``stop_heldout = temporal`` after step 1, then continued to its 3 planned steps from the step-1
checkpoint."""

import re
import time

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from tests.test_train import ALARMED_RUN
from tests.test_web_experiments import form_data, logged_in
from webapp.experiments.models import Experiment


def until_done(experiment: Experiment, seconds: float = 400) -> Experiment:
    deadline = time.time() + seconds
    experiment.refresh_from_db()
    while not experiment.is_done:
        assert time.time() < deadline, f"the run did not end: {experiment.status}"
        time.sleep(0.5)
        experiment.refresh_from_db()
    return experiment


@pytest.mark.timeout(900)
def test_a_run_the_alarm_stopped_continues_from_its_page_without_the_alarm(live_stack, transactional_db):
    owner = get_user_model().objects.create_user("olga", password="pw-olga-long")
    client = logged_in(owner)
    r = client.post(reverse("experiments:new"), form_data(**ALARMED_RUN))
    assert r.status_code == 302, r.content.decode()[:2000]
    experiment = until_done(Experiment.objects.get())
    assert experiment.status == "finished", experiment.error
    assert experiment.stopped_reason.startswith("held-out alarm at step 1 of 3: temporal")
    assert experiment.last_step == 1 and experiment.checkpoints() == ["step_000001"]
    url = reverse("experiments:continue", args=[experiment.pk])
    page = client.get(experiment.get_absolute_url()).content.decode()
    assert "hidden" not in re.search(r'<form[^>]*id="continue-form"[^>]*>', page).group(0)

    r = client.post(url)
    assert r.status_code == 302 and r["Location"] == experiment.get_absolute_url()
    assert client.post(url).status_code == 400  # a second click sends nothing more
    experiment.refresh_from_db()
    assert experiment.config["stop_heldout"] == "none" and experiment.stopped_reason == ""
    experiment = until_done(experiment)
    assert experiment.status == "finished", experiment.error
    assert experiment.stopped_reason == "" and experiment.last_step == 3
    assert experiment.checkpoints() == ["step_000001", "step_000002", "step_000003"]
    steps = sorted(experiment.points.values_list("step", flat=True))
    assert steps == [0, 1, 2, 3]  # the held-out checks went on; no step twice
