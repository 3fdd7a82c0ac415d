"""A run its held-out alarm stopped goes on from its page, the alarm switched off, on a real Celery
worker and in a real browser: launched with the shipped model broken on purpose (``tests/test_train.py``'s
``ALARMED_RUN``: one step at lr 0.5 makes its held-out videos fall apart over time), stopped by
``stop_heldout = temporal`` after step 1; its open page shows the alarm and the *Continue* button as the
run ends, without a reload; the click resumes it to its 3 planned steps from the step-1 checkpoint."""

import time

import pytest
import test_web_browser
from django.contrib.auth import get_user_model
from django.urls import reverse
from test_web_browser import log_in, wait_for

from tests.test_train import ALARMED_RUN
from tests.test_web_experiments import form_data, logged_in
from webapp.experiments.models import Experiment

browser, page = test_web_browser.browser, test_web_browser.page  # the same fixtures: Chromium, a fresh page


def until_done(experiment: Experiment, seconds: float = 400) -> Experiment:
    deadline = time.time() + seconds
    experiment.refresh_from_db()
    while not experiment.is_done:
        assert time.time() < deadline, f"the run did not end: {experiment.status}"
        time.sleep(0.5)
        experiment.refresh_from_db()
    return experiment


@pytest.mark.timeout(900)
def test_a_run_the_alarm_stopped_continues_from_its_page_without_the_alarm(live_stack, transactional_db, page):
    owner = get_user_model().objects.create_user("olga", password="pw-olga-long")
    client = logged_in(owner)
    log_in(page, live_stack.url, "olga", "pw-olga-long")
    r = client.post(reverse("experiments:new"), form_data(**ALARMED_RUN))
    assert r.status_code == 302, r.content.decode()[:2000]
    experiment = Experiment.objects.get()
    page.goto(live_stack.url + experiment.get_absolute_url())
    page.evaluate("window.__sameDocument = true")  # gone if the page ever reloads
    assert page.text_content("#status") != "finished" and page.locator("#continue-form").is_hidden()

    # the run ends while its page is open: the alarm and the button appear live (dashboard.js)
    wait_for(lambda: page.text_content("#status") == "finished", timeout=400, what="the alarm to stop the run")
    assert page.evaluate("window.__sameDocument") is True
    assert page.text_content("#stopped").startswith("held-out alarm at step 1 of 3: temporal")
    assert page.locator("#continue-form").is_visible()
    experiment = until_done(experiment)
    assert experiment.status == "finished", experiment.error
    assert experiment.stopped_reason.startswith("held-out alarm at step 1 of 3: temporal")
    assert experiment.last_step == 1 and experiment.checkpoints() == ["step_000001"]

    with page.expect_navigation():  # a plain form post, redirected back to the run's page
        page.click("#continue")
    assert page.url == live_stack.url + experiment.get_absolute_url()
    assert page.locator("#stopped").is_hidden() and page.locator("#continue-form").is_hidden()
    url = reverse("experiments:continue", args=[experiment.pk])
    assert client.post(url).status_code == 400  # a second click sends nothing more
    experiment.refresh_from_db()
    assert experiment.config["stop_heldout"] == "none" and experiment.stopped_reason == ""

    wait_for(lambda: page.text_content("#status") == "finished", timeout=400, what="the continued run to finish")
    assert page.locator("#stopped").is_hidden() and page.locator("#continue-form").is_hidden()
    experiment = until_done(experiment)
    assert experiment.status == "finished", experiment.error
    assert experiment.stopped_reason == "" and experiment.last_step == 3
    assert experiment.checkpoints() == ["step_000001", "step_000002", "step_000003"]
    steps = sorted(experiment.points.values_list("step", flat=True))
    assert steps == [0, 1, 2, 3]  # the held-out checks went on; no step twice
