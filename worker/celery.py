"""The worker process's Celery entry (``celery -A worker.celery worker``): the app configured in
``webapp/celery.py``, the tasks of every Django app's ``tasks.py`` (``autodiscover_tasks``), and
what a worker does when it stops: it marks itself as stopping, so that a training run stops at its
next step with a checkpoint and goes back to the queue instead of making the shutdown wait."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery.signals import celeryd_init, worker_ready, worker_shutting_down

from webapp.celery import advertise, app, new_redis, stopping_key, worker_stopping

__all__ = ["app", "worker_stopping"]

logger = logging.getLogger(__name__)

# the apps whose tasks.py the worker imports (Django's INSTALLED_APPS of ours; listed rather than
# read from settings so that this module needs no configured Django)
app.autodiscover_tasks(["webapp.experiments", "webapp.studies"])


@celeryd_init.connect
def _forget_an_earlier_stop(sender: str, **_: Any) -> None:
    new_redis().delete(stopping_key(sender))  # a restarted worker of the same name is not stopping


@worker_shutting_down.connect
def _mark_stopping(sender: str, **_: Any) -> None:
    import redis

    try:
        new_redis().set(stopping_key(sender), 1, ex=24 * 3600)
    except redis.RedisError:  # the broker is gone too: the task comes back on its own (acks_late)
        logger.warning("could not mark worker %s as stopping: Redis did not answer", sender)


# --- the reaper ----------------------------------------------------------------------------------
# A worker killed outright (SIGKILL, out of memory, the machine gone) cannot put its run back, and
# Redis would redeliver the message only after the visibility timeout (hours). So every worker, at
# start-up and then every VPO_REAPER_INTERVAL_S, requeues the runs whose heartbeat is stale and the
# queued rows whose message Redis lost (webapp/experiments/tasks.py: reap), and marks failed the
# evaluations, study renders, reward-model trainings and guided samplings whose heartbeat is stale
# (webapp/heartbeats.py: they have no checkpoint to resume from).
REAPER_INTERVAL_S = float(os.environ.get("VPO_REAPER_INTERVAL_S", 30))


def _reap_forever(hostname: str, queues: list[str]) -> None:
    from django.db import connection

    from webapp.experiments.jobs import stalled_evaluations
    from webapp.experiments.tasks import reap
    from webapp.studies.jobs import stalled_jobs

    restarted = hostname  # at start-up: runs left "running" by an earlier process of this name
    while True:
        try:  # first what this worker can run (its GPUs), for the web form's check (webapp/celery.py)
            advertise(hostname, queues)
        except Exception:
            logger.exception("could not advertise this worker's GPUs")
        try:
            sent = reap(restarted)
            if sent:
                logger.warning("reaper on %s queued again: experiments %s", hostname, sent)
        except Exception:  # a sweep that fails (database or Redis down) is tried again next time
            logger.exception("reaper sweep failed")
        try:  # the jobs with no checkpoint to resume from: failed, with the reason on their page
            failed = [f"evaluation {pk}" for pk in stalled_evaluations()] + stalled_jobs()
            if failed:
                logger.warning("reaper on %s marked failed (their worker is gone): %s", hostname, ", ".join(failed))
        except Exception:
            logger.exception("reaper sweep of evaluations, renders and reward models failed")
        finally:
            connection.close()
        restarted = ""
        threading.Event().wait(REAPER_INTERVAL_S)


@worker_ready.connect
def _start_reaper(sender: Any, **_: Any) -> None:
    queues = [q.name for q in sender.task_consumer.queues]
    threading.Thread(target=_reap_forever, args=(sender.hostname, queues), name="reaper", daemon=True).start()
