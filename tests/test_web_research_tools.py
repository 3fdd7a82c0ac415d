"""Issue 18's run and study tools in a real browser (Playwright driving Debian's Chromium) against
the live Daphne server and Celery worker: the phase of the step in progress on the dashboard, the
charts (ticks, range, band, a panel per metric), the gold trials every volunteer gets, volunteer
pages that never come from the browser's cache, and the study tools (pilot link, manual
exclusion, per-trial timings, plots of the results)."""

import base64
import csv
import io
import json
import math
import os
import re
from pathlib import Path

import pytest
import test_web_browser
from django.contrib.auth import get_user_model
from test_web_browser import log_in, wait_for
from test_web_studies import make_study

from vpo.train import keys
from webapp.experiments.forms import validated_config
from webapp.experiments.models import Experiment, MetricPoint
from webapp.studies.models import Participant, Study, Vote

browser, page = test_web_browser.browser, test_web_browser.page  # the same fixtures: Chromium, a fresh page
# scripts/screenshots.sh sets it: the tests then save the README's screenshots there as they pass
SCREENSHOTS = os.environ.get("VPO_SCREENSHOTS")


def screenshot(page, name: str) -> None:
    """The whole page as a PNG, through the DevTools protocol: Playwright's own screenshot injects a
    <style> (the caret), which the app's CSP refuses and the ``page`` fixture then reports."""
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        cdp = page.context.new_cdp_session(page)
        size = cdp.send("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = cdp.send("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True})
        (Path(SCREENSHOTS) / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))
        cdp.detach()


PHASES = {v for k, v in vars(keys).items() if k.startswith("PHASE_")}


# --- 2: the step in progress, live and after a reload ----------------------------------------------
@pytest.mark.timeout(1200)
def test_the_dashboard_shows_what_the_step_is_doing_live_and_after_a_reload(live_stack, transactional_db, page):
    from webapp.experiments.tasks import enqueue

    owner = get_user_model().objects.create_user("pia", password="a-long-password")
    log_in(page, live_stack.url, "pia", "a-long-password")
    config = {"steps": 8, "num_candidates": 2, "sampling_steps": 8, "noise_draws": 1, "heldout_every": 0}
    experiment = Experiment.objects.create(
        owner=owner, name="phases", config=validated_config({**config, "checkpoint_every": 8, "prompts": "demo"})
    )
    assert enqueue(experiment)
    page.goto(f"{live_stack.url}/experiments/{experiment.pk}/")
    page.evaluate("window.__sameDocument = true")
    shown = lambda: page.text_content("#phase").split("·")[:2]  # noqa: E731  (step, phase and k of N)
    # sampling reports its denoising steps: "step 1 of 8 · sampling candidates 3 of 8", pushed live
    wait_for(lambda: page.text_content("#phase-name") == keys.PHASE_SAMPLING, timeout=240, what="sampling")
    assert page.is_visible("#phase") and re.fullmatch(r"step [1-8] of 8", page.text_content("#phase-step"))
    first = shown()
    assert re.fullmatch(r" \d of 8", page.text_content("#phase-progress")), page.text_content("#phase-progress")
    wait_for(lambda: shown() != first, timeout=60, what="the next phase")
    assert page.evaluate("window.__sameDocument") is True  # it moved without a reload

    # the phase is in the database: a reload shows it at once (before any new event)
    stored = Experiment.objects.get(pk=experiment.pk).phase
    assert stored["name"] in PHASES and stored["step"] >= 1
    page.reload()
    assert page.is_visible("#phase") and page.text_content("#phase-name") in PHASES
    # after the first step: an estimate of the time left, from the steps so far
    # (a step of the tiny model took 90 s to over 5 min on the shared 2-core CPU under load)
    wait_for(lambda: "left" in page.text_content("#eta"), timeout=600, what="the ETA")
    assert re.search(r"\(\d+\.\d s/step\)", page.text_content("#eta"))
    screenshot(page, "dashboard-phase")

    page.click("#cancel")
    ended = ("cancelled", "finished")  # stopped after the step in progress (or it was the last)
    wait_for(lambda: page.text_content("#status") in ended, timeout=240, what="the cancel")
    assert not page.is_visible("#phase")  # an ended run has no phase and is not live
    assert page.text_content("#live") != "live"


