"""No run is ever stranded: the faults of issue 13 injected into real processes (a Celery worker in
the solo pool, as command A runs it, PostgreSQL, Redis), each followed to the run's end. Every
test measures how long the product took to recover; the figures are in docs/reliability.md."""

import os
import signal
import subprocess
import time
import uuid
from datetime import timedelta

import pytest
import redis
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tests.conftest import Process, free_port, subprocess_database_url
from tests.test_worker_shutdown import start_worker, tiny_run, wait_for
from webapp.celery import app, prefix
from webapp.experiments.forms import validated_config
from webapp.experiments.models import Experiment, MetricPoint
from webapp.experiments.tasks import train_experiment

STEPS = 4


@pytest.fixture
def run(transactional_db, tmp_path, settings):
    """A queued tiny run on a queue of its own, and the environment of its workers: fast heartbeat
    and reaper (the defaults are 10 s, 60 s and 30 s) and a database application name of their own."""
    settings.MEDIA_ROOT = tmp_path
    owner = get_user_model().objects.create_user("alice")
    queue = f"stranded-{uuid.uuid4().hex[:8]}"
    experiment = Experiment.objects.create(
        owner=owner,
        name="stranded?",
        queue=queue,
        config=tiny_run(STEPS, checkpoint_every=1),
    )
    app_name = f"vpo-test-{queue}"
    env = {
        **os.environ,
        "DATABASE_URL": subprocess_database_url(),
        "MEDIA_ROOT": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
        "VPO_HEARTBEAT_S": "1",
        "VPO_HEARTBEAT_TIMEOUT_S": "6",
        "VPO_REAPER_INTERVAL_S": "2",
        "VPO_DB_APPLICATION_NAME": app_name,
    }
    return type("Run", (), {"experiment": experiment, "queue": queue, "env": env, "app_name": app_name})


def steps_of(experiment) -> list[int]:
    return list(MetricPoint.objects.filter(experiment=experiment).order_by("step").values_list("step", flat=True))


def finished(experiment, worker: Process, timeout: float) -> float:
    """Waits for the run to end; asserts it finished with every step exactly once; returns when."""
    wait_for(
        lambda: Experiment.objects.get(pk=experiment.pk).status not in ("queued", "running", "paused"),
        timeout,
        "the run ended",
        worker,
    )
    ended = time.time()
    experiment.refresh_from_db()
    assert (experiment.status, experiment.error) == ("finished", ""), "".join(worker.lines[-40:])
    assert steps_of(experiment) == list(range(1, STEPS + 1)), "no step lost, none logged twice"
    assert experiment.checkpoints()[-1] == f"step_{STEPS:06d}"
    return ended


def terminate_backends(app_name: str) -> int:
    """pg_terminate_backend on the worker's connections: only those of the test database, only
    those of the worker's own application name, never this test's own connection."""
    with connection.cursor() as c:
        c.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s AND pid <> pg_backend_pid()",
            [app_name],
        )
        return c.fetchone()[0]


def test_postgres_connections_terminated_mid_run_the_run_still_finishes(run):
    if connection.vendor != "postgresql":
        pytest.skip("pg_terminate_backend needs PostgreSQL (CI runs on it)")
    e = run.experiment
    train_experiment.apply_async((e.pk,), queue=run.queue)
    worker = start_worker(run.queue, "solo", run.env)
    try:
        killed = []
        for at in (1, 2):  # twice: the fresh connection of the first retry is dropped too
            wait_for(
                lambda at=at: MetricPoint.objects.filter(experiment=e, step__gte=at).exists(), 300, "a step", worker
            )
            killed.append(terminate_backends(run.app_name))
        t0 = time.time()
        ended = finished(e, worker, 300)
    finally:
        worker.stop()
    assert all(killed), f"the worker's connections were found and terminated each time: {killed}"
    log = "".join(worker.lines)
    assert "database connection lost" in log, log[-3000:]
    print(f"\nterminated {killed} backends; the run finished {ended - t0:.1f} s after the second time")


