"""The leaderboard page (every evaluated run of the user, base row marked, 95% intervals, CSV) and closed user
studies shown on a run's evaluation view. Evaluations carry results as `Evaluation.run` stores them."""

import csv
import io

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from webapp.experiments import jobs
from webapp.experiments.forms import validated_config
from webapp.experiments.models import Evaluation, Experiment

COLUMNS = ["temporal_flickering", "temporal_flickering_all", "dynamic_degree", "quality_score"]
LABELS = {
    "temporal_flickering": "exact (static filter)",
    "temporal_flickering_all": "exact (every video)",
    "dynamic_degree": "proxy (stands in for RAFT)",
    "quality_score": "not VBench's score: its formula over 2",
}


def cell(mean, lo, hi):
    return {"mean": mean, "ci95": [lo, hi], "better": 3, "worse": 1, "n": 4}


def evaluated(owner, name, checkpoint_values, ci, steps=20):
    e = Experiment.objects.create(owner=owner, name=name, status="finished", config=validated_config({}))
    result = {
        "columns": COLUMNS,
        "labels": LABELS,
        "suite": "builtin",
        "quality": {},
        "base": [None, 0.9700, 1.0, 0.80],
        "checkpoint": checkpoint_values,
        "static": {"base": [0, 4], "checkpoint": [0, 4]},
        "difference": [None, cell(checkpoint_values[1] - 0.97, *ci), cell(0.0, 0.0, 0.0), None],
    }
    Evaluation.objects.create(
        experiment=e,
        checkpoint="step_000060",
        prompts="heldout64",
        sampling_steps=steps,
        status="finished",
        result=result,
    )
    return e


def logged_in(user) -> Client:
    c = Client()
    c.force_login(user)
    return c


@pytest.fixture
def owner(db):
    return get_user_model().objects.create_user("researcher")


def test_the_leaderboard_lists_the_users_evaluated_runs_with_intervals_and_a_base_row(owner):
    evaluated(owner, "temporal", [None, 0.9733, 1.0, 0.81], (0.002, 0.004))
    evaluated(owner, "global", [None, 0.9690, 1.0, 0.79], (-0.002, 0.0))
    evaluated(get_user_model().objects.create_user("other"), "not-mine", [None, 0.5, 0.0, 0.1], (0, 0))
    html = logged_in(owner).get(reverse("experiments:leaderboard")).content.decode()
    assert "temporal" in html and "global" in html and "not-mine" not in html
    assert html.count('class="base-row"') == 1 and "(base)" in html
    assert "97.33" in html and "97.20 to 97.40" in html  # the base's 97.00 + the paired interval
    assert "proxy (stands in for RAFT)" in html and 'data-sort="number"' in html
    r = logged_in(owner).get(reverse("experiments:leaderboard") + "?format=csv")
    assert r["Content-Type"] == "text/csv"
    rows = list(csv.DictReader(io.StringIO(r.content.decode())))
    mine = [x for x in rows if x["run"] == "temporal" and x["dimension"] == "temporal_flickering_all"]
    assert mine[0]["value"] == "0.973300" and mine[0]["ci95_low"] == "0.972000" and mine[0]["is_base"] == "0"
    assert sum(x["is_base"] == "1" for x in rows) == len(COLUMNS) and not any(x["run"] == "not-mine" for x in rows)
    assert logged_in(owner).get(reverse("experiments:leaderboard") + "?format=xml").status_code == 400
    assert {(x["sampling_steps"], x["guidance"], x["flow_shift"]) for x in rows} == {("20", "4.0", "0.0")}


def test_runs_evaluated_with_other_sampling_steps_do_not_share_a_base_row(owner):
    """The base sampled at 6 steps is not the base sampled at 20: each sampling gets its own table."""
    evaluated(owner, "at-20", [None, 0.9733, 1.0, 0.81], (0.002, 0.004))
    evaluated(owner, "at-6", [None, 0.9610, 1.0, 0.70], (-0.002, 0.0), steps=6)
    html = logged_in(owner).get(reverse("experiments:leaderboard")).content.decode()
    assert html.count('class="base-row"') == 2
    assert "20 steps, CFG 4.0" in html and "6 steps, CFG 4.0" in html
    assert html.index("at-20") < html.index("6 steps, CFG 4.0") < html.index("at-6") or html.index("at-6") < html.index(
        "20 steps, CFG 4.0"
    ) < html.index("at-20")


