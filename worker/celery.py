"""The worker process's Celery entry (``celery -A worker.celery worker``): the app configured in
``webapp/celery.py``, the tasks of every Django app's ``tasks.py`` (``autodiscover_tasks``), and
what a worker does when it stops: it marks itself as stopping, so that a training run stops at its
next step with a checkpoint and goes back to the queue instead of making the shutdown wait."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import celeryd_init, worker_shutting_down

from webapp.celery import app, new_redis, stopping_key, worker_stopping

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