def test_a_worker_killed_in_the_solo_pool_is_resumed_by_a_new_worker_within_two_minutes(run):
    e = run.experiment
    train_experiment.apply_async((e.pk,), queue=run.queue)
    first = start_worker(run.queue, "solo", run.env, name=f"first-{run.queue}@%h")
    try:
        wait_for(lambda: MetricPoint.objects.filter(experiment=e, step__gte=2).exists(), 300, "two steps", first)
        first.proc.send_signal(signal.SIGKILL)
        killed = time.time()
        first.proc.wait(30)
    finally:
        first.stop()
    e.refresh_from_db()
    assert e.status == "running" and e.worker.startswith("first-")
    done = steps_of(e)
    # Cancel would not end it yet: its heartbeat is fresh (the reaper waits VPO_HEARTBEAT_TIMEOUT_S)
    second = start_worker(run.queue, "solo", run.env, name=f"second-{run.queue}@%h")  # another name, another host
    try:
        wait_for(
            lambda: MetricPoint.objects.filter(experiment=e, step__gt=done[-1]).exists(),
            120 - (time.time() - killed),
            "a new worker resumed the run within 2 minutes of the kill",
            second,
        )
        resumed = time.time()
        ended = finished(e, second, 300)
    finally:
        second.stop()
    log = "".join(second.lines)
    assert "lost its worker first-" in log and "resume" not in e.error, log[-3000:]
    print(
        f"\nkilled after step {done[-1]}; resumed {resumed - killed:.1f} s later; finished {ended - killed:.1f} s after"
    )


def test_cancel_ends_at_once_a_run_whose_worker_is_gone(transactional_db):
    owner = get_user_model().objects.create_user("alice")
    stale = timezone.now() - timedelta(hours=1)
    gone = Experiment.objects.create(owner=owner, name="gone", config={}, status="running", heartbeat=stale)
    alive = Experiment.objects.create(owner=owner, name="alive", config={}, status="running", heartbeat=timezone.now())
    for e in (gone, alive):
        e.request_cancel()
        e.refresh_from_db()
    assert (gone.status, gone.cancel_requested, gone.finished is not None) == ("cancelled", True, True)
    assert (alive.status, alive.cancel_requested) == ("running", True)  # its loop stops at the next step


def redis_server(port: int) -> Process:
    return Process(
        f"redis-server :{port}",
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        os.environ,
        ready="Ready to accept connections",
    )


def use_broker(url: str) -> None:
    """Points this process's Celery app (the launch view's) at ``url``, dropping pooled connections."""
    app.conf.broker_url = url
    app._pool = None
    app.amqp._producer_pool = None


def test_a_redis_restart_leaves_no_queued_row_without_its_message(run):
    if subprocess.run(["which", "redis-server"], capture_output=True).returncode:
        pytest.skip("no redis-server binary")
    e = run.experiment
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    env = {**run.env, "REDIS_URL": url, "VPO_HEARTBEAT_TIMEOUT_S": "3"}
    old_url = app.conf.broker_url
    server = redis_server(port)
    worker = None
    try:
        with app.connection_for_write(url) as conn:
            train_experiment.apply_async((e.pk,), queue=run.queue, connection=conn)
        r = redis.Redis.from_url(url)
        assert r.llen(f"{prefix}:celery:{run.queue}") == 1  # the layout tasks.reap reads
        server.proc.kill()  # Redis restarts with an empty dataset: the message is gone
        server.proc.wait(10)

        # a launch while Redis is down: an error page within seconds, the row failed with the reason
        use_broker(url)
        client = Client()
        client.force_login(e.owner)
        t0 = time.time()
        page = client.post(reverse("experiments:new"), {"name": "during the outage", **validated_config({})})
        launch_s = time.time() - t0
        assert page.status_code == 503 and b"could not be queued" in page.content
        orphan = Experiment.objects.get(name="during the outage")
        assert orphan.status == "failed" and "could not be queued" in orphan.error
        assert launch_s < 10, f"the launch answered after {launch_s:.1f} s"

        server = redis_server(port)
        assert r.llen(f"{prefix}:celery:{run.queue}") == 0
        assert Experiment.objects.get(pk=e.pk).status == "queued"
        restarted = time.time()
        worker = start_worker(run.queue, "solo", env)
        wait_for(lambda: Experiment.objects.get(pk=e.pk).status != "queued", 120, "the reaper's sweep", worker)
        requeued = time.time()
        ended = finished(e, worker, 300)
    finally:
        use_broker(old_url)
        if worker is not None:
            worker.stop()
        server.stop()
    assert f"experiment {e.pk} was queued but its message was lost" in "".join(worker.lines)
    assert not Experiment.objects.filter(status="queued").exists()
    print(
        f"\nlaunch during the outage answered in {launch_s:.2f} s; the lost run was taken "
        f"{requeued - restarted:.1f} s after the restart (worker start-up included), "
        f"finished {ended - restarted:.1f} s after it"
    )


