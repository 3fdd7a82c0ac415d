"""2AFC studies on the real database and Redis: the volunteer flow, its integrity, the results,
and who may see what."""

import csv
import io
import json
import re
import time

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.test import Client
from django.urls import reverse

from webapp.studies.models import Clip, Participant, Study, StudyStatus, System, Vote
from webapp.studies.results import summarise, votes_csv

PROMPTS = ["a red ball moving right", "a blue square falling"]


def make_study(owner, media, systems=("base", "tuned"), **kw) -> Study:
    """A study whose clips are written directly (the render task is tested with the real worker)."""
    from vpo.data import world
    from vpo.studies import degrade

    study = Study.objects.create(
        owner=owner,
        name="s",
        prompts="\n".join(PROMPTS),
        status=StudyStatus.OPEN,
        trials_per_participant=kw.pop("trials_per_participant", 4),
        gold_rate=0.25,
        **kw,
    )
    for label in systems:
        system = System.objects.create(study=study, label=label)
        for i, prompt in enumerate(PROMPTS):
            video = world.sample_scene(i).render()
            Clip(study=study, system=system, prompt=prompt, seed=i).save_video(video, 8)
            Clip(study=study, system=system, prompt=prompt, seed=i, degraded=True).save_video(degrade(video, i), 8)
    study.build_trials()
    return study


@pytest.fixture(autouse=True)
def instant_votes(settings):
    """These tests vote the moment a participant joins, often without loading the trial page, to
    test the vote's integrity, not its pacing: the minimum watch time is off unless a test sets
    VPO_MIN_WATCH_FRACTION itself (the bot and watch-time tests below)."""
    settings.VPO_MIN_WATCH_FRACTION = 0


@pytest.fixture
def owner(db):
    return get_user_model().objects.create_user("researcher")