# --- 7: charts -------------------------------------------------------------------------------------
def logged_names() -> list[str]:
    """Every metric name a run can log (vpo/train/keys.py), a held-out measure, and one no chart names."""
    names = [v for k, v in vars(keys).items() if k.isupper() and isinstance(v, str) and "/" in v.strip("/")]
    return [*names, keys.heldout("temporal"), "custom/unplanned"]


def test_the_charts_have_distinct_ticks_whole_steps_the_runs_range_a_band_bound_mean_and_a_panel_per_metric(
    live_stack, transactional_db, page
):
    owner = get_user_model().objects.create_user("chao", password="a-long-password")
    experiment = Experiment.objects.create(
        owner=owner, name="finished", status="finished", config=validated_config({"steps": 30})
    )
    names = logged_names()
    for step in range(31):
        values = dict.fromkeys(names, 1.0 + 0.01 * step)
        # the reward jumps at step 15: an EMA of the mean lags below the new band
        mean = 0.0 if step < 15 else 1.0
        values.update({keys.REWARD_MEAN: mean, keys.REWARD_MIN: mean - 0.05, keys.REWARD_MAX: mean + 0.05})
        values[keys.DPO_LOSS] = 0.693147 + 1e-5 * (step % 3)  # a narrow range: "0.693 / 0.693" before
        MetricPoint.objects.create(experiment=experiment, step=step, wall=2.0 * step, values=values)
    experiment.last_step = 30
    experiment.save()

    log_in(page, live_stack.url, "chao", "a-long-password")
    page.goto(f"{live_stack.url}/experiments/{experiment.pk}/")
    wait_for(lambda: page.text_content("#live") != "connecting…", timeout=30, what="the websocket")
    assert page.text_content("#live") != "live" and "not live" in page.text_content("#live")
    assert not page.is_visible("#phase")
    wait_for(lambda: page.get_attribute("#point-count", "data-count") == "31", timeout=30, what="the points")
    page.evaluate("document.querySelectorAll('details.section').forEach((d) => { d.open = true; })")
    # the charts of a section are drawn when it opens
    every_section_drawn = "[...document.querySelectorAll('details.section')].every((d) => d.querySelector('.chart'))"
    wait_for(lambda: page.evaluate(every_section_drawn), timeout=10, what="the opened sections' charts")
    charts = page.evaluate(
        """() => [...document.querySelectorAll('.chart')].map((el) => {
            const c = el.vpoChart;
            return {title: c.title, section: el.closest('details').dataset.section,
                    labels: c.plot.series.map((s) => s.label), ticks: c.ticks,
                    x: [c.plot.scales.x.min, c.plot.scales.x.max], data: c.plot.data};
        })"""
    )
    shown = {label for c in charts for label in c["labels"]}
    assert not [n for n in names if n not in shown], "every logged metric has a panel"
    sections = page.eval_on_selector_all("details.section", "els => els.map((d) => d.dataset.section)")
    assert sections[0] == "Training" and "Other" in sections and len(sections) >= 4
    assert any(c["section"] == "Other" and "custom/unplanned" in c["labels"] for c in charts)
    for c in charts:
        ticks_y = [t for t in c["ticks"]["y"] if t]
        assert len(ticks_y) == len(set(ticks_y)) >= 2, (c["title"], ticks_y)
        assert all(re.fullmatch(r"-?\d+", t) for t in c["ticks"]["x"] if t), (c["title"], c["ticks"]["x"])
        assert c["x"] == [0, 30], (c["title"], c["x"])  # the run's 30 steps, not a rounded 0-100
    reward = next(c for c in charts if keys.REWARD_MEAN in c["labels"])
    smoothed = reward["data"][reward["labels"].index(keys.REWARD_MEAN)]
    lo = reward["data"][reward["labels"].index(keys.REWARD_MIN)]
    hi = reward["data"][reward["labels"].index(keys.REWARD_MAX)]
    assert all(a - 1e-9 <= s <= b + 1e-9 for s, a, b in zip(smoothed, lo, hi)), "the smoothed mean left its band"