# --- the jobs with no checkpoint: evaluations, study renders, reward models, guided samplings ------
STOPPED = "the worker running this job stopped"


def test_jobs_whose_worker_is_gone_are_marked_failed_with_the_reason_and_live_ones_are_left(transactional_db):
    """The reaper's sweep on rows as a killed worker leaves them: running with an old heartbeat. Only
    those are failed (a queued study render has no heartbeat yet; a fresh heartbeat is a live job)."""
    from webapp.experiments.jobs import stalled_evaluations
    from webapp.experiments.models import Evaluation
    from webapp.studies.jobs import render, stalled_jobs
    from webapp.studies.models import GuidedSampling, RewardModel, Study

    owner = get_user_model().objects.create_user("alice")
    old, now = timezone.now() - timedelta(minutes=5), timezone.now()
    e = Experiment.objects.create(owner=owner, name="tuned", config={}, status="finished")
    lost_eval = Evaluation.objects.create(experiment=e, checkpoint="step_000001", status="running", heartbeat=old)
    live_eval = Evaluation.objects.create(experiment=e, checkpoint="step_000001", status="running", heartbeat=now)
    lost_study = Study.objects.create(owner=owner, name="lost", prompts="a red ball moving right", heartbeat=old)
    waiting_study = Study.objects.create(owner=owner, name="waiting", prompts="a red ball moving right")
    lost_rm = RewardModel.objects.create(owner=owner, name="lost", status="running", heartbeat=old)
    live_rm = RewardModel.objects.create(owner=owner, name="live", status="running", heartbeat=now)
    lost_guided = GuidedSampling.objects.create(
        owner=owner, reward_model=live_rm, prompt="a red ball moving right", status="running", heartbeat=old
    )

    assert stalled_evaluations() == [lost_eval.pk]
    assert stalled_jobs() == [
        f"study {lost_study.pk}",
        f"reward model {lost_rm.pk}",
        f"guided sampling {lost_guided.pk}",
    ]
    for row in (lost_eval, lost_study, lost_rm, lost_guided):
        row.refresh_from_db()
        assert row.status == "failed" and STOPPED in row.error and "start it again" in row.error, row
    lost_rm.refresh_from_db()
    assert lost_rm.finished is not None
    for row, status in ((live_eval, "running"), (waiting_study, "rendering"), (live_rm, "running")):
        row.refresh_from_db()
        assert (row.status, row.error) == (status, "")
    assert stalled_evaluations() == [] and stalled_jobs() == []  # once only
    render(lost_study.pk)  # its task redelivered hours later (the visibility timeout): nothing happens
    lost_study.refresh_from_db()
    assert lost_study.status == "failed" and not lost_study.clips.exists()


def test_a_study_whose_render_worker_is_killed_is_marked_failed_by_the_next_worker(run):
    """A real worker renders a study's clips and beats; SIGKILL mid-render; a new worker's reaper
    marks the study failed with the reason, within a minute, where before it stayed "rendering"."""
    from webapp.studies.models import Study, System
    from webapp.studies.tasks import render_study

    owner = run.experiment.owner
    study = Study.objects.create(
        owner=owner,
        name="killed mid-render",
        prompts="\n".join(["a red ball moving right", "a blue square falling"] * 8),
    )
    System.objects.create(study=study, label="base")
    System.objects.create(study=study, label="base again")
    render_study.apply_async((study.pk,), queue=run.queue)
    first = start_worker(run.queue, "solo", run.env, name=f"first-{run.queue}@%h")
    try:
        wait_for(lambda: Study.objects.get(pk=study.pk).rendered >= 2, 300, "two clips rendered", first)
        beat = Study.objects.get(pk=study.pk).heartbeat
        wait_for(lambda: Study.objects.get(pk=study.pk).heartbeat != beat, 30, "a heartbeat while rendering", first)
        first.proc.send_signal(signal.SIGKILL)
        killed = time.time()
        first.proc.wait(30)
    finally:
        first.stop()
    assert Study.objects.get(pk=study.pk).status == "rendering"
    second = start_worker(run.queue, "solo", run.env, name=f"second-{run.queue}@%h")
    try:
        wait_for(lambda: Study.objects.get(pk=study.pk).status != "rendering", 60, "the reaper's sweep", second)
        failed = time.time()
    finally:
        second.stop()
    study.refresh_from_db()
    assert study.status == "failed" and STOPPED in study.error, study.error
    assert f"study {study.pk}" in "".join(second.lines)
    print(f"\nkilled mid-render; the study was marked failed {failed - killed:.1f} s later (worker start-up included)")
