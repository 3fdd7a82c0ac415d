"""The Celery app. Tasks (``worker/tasks.py``) stay thin: ids in, re-fetch, call the model's run."""

import functools
import logging
import os

from celery import Celery
from celery.signals import celeryd_init, worker_shutting_down

logger = logging.getLogger(__name__)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
prefix = os.environ.get("VPO_REDIS_PREFIX", "vpo")  # = settings.REDIS_PREFIX; this module imports no Django
LONGEST_RUN_S = int(os.environ.get("VPO_LONGEST_RUN_S", 12 * 3600))

app = Celery("vpo", broker=redis_url, backend=redis_url, include=["worker.tasks"])
app.conf.update(
    task_acks_late=True,  # a worker that dies mid-run leaves the task queued, not lost
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,  # one long task at a time per worker process
    # Redis re-delivers an unacknowledged task after this long: it must outlast the longest run
    broker_transport_options={"visibility_timeout": LONGEST_RUN_S + 3600, "global_keyprefix": f"{prefix}:celery:"},
    result_backend_transport_options={"global_keyprefix": f"{prefix}:celery:"},
    task_default_queue="cpu",
    task_routes={
        name: {"queue": "gpu"}
        for name in ("worker.tasks.train_experiment", "worker.tasks.evaluate_checkpoint", "worker.tasks.render_study")
    }
    | {"worker.tasks.evaluate_checkpoint_vbench": {"queue": "vbench"}},
    task_soft_time_limit=LONGEST_RUN_S,
    task_time_limit=LONGEST_RUN_S + 600,
)


# --- shutting down mid-run -----------------------------------------------------------------------
# A warm shutdown (TERM, the first Ctrl+C, `docker compose stop`) waits for running tasks, and a
# training run can take hours. So the worker marks itself as stopping; a run reads the mark at
# every step, stops there with a checkpoint and goes back to the queue (worker/tasks.py). The mark
# is a Redis key rather than a variable because with the prefork pool the signal reaches the main
# process while the task runs in a child.
def _stopping_key(hostname: str) -> str:
    return f"{prefix}:worker-stopping:{hostname}"


def _redis():
    """A new client: the signal handler may interrupt the task while it holds the shared client's
    connection-pool lock, so it must not take that lock itself."""
    import redis

    return redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)


@functools.cache
def _shared_redis():
    """The client ``worker_stopping`` reuses at every training step (one connection, not one a step)."""
    return _redis()


@celeryd_init.connect
def _forget_an_earlier_stop(sender: str, **_) -> None:
    _redis().delete(_stopping_key(sender))  # a restarted worker of the same name is not stopping


@worker_shutting_down.connect
def _mark_stopping(sender: str, **_) -> None:
    import redis

    try:
        _redis().set(_stopping_key(sender), 1, ex=24 * 3600)
    except redis.RedisError:  # the broker is gone too: the task comes back on its own (acks_late)
        logger.warning("could not mark worker %s as stopping: Redis did not answer", sender)


def worker_stopping(hostname: str) -> bool:
    """Whether the worker called ``hostname`` is shutting down (read by a run at every step)."""
    import redis

    try:
        return bool(_shared_redis().exists(_stopping_key(hostname)))
    except redis.RedisError:  # no answer is no news: the run goes on
        return False