def test_a_closed_study_of_a_run_shows_on_its_evaluation_view(owner, tmp_path, settings):
    from tests.test_web_studies import make_study
    from webapp.studies.models import Participant, StudyStatus, Vote

    settings.MEDIA_ROOT = tmp_path
    e = evaluated(owner, "tuned-run", [None, 0.9733, 1.0, 0.81], (0.002, 0.004))
    study = make_study(owner, tmp_path, systems=("base", "tuned", "third"))
    tuned = study.systems.get(label="tuned")
    tuned.experiment, tuned.checkpoint = e, "step_000060"
    tuned.save()
    trials = [t for t in study.trials.select_related("clip_a__system", "clip_b__system") if not t.is_gold]
    for i in range(12):
        p = Participant.objects.create(study=study, ip_hash=f"ip{i}", ua_hash="ua")
        for t in trials:
            winner = t.clip_a if t.clip_a.system.label == "tuned" or i % 3 == 0 else t.clip_b
            Vote.objects.create(participant=p, trial=t, choice="a", left=t.clip_a, chosen=winner)
    page = logged_in(owner).get(reverse("experiments:detail", args=[e.pk])).content.decode()
    assert "User studies of this run" not in page  # open studies are not results yet
    study.status = StudyStatus.CLOSED
    study.save()
    page = logged_in(owner).get(reverse("experiments:detail", args=[e.pk])).content.decode()
    assert "User studies of this run" in page and "Wilson 95% interval" in page and "Bradley" in page
    assert "tuned vs" in page or "vs tuned" in page


def test_an_official_vbench_evaluation_goes_to_queue_vbench_and_fails_clearly_without_weights(
    owner, tmp_path, monkeypatch
):
    from webapp.celery import app

    route = app.amqp.router.route({}, "worker.tasks.evaluate_checkpoint_vbench")
    assert route["queue"].name == "vbench"
    assert app.amqp.router.route({}, "worker.tasks.evaluate_checkpoint")["queue"].name == "gpu"
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("VBENCH_PYTHON", "/bin/true")
    e = Experiment.objects.create(owner=owner, name="r", status="finished", config=validated_config({}))
    ev = Evaluation.objects.create(experiment=e, checkpoint="step_000001", prompts="demo", suite="vbench")
    jobs.evaluate(ev.pk)  # what the vbench worker's task calls
    ev.refresh_from_db()
    assert ev.status == "failed" and "dino_vitbase16_pretrain.pth" in ev.error and "vpo vbench check" in ev.error


@pytest.mark.django_db(transaction=True)
def test_evaluations_made_before_they_said_their_sampling_get_their_run_s_steps_and_cfg():
    """Migration 0010: an evaluation from before sampled at its run's sampling_steps and guidance."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before, after = [("experiments", "0009_job_heartbeat")], [("experiments", "0010_evaluation_sampling")]
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    try:
        executor.migrate(before)
        old = executor.loader.project_state(before).apps
        user = old.get_model("auth", "User").objects.create(username="then")
        run = old.get_model("experiments", "Experiment").objects.create(
            owner=user, name="6-step run", config={"backbone": "tiny", "sampling_steps": 6, "guidance": 5.0}
        )
        evaluation = old.get_model("experiments", "Evaluation").objects.create(experiment=run, checkpoint="step_1")
        executor = MigrationExecutor(connection)
        executor.migrate(after)
        new = executor.loader.project_state(after).apps
        migrated = new.get_model("experiments", "Evaluation").objects.get(pk=evaluation.pk)
        assert (migrated.sampling_steps, migrated.guidance) == (6, 5.0)
    finally:
        MigrationExecutor(connection).migrate(latest)
