"""The dashboard in a real browser (Playwright driving Debian's Chromium) against a live Daphne
server and a real Celery worker: log in, launch from the form, watch the chart grow without a
reload, play a logged video, cancel the run."""

import os
import shutil
import time

import pytest
from django.contrib.auth import get_user_model

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium package (as root)")
    # Playwright's sync API keeps an event loop in this thread; the test's own ORM calls (and the
    # database flush after it) are plain synchronous code all the same
    # (this module only: the loop and the flag go when it ends, before other modules' async tests)
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            yield browser
            browser.close()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    blocked = []  # what the Content-Security-Policy refused: the app's own pages need nothing it forbids
    page.on("console", lambda m: "Content Security Policy" in m.text and blocked.append(m.text))
    yield page
    context.close()
    assert not blocked, blocked


def log_in(page, url, username, password):
    page.goto(f"{url}/experiments/")
    assert "/accounts/login/" in page.url  # anonymous: sent to the login page
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/experiments/")


def wait_for(predicate, timeout=240, every=0.25, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.timeout(900)
def test_launch_watch_play_and_cancel_in_the_browser(live_stack, transactional_db, page):
    get_user_model().objects.create_user("alice", password="a-long-password")
    log_in(page, live_stack.url, "alice", "a-long-password")

    page.goto(f"{live_stack.url}/experiments/new/")
    page.fill("input[name=name]", "browser run")
    for field, value in {
        "steps": "60",
        "num_candidates": "3",
        "sampling_steps": "6",
        "heldout_every": "2",
        "heldout_count": "2",
        "checkpoint_every": "5",
    }.items():
        page.fill(f"input[name={field}]", value)
    page.select_option("select[name=prompts]", "demo")
    page.click("#launch")
    page.wait_for_url("**/experiments/*/")
    page.evaluate("window.__sameDocument = true")  # gone if the page ever reloads

    count = lambda: int(page.get_attribute("#point-count", "data-count"))  # noqa: E731
    first = wait_for(lambda: count() >= 2 and count(), what="the first points")
    wait_for(lambda: count() > first, what="the chart to grow")
    assert page.evaluate("window.__sameDocument") is True
    assert page.locator("#charts .uplot").count() >= 3  # reward, loss, step time, ...

    # the video slider: held-out videos at steps 0 and 2 (base, and after training)
    wait_for(lambda: page.evaluate("+document.querySelector('#video-step').max") >= 1, what="two logged steps")
    slider = page.locator("#video-step")
    slider.focus()
    page.keyboard.press("ArrowLeft")
    assert page.text_content("#video-step-value").startswith("step ")
    page.keyboard.press("ArrowRight")
    video = page.locator("#video-panel video").first
    video.wait_for()
    t0 = video.evaluate("v => { v.play(); return v.currentTime; }")
    wait_for(lambda: video.evaluate("v => v.currentTime") > t0 + 0.2, timeout=20, what="the video to play")
    assert video.evaluate("v => v.videoWidth") >= 256

    page.click("#cancel")
    wait_for(lambda: page.text_content("#status") == "cancelled", timeout=180, what="the run to be cancelled")
    assert page.evaluate("window.__sameDocument") is True


@pytest.mark.timeout(900)
def test_a_volunteer_votes_through_a_study_and_the_researcher_sees_the_counts(
    live_stack, transactional_db, page, quick_checkpoint
):
    from playwright.sync_api import expect

    from webapp.experiments.forms import validated_config
    from webapp.experiments.models import Experiment
    from webapp.studies.models import Study, System
    from webapp.studies.tasks import render_study

    researcher = get_user_model().objects.create_user("rita", password="a-long-password")
    experiment = Experiment.objects.create(
        owner=researcher, name="tuned", status="finished", config=validated_config({})
    )
    quick_checkpoint(experiment.run_dir / "run")
    study = Study.objects.create(
        owner=researcher,
        name="base vs tuned",
        prompts="a red ball moving right\na blue square falling",
        gold_rate=0.25,
        trials_per_participant=4,
    )
    System.objects.create(study=study, label="base")
    System.objects.create(study=study, label="tuned", experiment=experiment, checkpoint="step_000001")
    render_study.delay_on_commit(study.pk)  # the real worker renders the clips with paired seeds
    wait_for(lambda: Study.objects.get(pk=study.pk).status != "rendering", timeout=300, what="rendering")
    study.refresh_from_db()
    assert study.status == "open", study.error

    page.goto(f"{live_stack.url}/s/{study.token}/?PROLIFIC_PID=p-123&STUDY_ID=s-1&SESSION_ID=x-9")
    page.check("#consent")
    page.click("#start")
    trials = 0
    while "/done" not in page.url:
        page.wait_for_selector("button.choice")
        buttons = page.locator("button.choice")
        assert all(buttons.nth(i).is_disabled() for i in range(buttons.count()))  # not before both played
        # (locators, not wait_for_function: its predicate is eval'd in the page, which the CSP forbids)
        for i in range(buttons.count()):
            expect(buttons.nth(i)).to_be_enabled(timeout=30_000)
        with page.expect_navigation():
            page.keyboard.press("ArrowLeft" if trials % 2 else "ArrowRight")
        trials += 1
    assert trials == 3  # two pairwise trials and one gold trial (each voted once the clips played through:
    # the server's minimum watch time is on, at its default)

    from webapp.studies.models import Participant

    volunteer = Participant.objects.get(study=study)
    if volunteer.excluded:  # the gold trial was answered by side: no code then
        assert page.locator("#completion-code").count() == 0 and page.locator("#no-code").count() == 1
    else:
        assert page.text_content("#completion-code") == volunteer.completion_code != ""
    assert volunteer.prolific_pid == "p-123" and volunteer.votes.count() == 3
    log_in(page, live_stack.url, "rita", "a-long-password")
    page.goto(f"{live_stack.url}/studies/{study.pk}/results/")
    counted = 0 if volunteer.excluded else 2  # the gold trial was answered by side, not by looking
    assert page.text_content("#pairs td.votes") == str(counted)
    wins = int(page.text_content("#pairs td.wins-a")) + int(page.text_content("#pairs td.wins-b"))
    assert wins == counted


def test_choosing_a_real_backbone_fills_in_its_defaults(live_stack, transactional_db, page):
    get_user_model().objects.create_user("carol", password="pw-carol")
    log_in(page, live_stack.url, "carol", "pw-carol")
    page.goto(f"{live_stack.url}/experiments/new/")
    assert page.input_value("#id_lora_rank") == "8"
    page.select_option("#id_backbone", "wan")  # the server's VPO_MODELS_DIR has the tiny Wan: enabled
    assert (
        page.input_value("#id_lora_rank"),
        page.input_value("#id_sampling_steps"),
        page.input_value("#id_guidance"),
    ) == ("32", "30", "5")
    page.select_option("#id_backbone", "tiny")
    assert page.input_value("#id_lora_rank") == "8" and page.input_value("#id_sampling_steps") == "20"