@pytest.fixture
def study(owner, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path
    return make_study(owner, tmp_path)


def join(client, study, **prolific) -> Participant:
    query = "&".join(f"{k}={v}" for k, v in prolific.items())
    client.get(reverse("studies:welcome", args=[study.token]) + (f"?{query}" if query else ""))
    fields = {
        "prolific_pid": prolific.get("PROLIFIC_PID", ""),
        "prolific_study_id": prolific.get("STUDY_ID", ""),
        "prolific_session_id": prolific.get("SESSION_ID", ""),
    }
    r = client.post(reverse("studies:welcome", args=[study.token]), {"consent": "1", **fields})
    assert r.status_code == 302, r.content
    return Participant.objects.get(token=r["Location"].rstrip("/").split("/")[-1])


def altered(token: str) -> str:
    """``token`` with its last character changed (to "x", or "y" if it was an "x")."""
    return token[:-1] + ("y" if token.endswith("x") else "x")


def cast(client, study, participant, trial, choice):
    return client.post(
        reverse("studies:vote", args=[study.token, participant.token]),
        json.dumps({"trial": trial, "choice": choice}),
        content_type="application/json",
    )


def answer_all(client, study, participant, good=True, side="left"):
    """Vote through the plan: gold trials right (or wrong), the rest on ``side``."""
    last = None
    for item in participant.plan:
        if item["gold"]:
            choice = (
                ("left" if item["left"] == item["good"] else "right")
                if good
                else ("right" if item["left"] == item["good"] else "left")
            )
        else:
            choice = side
        last = cast(client, study, participant, item["trial"], choice)
        assert last.status_code == 200, last.content
    return last


def test_a_volunteer_votes_through_every_trial_and_gets_the_code_only_at_the_end(study):
    client = Client()
    p = join(client, study, PROLIFIC_PID="pid1", STUDY_ID="st", SESSION_ID="se")
    assert (p.prolific_pid, p.prolific_study_id, p.prolific_session_id) == ("pid1", "st", "se")
    assert len(p.plan) == 3 and sum(i["gold"] for i in p.plan) == 1  # 2 pairwise trials + 1 gold
    done = reverse("studies:done", args=[study.token, p.token])
    assert client.get(done)["Location"].endswith(f"/p/{p.token}/")  # no code before the last vote
    page = client.get(reverse("studies:trial", args=[study.token, p.token])).content.decode()
    assert "disabled" in page and ".mp4" in page
    assert "base" not in page and "tuned" not in page  # nothing on the page names a system
    last = answer_all(client, study, p)
    assert last.json()["done"] and last.json()["next"] == done
    page = client.get(done).content.decode()
    p.refresh_from_db()
    assert p.completed is not None and not p.excluded
    assert len(p.completion_code) == 8 and p.completion_code in page  # a code of their own...
    other = Client()
    q = join(other, study)
    answer_all(other, study, q)
    q.refresh_from_db()
    assert q.completion_code and q.completion_code != p.completion_code  # ...not one per study
    assert p.completion_code in votes_csv(study)  # the researcher checks codes against the CSV


def test_a_double_click_or_replay_stores_one_vote_and_gets_the_same_answer(study):
    client = Client()
    p = join(client, study)
    trial = p.plan[0]["trial"]
    first = cast(client, study, p, trial, "left").json()
    again = cast(client, study, p, trial, "right").json()  # a replay with another choice
    assert first == again
    assert Vote.objects.filter(participant=p).count() == 1
    assert Vote.objects.get(participant=p).choice == "left"  # the first vote stands


def test_one_vote_per_participant_and_trial_is_a_database_constraint(study):
    p = join(Client(), study)
    item = p.plan[0]
    Vote.objects.create(
        participant=p, trial_id=item["trial"], choice="left", left_id=item["left"], chosen_id=item["left"]
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        Vote.objects.create(participant=p, trial_id=item["trial"], choice="tie", left_id=item["left"])


def test_sides_are_randomised_per_trial_and_stored_with_the_vote(study):
    lefts = set()
    for _ in range(12):
        p = join(Client(), study)
        lefts |= {(i["trial"], i["left"]) for i in p.plan if not i["gold"]}
    trials = {t for t, _ in lefts}
    assert len(lefts) == 2 * len(trials)  # each trial was shown both ways round
    client = Client()
    p = join(client, study)
    cast(client, study, p, p.plan[0]["trial"], "right")
    vote = Vote.objects.get(participant=p)
    assert vote.left_id == p.plan[0]["left"] and vote.chosen_id == p.plan[0]["right"]


def test_failing_a_gold_trial_excludes_the_volunteer_who_is_kept_not_deleted(study):
    client = Client()
    p = join(client, study)
    answer_all(client, study, p, good=False)
    p.refresh_from_db()
    assert p.excluded and "failed gold trial" in p.exclusion_reason
    summary = summarise(study)
    assert summary["votes"] == 0 and len(summary["excluded"]) == 1  # their votes do not count...
    assert Vote.objects.filter(participant=p).count() == 3  # ...but are kept
    assert votes_csv(study).count("\n") == 1 + 3  # and exported, flagged


def test_leaving_and_coming_back_resumes_where_the_volunteer_stopped(study):
    client = Client()
    p = join(client, study)
    cast(client, study, p, p.plan[0]["trial"], "left")
    again = client.get(reverse("studies:welcome", args=[study.token]))  # the same browser (cookie)
    assert again["Location"].endswith(f"/p/{p.token}/")
    page = client.get(again["Location"])
    assert page.context["trial_id"] == p.plan[1]["trial"] and page.context["answered"] == 1
    first_browser = Client()
    first = join(first_browser, study, PROLIFIC_PID="pid9")
    assert join(first_browser, study, PROLIFIC_PID="pid9") == first  # the same browser carries on


def test_ip_and_user_agent_are_stored_only_hashed(study):
    client = Client(HTTP_USER_AGENT="Mozilla/5.0 test-agent", REMOTE_ADDR="10.1.2.3")
    p = join(client, study)
    assert "10.1.2.3" not in p.ip_hash and len(p.ip_hash) == 64
    assert p.ip_hash == study.hashed("10.1.2.3") and p.ua_hash == study.hashed("Mozilla/5.0 test-agent")


def test_behind_proxies_the_address_kept_is_the_one_the_outermost_proxy_saw(study, settings):
    # X-Forwarded-For: what the client claimed, then what each proxy saw (nginx appends)
    forwarded = "6.6.6.6, 203.0.113.9, 10.0.0.5"
    for proxies, seen in ((0, "10.9.9.9"), (1, "10.0.0.5"), (2, "203.0.113.9")):
        settings.VPO_PROXIES = proxies
        p = join(Client(REMOTE_ADDR="10.9.9.9", HTTP_X_FORWARDED_FOR=forwarded), study)
        assert p.ip_hash == study.hashed(seen), proxies


def test_rate_limits_per_participant_answer_429(study, settings):
    import redis

    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    settings.STUDY_RATE_LIMITS = {**settings.STUDY_RATE_LIMITS, "vote_participant": (2, 60)}
    client = Client()
    p = join(client, study)
    assert cast(client, study, p, p.plan[0]["trial"], "left").status_code == 200
    assert cast(client, study, p, p.plan[1]["trial"], "left").status_code == 200
    r = cast(client, study, p, p.plan[2]["trial"], "left")
    assert r.status_code == 429 and "slow down" in r.json()["error"]
    assert Vote.objects.filter(participant=p).count() == 2


def test_results_count_votes_per_pair_with_the_statistics(owner, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path
    study = make_study(owner, tmp_path, systems=("base", "a", "b"), trials_per_participant=8)
    for _ in range(5):
        client = Client()
        answer_all(client, study, join(client, study), side="left")
    summary = summarise(study, bootstrap=50)
    assert summary["participants"] == summary["completed"] == 5
    counted = Vote.objects.filter(trial__is_gold=False).count()
    assert summary["votes"] == counted == sum(p["votes"] for p in summary["pairs"])
    assert summary["bias"]["left"] == counted and summary["bias"]["biased"]  # always-left voters
    assert [r["system"] for r in summary["ratings"]] and summary["anchor"] == "base"
    assert {r["system"]: r["rating"] for r in summary["ratings"]}["base"] == 0.0


def test_a_closed_study_says_so(study):
    client = Client()
    p = join(client, study)
    study.status = StudyStatus.CLOSED
    study.save()
    r = Client().get(reverse("studies:welcome", args=[study.token]))
    assert r.status_code == 410 and "closed" in r.content.decode()
    assert client.get(reverse("studies:trial", args=[study.token, p.token])).status_code == 410
    assert cast(client, study, p, p.plan[0]["trial"], "left").status_code == 410


def test_guessed_or_altered_tokens_get_404(study):
    client = Client()
    p = join(client, study)
    clip = Clip.objects.filter(study=study).first()
    other = make_study(study.owner, None)
    for url in (
        reverse("studies:welcome", args=[altered(study.token)]),
        reverse("studies:trial", args=[study.token, altered(p.token)]),
        reverse("studies:trial", args=[other.token, p.token]),  # a real participant, another study
        reverse("studies:clip", args=[study.token, altered(clip.token)]),
        reverse("studies:clip", args=[other.token, clip.token]),
    ):
        assert client.get(url).status_code == 404, url
    assert client.get(reverse("studies:clip", args=[study.token, clip.token])).status_code == 200
    trial = p.plan[0]["trial"]
    for wrong in (Participant(token=altered(p.token)), Participant(token=study.token)):
        assert cast(client, study, wrong, trial, "left").status_code == 404
    assert cast(client, other, p, trial, "left").status_code == 404  # a real participant, another study
    assert not Vote.objects.exists()
    assert cast(client, study, p, trial, "left").status_code == 200


def test_the_vote_endpoints_participant_loads_only_what_a_vote_needs_and_the_rest_on_access(study):
    p = join(Client(), study, PROLIFIC_PID="pid-7")
    Study.objects.filter(pk=study.pk).update(allow_tie=False)
    light = Participant.for_vote(study.token, p.token)
    assert (light.pk, light.plan, light.completed, light.study.pk, light.study.status, light.study.allow_tie) == (
        p.pk,
        p.plan,
        None,
        study.pk,
        StudyStatus.OPEN,
        False,
    )
    assert not light._state.adding and light.study_id == study.pk
    assert light.get_deferred_fields() >= {"prolific_pid", "ip_hash"}
    assert light.prolific_pid == "pid-7" and light.study.name == study.name  # loaded on access
    assert Participant.for_vote(study.token, altered(p.token)) is None


def test_volunteers_cannot_reach_results_and_researchers_see_only_their_own(study):
    volunteer = Client()
    join(volunteer, study)
    for name in ("detail", "results", "results_json", "csv"):
        r = volunteer.get(reverse(f"studies:{name}", args=[study.pk]))
        if name == "results_json":  # a data endpoint answers 401 JSON, not the login page
            assert r.status_code == 401 and r.json()["login"] == "/accounts/login/", name
            continue
        assert r.status_code == 302 and "/accounts/login/" in r["Location"], name
    stranger = Client()
    stranger.force_login(get_user_model().objects.create_user("other-researcher"))
    for name in ("detail", "results", "results_json", "csv", "progress"):
        assert stranger.get(reverse(f"studies:{name}", args=[study.pk])).status_code == 404, name
    assert stranger.post(reverse("studies:manage", args=[study.pk]), {"action": "close"}).status_code == 404
    assert reverse("studies:detail", args=[study.pk]) not in stranger.get(reverse("studies:list")).content.decode()


def test_the_owner_closes_and_reopens_and_changes_the_plan_size(study, owner):
    client = Client()
    client.force_login(owner)
    client.post(reverse("studies:manage", args=[study.pk]), {"action": "close"})
    study.refresh_from_db()
    assert study.status == "closed"
    client.post(reverse("studies:manage", args=[study.pk]), {"action": "reopen"})
    client.post(
        reverse("studies:manage", args=[study.pk]),
        {"action": "settings", "trials_per_participant": 2, "votes_per_trial": 9},
    )
    study.refresh_from_db()
    assert (study.status, study.trials_per_participant, study.votes_per_trial) == ("open", 2, 9)
    assert len(join(Client(), study).plan) == 2


def test_degraded_gold_clips_are_visibly_worse():
    from vpo.data import world
    from vpo.rewards import load_reward
    from vpo.studies import degrade

    clean = world.sample_scene(3).render()
    scores = load_reward("metrics").score(np.stack([clean, degrade(clean, 0)]), ["x", "x"]).scores
    assert scores["temporal"][0] > scores["temporal"][1] + 0.2 and scores["visual"][0] > scores["visual"][1]


# --- the volunteer checks done on the server (bots, watch time, completion codes, Prolific ids) ---


def clip_urls(page: str) -> list[str]:
    return re.findall(r'<video id="(?:left|right)" src="([^"]+)"', page)


def probed_size(client, url) -> int:
    """What a bot learns from ``Range: bytes=0-0``: the file's total size."""
    r = client.get(url, HTTP_RANGE="bytes=0-0")
    assert r.status_code == 206
    return int(r["Content-Range"].rsplit("/", 1)[1])


def bot(client, study, wait: float = 0.0) -> tuple[Participant, list[int]]:
    """A scripted participant: loads each trial page, probes both clips' sizes, picks the smaller
    one (the degraded gold copy is noise, which encodes larger) and votes after ``wait`` seconds.
    Returns the participant and the status of every vote."""
    p = join(client, study)
    statuses = []
    for _ in range(len(p.plan) + 2):
        page = client.get(reverse("studies:trial", args=[study.token, p.token]))
        if page.status_code != 200:
            break
        left, right = (probed_size(client, url) for url in clip_urls(page.content.decode()))
        time.sleep(wait)
        r = cast(client, study, p, page.context["trial_id"], "left" if left <= right else "right")
        statuses.append(r.status_code)
        if r.status_code != 200:
            break
    p.refresh_from_db()
    return p, statuses


def test_a_bot_voting_without_watching_is_refused_and_never_sees_a_code(study, settings):
    settings.VPO_MIN_WATCH_FRACTION = 1.0  # the production setting
    client = Client()
    p, statuses = bot(client, study)
    assert statuses == [409]  # the first vote came right after the page: refused
    assert not Vote.objects.filter(participant=p).exists()
    assert "watch both videos" in cast(client, study, p, p.plan[0]["trial"], "left").json()["error"]
    # a trial whose page was never served is refused too, however long after joining
    assert cast(client, study, p, p.plan[1]["trial"], "left").status_code == 409
    done = client.get(reverse("studies:done", args=[study.token, p.token]))
    assert done.status_code == 302 and not p.completion_code  # no code before the last vote


def test_gold_clips_cannot_be_told_apart_by_size_so_a_bot_that_waits_fails_them(study, settings):
    settings.VPO_MIN_WATCH_FRACTION = 0.1  # clips of 2 s: a bot that waits 0.2 s per trial is let through
    client = Client()
    sizes = {probed_size(client, clip.url()) for clip in Clip.objects.filter(study=study)}
    assert len(sizes) == 1  # every clip, clean or degraded, has one size
    for clip in Clip.objects.filter(study=study):
        r = client.get(clip.url())
        assert r["Content-Length"] == str(*sizes)
        assert not r.has_header("Last-Modified") and not r.has_header("ETag")
    # the size says nothing, so the bot's pick on a gold trial is a coin flip: one that met the
    # degraded clip on the side it picks on a tie is excluded, and gets no code
    for _ in range(30):
        p, statuses = bot(Client(), study, wait=0.25)
        assert set(statuses) == {200}  # it waited, so its votes count...
        if p.excluded:
            break
    assert p.excluded and "failed gold trial" in p.exclusion_reason
    assert p.completed is not None and p.completion_code == ""
    page = Client().get(reverse("studies:done", args=[study.token, p.token]))
    assert page.status_code == 200 and "completion-code" not in page.content.decode()
    assert "did not pass" in page.content.decode()


def test_a_volunteer_votes_once_the_clips_had_time_to_play_and_a_reload_does_not_reset_the_clock(study, settings):
    settings.VPO_MIN_WATCH_FRACTION = 0.5  # clips of 2 s: 1 s
    client = Client()
    p = join(client, study)
    url = reverse("studies:trial", args=[study.token, p.token])
    served = time.monotonic()
    trial = client.get(url).context["trial_id"]
    assert cast(client, study, p, trial, "left").status_code == 409
    time.sleep(0.6)
    client.get(url)  # a reload half-way: the wait still counts from the first serve
    time.sleep(max(0.0, served + 1.05 - time.monotonic()))
    first = cast(client, study, p, trial, "left")
    assert first.status_code == 200
    nxt = client.get(url).context["trial_id"]
    assert cast(client, study, p, trial, "right").json() == first.json()  # a replay is answered as before
    assert cast(client, study, p, nxt, "left").status_code == 409  # the next trial has its own clock


def test_a_prolific_id_is_bound_to_the_browser_that_first_used_it(study):
    first = Client()
    p = join(first, study, PROLIFIC_PID="pid-1")
    cast(first, study, p, p.plan[0]["trial"], "left")
    thief = Client()
    thief.get(reverse("studies:welcome", args=[study.token]) + "?PROLIFIC_PID=pid-1")
    r = thief.post(reverse("studies:welcome", args=[study.token]), {"consent": "1", "prolific_pid": "pid-1"})
    assert r.status_code == 409 and "already taking part" in r.content.decode()
    assert Participant.objects.filter(study=study).count() == 1
    assert join(first, study, PROLIFIC_PID="pid-1") == p  # the first browser carries on


def test_votes_csv_escapes_cells_a_spreadsheet_would_run_as_formulas(study):
    client = Client()
    p = join(client, study, PROLIFIC_PID='=HYPERLINK("http://x")', STUDY_ID="@SUM(A1)", SESSION_ID="+1-2")
    cast(client, study, p, p.plan[0]["trial"], "left")
    rows = list(csv.DictReader(io.StringIO(votes_csv(study))))
    assert rows[0]["prolific_pid"] == '\'=HYPERLINK("http://x")'
    assert rows[0]["prolific_study_id"] == "'@SUM(A1)" and rows[0]["prolific_session_id"] == "'+1-2"
    assert rows[0]["participant"] == p.token  # the app's own values are not altered
    for row in rows:
        assert not any(v.startswith(("=", "+", "-", "@")) for k, v in row.items() if k != "participant")


def test_malformed_vote_bodies_get_400(study):
    client = Client()
    p = join(client, study)
    url = reverse("studies:vote", args=[study.token, p.token])
    for body in ("[1, 2]", '"left"', "3", "null", "{", json.dumps({"trial": 10**30, "choice": "left"})):
        r = client.post(url, body, content_type="application/json")
        assert r.status_code == 400, body
    assert not Vote.objects.exists()


def test_a_closed_studys_clips_are_served_only_to_its_owner(study, owner):
    clip = Clip.objects.filter(study=study).first()
    volunteer = Client()
    assert volunteer.get(clip.url()).status_code == 200
    Study.objects.filter(pk=study.pk).update(status=StudyStatus.CLOSED)
    assert volunteer.get(clip.url()).status_code == 404
    stranger = Client()
    stranger.force_login(get_user_model().objects.create_user("someone-else"))
    assert stranger.get(clip.url()).status_code == 404
    researcher = Client()
    researcher.force_login(owner)
    assert researcher.get(clip.url()).status_code == 200


def test_a_study_seed_outside_int32_is_a_form_error(owner):
    from webapp.studies.forms import StudyForm

    for seed in (2**31, -(2**31) - 1, 10**30):
        form = StudyForm(
            {
                "name": "s",
                "systems": ["base", "base"],
                "prompt_set": "demo",
                "prompt_limit": 2,
                "videos_per_prompt": 1,
                "seed": seed,
                "question": "q",
                "gold_rate": 0.1,
                "votes_per_trial": 1,
                "trials_per_participant": 2,
            },
            user=owner,
        )
        assert not form.is_valid() and "seed" in form.errors, seed


# --- gold trials per volunteer, stale votes, pilots, manual exclusion, per-trial timings (issue 18) ---


def test_every_volunteer_gets_at_least_one_gold_trial_when_the_rate_is_above_zero(owner, tmp_path, settings):
    from webapp.studies.models import gold_trials

    assert [gold_trials(4, 0.1), gold_trials(10, 0.25), gold_trials(10, 0.1), gold_trials(2, 0.5)] == [1, 3, 1, 1]
    assert gold_trials(4, 0.0) == 0 and gold_trials(1, 0.5) == 0  # no rate, or no room for a comparison
    settings.MEDIA_ROOT = tmp_path
    study = make_study(owner, tmp_path, trials_per_participant=4)
    Study.objects.filter(pk=study.pk).update(gold_rate=0.1)
    study.refresh_from_db()
    assert sum(i["gold"] for i in join(Client(), study).plan) == 1  # round(4 x 0.1) = 0 before


def test_the_study_form_wants_two_trials_per_volunteer_with_gold_trials(owner):
    from webapp.studies.forms import StudyForm

    data = {
        "name": "s",
        "systems": ["base", "base"],
        "prompt_set": "demo",
        "prompt_limit": 2,
        "videos_per_prompt": 1,
        "seed": 0,
        "question": "q",
        "votes_per_trial": 1,
        "trials_per_participant": 1,
    }
    form = StudyForm({**data, "gold_rate": 0.1}, user=owner)
    assert not form.is_valid() and "two or more trials" in form.errors["trials_per_participant"][0]
    form = StudyForm({**data, "gold_rate": 0}, user=owner)
    form.is_valid()
    assert "trials_per_participant" not in form.errors


def test_a_vote_after_the_last_one_stores_nothing_and_answers_with_the_done_page(study):
    client = Client()
    p = join(client, study)
    answer_all(client, study, p)
    stale = cast(client, study, p, p.plan[0]["trial"], "right").json()
    assert stale["done"] and stale["next"].endswith("/done") and not stale["stored"]
    assert Vote.objects.filter(participant=p).count() == len(p.plan)
    for url in (
        reverse("studies:welcome", args=[study.token]),
        reverse("studies:trial", args=[study.token, p.token]),
        reverse("studies:done", args=[study.token, p.token]),
    ):
        assert "no-store" in client.get(url)["Cache-Control"], url


def test_pilot_votes_are_kept_apart_from_the_results(study, owner):
    client = Client()
    r = client.get(study.pilot_url())
    assert r.status_code == 200 and "Pilot run" in r.content.decode()
    assert Client().get(reverse("studies:pilot", args=[study.token, altered(study.pilot_key())])).status_code == 404
    r = client.post(study.pilot_url(), {"consent": "1", "prolific_pid": "pid-x"})
    pilot = Participant.objects.get(token=r["Location"].rstrip("/").split("/")[-1])
    assert pilot.pilot and pilot.prolific_pid == ""  # a pilot never takes a real volunteer's Prolific id
    answer_all(client, study, pilot)
    real = Client()
    answer_all(real, study, join(real, study))
    summary = summarise(study, bootstrap=10)
    assert summary["pilot"] == {"participants": 1, "votes": 3}
    assert summary["participants"] == 1 and summary["votes"] == 2  # only the real volunteer's
    rows = list(csv.DictReader(io.StringIO(votes_csv(study))))
    assert sorted(row["pilot"] for row in rows) == ["0", "0", "0", "1", "1", "1"]
    # the real link in the same browser is a new participant, not the pilot's
    assert join(client, study) != pilot


def test_a_manual_exclusion_has_a_reason_is_shown_and_can_be_taken_back(study, owner):
    researcher = Client()
    researcher.force_login(owner)
    client = Client()
    p = join(client, study)
    answer_all(client, study, p)
    url = reverse("studies:exclusion", args=[study.pk, p.token])
    assert researcher.post(url, {"action": "exclude"}).status_code == 400  # no reason: refused
    assert researcher.post(url, {"action": "exclude", "reason": "answered blind"}).status_code == 302
    summary = summarise(study, bootstrap=10)
    assert summary["votes"] == 0 and summary["excluded"][0]["reason"] == "excluded by the researcher: answered blind"
    assert "answered blind" in researcher.get(reverse("studies:results", args=[study.pk])).content.decode()
    researcher.post(url, {"action": "include"})
    assert summarise(study, bootstrap=10)["votes"] == 2 and not summarise(study)["excluded"]
    # taking back a manual exclusion leaves a failed gold trial's in place
    other = Client()
    q = join(other, study)
    answer_all(other, study, q, good=False)
    url = reverse("studies:exclusion", args=[study.pk, q.token])
    researcher.post(url, {"action": "exclude", "reason": "x"})
    researcher.post(url, {"action": "include"})
    q.refresh_from_db()
    assert q.excluded and "failed gold trial" in q.exclusion_reason
    stranger = Client()
    stranger.force_login(get_user_model().objects.create_user("not-the-owner"))
    assert stranger.post(url, {"action": "include"}).status_code == 404


def test_each_vote_keeps_the_trial_pages_timings_and_the_csv_has_them(study):
    client = Client()
    p = join(client, study)
    url = reverse("studies:vote", args=[study.token, p.token])
    timing = {"onset_ms": 420, "reaction_ms": 2600, "plays": 2, "hidden_count": 1, "hidden_ms": 300}
    bad = client.post(url, json.dumps({"trial": p.plan[0]["trial"], "choice": "left", "plays": -1}), "application/json")
    assert bad.status_code == 400 and not Vote.objects.exists()
    r = client.post(url, json.dumps({"trial": p.plan[0]["trial"], "choice": "left", **timing}), "application/json")
    assert r.status_code == 200
    vote = Vote.objects.get(participant=p)
    assert {k: getattr(vote, k) for k in timing} == timing
    cast(client, study, p, p.plan[1]["trial"], "left")  # a vote without timings: nulls
    rows = list(csv.DictReader(io.StringIO(votes_csv(study))))
    assert {k: rows[0][k] for k in timing} == {k: str(v) for k, v in timing.items()}
    assert {k: rows[1][k] for k in timing} == dict.fromkeys(timing, "")