# --- 4: gold trials --------------------------------------------------------------------------------
def test_every_volunteer_gets_a_gold_trial_and_the_form_says_how_many(live_stack, transactional_db, browser, page):
    researcher = get_user_model().objects.create_user("gita", password="a-long-password")
    log_in(page, live_stack.url, "gita", "a-long-password")
    page.goto(f"{live_stack.url}/studies/new/")
    page.fill("#id_trials_per_participant", "4")
    page.fill("#id_gold_rate", "0.1")  # 4 x 0.1 rounds to 0: still one
    assert page.text_content("#gold-count") == "Each volunteer gets 1 gold trial and 3 comparisons."
    page.fill("#id_trials_per_participant", "20")
    page.fill("#id_gold_rate", "0.25")
    assert page.get_attribute("#gold-count", "data-gold") == "5"
    page.fill("#id_gold_rate", "0")
    assert "No gold trials" in page.text_content("#gold-count")

    study = make_study(researcher, live_stack.media, trials_per_participant=4)
    Study.objects.filter(pk=study.pk).update(gold_rate=0.1)
    page.goto(f"{live_stack.url}/studies/{study.pk}/")
    assert page.text_content("#gold-per-volunteer") == "1"
    volunteer = browser.new_context().new_page()
    volunteer.goto(f"{live_stack.url}/s/{study.token}/")
    assert "4 pairs; 1 of them checks that answers are attentive." in " ".join(volunteer.text_content("main").split())
    volunteer.check("#consent")
    volunteer.click("#start")
    volunteer.wait_for_selector("button.choice")
    plan = Participant.objects.get(study=study).plan
    assert sum(item["gold"] for item in plan) == 1
    volunteer.context.close()


# --- 5: no cached volunteer pages; a stale page's vote gets the done page ---------------------------
def vote_through(volunteer):
    """Vote on every trial once both clips played through (the server's minimum watch time is on)."""
    from playwright.sync_api import expect

    while "/done" not in volunteer.url:
        volunteer.wait_for_selector("button.choice")
        buttons = volunteer.locator("button.choice")
        for i in range(buttons.count()):
            expect(buttons.nth(i)).to_be_enabled(timeout=30_000)
        with volunteer.expect_navigation():
            volunteer.keyboard.press("ArrowLeft")


@pytest.mark.timeout(300)
def test_back_after_the_last_vote_shows_the_done_page_not_a_cached_trial(live_stack, transactional_db, page):
    researcher = get_user_model().objects.create_user("bea")
    study = make_study(researcher, live_stack.media, trials_per_participant=2)
    first = page.goto(f"{live_stack.url}/s/{study.token}/")
    assert "no-store" in first.headers["cache-control"]
    page.check("#consent")
    page.click("#start")
    page.wait_for_selector("button.choice")
    trial_url = page.url
    vote_through(page)
    participant = Participant.objects.get(study=study)
    votes = Vote.objects.filter(participant=participant).count()
    assert votes == len(participant.plan) == 2
    page.go_back()  # to the last trial's page: asked of the server again, which sends the done page
    page.wait_for_load_state()
    assert page.url.endswith("/done") and page.locator("button.choice").count() == 0
    assert page.locator("#completion-code, #no-code").count() == 1
    # a vote sent from a stale trial page stores nothing and is sent to the done page
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    r = page.request.post(
        trial_url + "vote",
        data=json.dumps({"trial": participant.plan[0]["trial"], "choice": "right"}),
        headers={"Content-Type": "application/json", "X-CSRFToken": csrf, "Referer": trial_url},
    )
    assert r.ok and r.json()["done"] and r.json()["next"].endswith("/done") and not r.json()["stored"]
    assert "no-store" in r.headers["cache-control"]
    assert Vote.objects.filter(participant=participant).count() == votes


# --- 9: pilot link, manual exclusion, per-trial timings, plots ---------------------------------------
def add_votes(study, n_participants: int) -> list[Participant]:
    """Volunteers who voted on every regular trial, "a" over "base" and "b" mostly (written directly)."""
    people = []
    trials = list(study.trials.filter(is_gold=False).select_related("clip_a__system", "clip_b__system"))
    for i in range(n_participants):
        p = Participant.objects.create(study=study, ip_hash=f"{i}", ua_hash="x", prolific_pid=f"pid-{i}")
        for j, t in enumerate(trials):
            order = sorted([t.clip_a, t.clip_b], key=lambda c: {"a": 0, "b": 1, "base": 2}[c.system.label])
            chosen = order[0] if (i + j) % 4 else order[1]
            Vote.objects.create(participant=p, trial=t, choice="left", left=t.clip_a, chosen=chosen)
        people.append(p)
    return people


