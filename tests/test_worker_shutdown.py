"""A Celery worker that shuts down in the middle of a training run (Ctrl+C on ``scripts/run.sh``,
``docker compose stop``) must neither wait hours for the run to end nor fail it: the run stops at
its next step with a checkpoint, is marked paused, goes back to the queue, and the next worker
resumes it. Real worker processes on the real Redis and the test database."""

import os
import signal
import time
import uuid

import pytest
from django.contrib.auth import get_user_model

from tests.conftest import BIN, Process, subprocess_database_url
from webapp.experiments.forms import validated_config
from webapp.experiments.models import Experiment, MetricPoint
from webapp.experiments.tasks import train_experiment

STEPS = 5


def tiny_run(steps: int, checkpoint_every: int) -> dict:
    """The config of a tiny run of a few seconds a step (2-core CPU), without held-out samples."""
    return validated_config(
        {
            "steps": steps,
            "num_candidates": 3,
            "sampling_steps": 6,
            "noise_draws": 1,
            "heldout_every": 0,
            "checkpoint_every": checkpoint_every,
            "prompts": "demo",
        }
    )


def start_worker(queue: str, pool: str, env: dict, name: str = "") -> Process:
    return Process(
        f"celery worker ({pool})",
        [
            str(BIN / "celery"),
            "-A",
            "worker.celery",
            "worker",
            "-Q",
            queue,
            f"--pool={pool}",
            "--concurrency=1",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "info",
            "-n",
            name or f"{queue}-{pool}@%h",
        ],
        env,
        ready="ready.",
    )


def wait_for(condition, timeout: float, what: str, proc: Process) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"{what} within {timeout} s; worker said:\n" + "".join(proc.lines[-40:])
        time.sleep(0.2)


@pytest.mark.parametrize(
    "pool, sig",
    [("solo", signal.SIGINT), ("solo", signal.SIGTERM), ("prefork", signal.SIGTERM)],
    # solo-term: what scripts/run.sh sends its worker on Ctrl-C (it stops each child once, with TERM)
    ids=["solo-ctrl-c", "solo-term", "prefork-term"],
)
def test_a_worker_that_shuts_down_mid_run_pauses_it_and_the_next_worker_finishes_it(
    transactional_db, tmp_path, settings, pool, sig
):
    settings.MEDIA_ROOT = tmp_path
    owner = get_user_model().objects.create_user("alice")
    experiment = Experiment.objects.create(
        owner=owner,
        name="interrupted",
        config=tiny_run(STEPS, checkpoint_every=100),
    )
    env = {
        **os.environ,
        "DATABASE_URL": subprocess_database_url(),
        "MEDIA_ROOT": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
    }
    queue = f"shutdown-{uuid.uuid4().hex[:8]}"  # only this test's workers see its task
    Experiment.objects.filter(pk=experiment.pk).update(queue=queue)  # where a reaper would send it again
    train_experiment.apply_async((experiment.pk,), queue=queue)

    first = start_worker(queue, pool, env)
    try:
        wait_for(
            lambda: MetricPoint.objects.filter(experiment=experiment, step__gte=1).exists(),
            300,
            "the first worker trained a step",
            first,
        )
        first.proc.send_signal(sig)
        t0 = time.time()
        first.proc.wait(120)  # a warm shutdown used to wait for all STEPS (hours for a real run)
        stopped_after = time.time() - t0
    finally:
        first.stop()
    experiment.refresh_from_db()
    log = "".join(first.lines)
    assert "Warm shutdown" in log and "reject requeue=True" in log, log[-3000:]
    # Celery's own exit code: 1 after Ctrl+C (WorkController.start catches KeyboardInterrupt), 0 after TERM
    assert first.proc.returncode == (1 if sig == signal.SIGINT else 0), log[-3000:]
    assert (experiment.status, experiment.error) == ("paused", ""), "".join(first.lines[-40:])
    done = list(MetricPoint.objects.filter(experiment=experiment).values_list("step", flat=True))
    assert done == list(range(1, len(done) + 1)) and len(done) < STEPS, f"stopped after {stopped_after:.1f} s: {done}"
    assert experiment.checkpoints() == [f"step_{done[-1]:06d}"]  # the final checkpoint of the pause

    second = start_worker(queue, "solo", env)  # the task came back to the queue: nobody re-submits it
    try:
        wait_for(
            lambda: Experiment.objects.get(pk=experiment.pk).status not in ("paused", "running"),
            300,
            "the second worker finished the run",
            second,
        )
    finally:
        second.stop()
    experiment.refresh_from_db()
    assert experiment.status == "finished", experiment.error
    steps = list(MetricPoint.objects.filter(experiment=experiment).values_list("step", flat=True))
    assert steps == list(range(1, STEPS + 1)), "resumed where it stopped: no step lost, none run twice"
    assert experiment.checkpoints()[-1] == f"step_{STEPS:06d}"


def test_a_paused_experiment_is_cancelled_at_once(transactional_db):
    owner = get_user_model().objects.create_user("alice")
    experiment = Experiment.objects.create(owner=owner, name="paused", config=validated_config({}), status="paused")
    experiment.request_cancel()
    experiment.refresh_from_db()
    assert (experiment.status, experiment.cancel_requested) == ("cancelled", True)
    assert experiment.finished is not None