@pytest.mark.timeout(300)
def test_pilot_votes_are_kept_apart_exclusion_is_reversible_timings_are_stored_and_results_are_plotted(
    live_stack, transactional_db, page
):
    researcher = get_user_model().objects.create_user("rosa", password="a-long-password")
    study = make_study(researcher, live_stack.media, systems=("base", "a", "b"), trials_per_participant=3)
    people = add_votes(study, 4)
    counted = Vote.objects.filter(participant__in=people).count()

    # a pilot run through the preview link: the same flow, flagged, its votes with the page's timings
    page.goto(f"{live_stack.url}{study.pilot_url()}")
    assert page.is_visible("#pilot")
    page.check("#consent")
    page.click("#start")
    page.wait_for_selector("button.choice")
    assert page.is_visible("#pilot")
    page.wait_for_timeout(2500)  # both clips played through: the buttons are live
    screenshot(page, "volunteer-trial")
    vote_through(page)
    pilot = Participant.objects.get(study=study, pilot=True)
    timed = Vote.objects.filter(participant=pilot)
    assert timed.count() == len(pilot.plan) == 3
    for v in timed:
        # both clips played through first: the answer came a clip's length after the page started (the
        # onset is when both were first playing at once, later than that when a loaded machine stalls one)
        assert v.onset_ms is not None and v.reaction_ms > 0 and v.onset_ms + v.reaction_ms >= 1000
        assert v.plays >= 1 and v.hidden_count == 0 and v.hidden_ms == 0
    wrong = Participant.objects.filter(study=study).count()
    # (not rendered: DEBUG's 404 page has inline styles the CSP refuses)
    assert page.request.get(f"{live_stack.url}/s/{study.token}/pilot/{'0' * 24}/").status == 404
    assert Participant.objects.filter(study=study).count() == wrong

    log_in(page, live_stack.url, "rosa", "a-long-password")
    page.goto(f"{live_stack.url}/studies/{study.pk}/results/")
    wait_for(lambda: page.text_content("#live") == "live", timeout=30, what="the websocket")
    page.wait_for_load_state("networkidle")  # its first refresh of the summary is in
    assert "1 participant, 3 votes, kept apart" in " ".join(page.text_content("#pilot-summary").split())
    votes = lambda: sum(int(t) for t in page.locator("#pairs td.votes").all_text_contents())  # noqa: E731
    assert votes() == counted  # the pilot's votes are not in the counts
    # plots: each pair's win rate with its interval, each system's Bradley-Terry rating with its interval
    assert page.locator("svg#win-rates circle.point").count() == 3
    assert page.locator("svg#win-rates line.ci").count() == 3
    assert page.locator("svg#ratings circle.point").count() == 3
    screenshot(page, "study-results")
    for svg in ("#win-rates", "#ratings"):
        for line in page.locator(f"svg{svg} line.ci").all():
            x1, x2 = float(line.get_attribute("x1")), float(line.get_attribute("x2"))
            assert x1 <= x2 and math.isfinite(x1)

    # a manual exclusion: with a reason, in the analysis, and reversible
    row = page.locator(f"#people tr[data-participant='{people[0].token}']")
    row.locator("input[name=reason]").fill("answered in 0.2 s on every trial")
    with page.expect_navigation():
        row.locator("button.exclude").click()
    assert votes() == counted - people[0].votes.count()
    assert "excluded by the researcher: answered in 0.2 s" in page.text_content("#summary")
    row = page.locator(f"#people tr[data-participant='{people[0].token}']")
    with page.expect_navigation():
        row.locator("button.include").click()
    assert votes() == counted
    assert not Participant.objects.get(pk=people[0].pk).excluded

    # the CSV: pilot flagged, the timings per trial
    r = page.request.get(f"{live_stack.url}/studies/{study.pk}/votes.csv")
    rows = list(csv.DictReader(io.StringIO(r.text())))
    assert {"onset_ms", "reaction_ms", "plays", "hidden_count", "hidden_ms", "pilot"} <= set(rows[0])
    pilot_rows = [row for row in rows if row["participant"] == pilot.token]
    assert len(pilot_rows) == 3 and {row["pilot"] for row in pilot_rows} == {"1"}
    assert all(int(row["onset_ms"]) + int(row["reaction_ms"]) >= 1000 and int(row["plays"]) >= 1 for row in pilot_rows)
