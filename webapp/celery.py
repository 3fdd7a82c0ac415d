"""The Celery app as both sides of the queue must agree on it: broker, key prefix, queues, routes,
acknowledgement and time limits. The web process enqueues through it (each app's ``tasks.py``);
the worker process is started from ``worker/celery.py``, which adds what only a worker does (finding
the tasks, marking itself as stopping on shutdown). This module imports no Django: the worker sets
``DJANGO_SETTINGS_MODULE`` and Celery's Django fix-up calls ``django.setup()``."""

from __future__ import annotations

import functools
import os
from typing import Any

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
prefix = os.environ.get("VPO_REDIS_PREFIX", "vpo")  # = settings.REDIS_PREFIX
LONGEST_RUN_S = int(os.environ.get("VPO_LONGEST_RUN_S", 12 * 3600))

# Task names stay those of the tasks' first home (worker/tasks.py): a task already queued, or a
# paused run put back on the queue, must still find its function after an upgrade.
TRAIN, EVALUATE = "worker.tasks.train_experiment", "worker.tasks.evaluate_checkpoint"
RENDER_STUDY, ANALYSE_FEEDBACK = "worker.tasks.render_study", "worker.tasks.analyse_study_feedback"
EVALUATE_VBENCH = "worker.tasks.evaluate_checkpoint_vbench"
TRAIN_REWARD_MODEL = "webapp.studies.tasks.train_reward_model"
GUIDED_SAMPLE = "webapp.studies.tasks.guided_sample"

app = Celery("vpo", broker=redis_url, backend=redis_url)
app.conf.update(
    task_acks_late=True,  # a worker that dies mid-run leaves the task queued, not lost
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,  # one long task at a time per worker process
    # Redis re-delivers an unacknowledged task after this long: it must outlast the longest run
    # (a run whose worker died is not left to it: the reaper requeues it within VPO_HEARTBEAT_TIMEOUT_S)
    broker_transport_options={
        "visibility_timeout": LONGEST_RUN_S + 3600,
        "global_keyprefix": f"{prefix}:celery:",
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
    },
    # a launch while Redis is down fails within seconds (the row is marked failed, the user told),
    # not after Celery's default retries
    broker_connection_timeout=2,
    task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5},
    result_backend_transport_options={"global_keyprefix": f"{prefix}:celery:"},
    task_default_queue="cpu",
    # the official VBench runs on workers of queue "vbench" (its virtualenv and weights live there)
    task_routes={name: {"queue": "gpu"} for name in (TRAIN, EVALUATE, RENDER_STUDY, TRAIN_REWARD_MODEL, GUIDED_SAMPLE)}
    | {EVALUATE_VBENCH: {"queue": "vbench"}},
    task_soft_time_limit=LONGEST_RUN_S,
    task_time_limit=LONGEST_RUN_S + 600,
)


# --- a worker shutting down mid-run ------------------------------------------------------------
# A warm shutdown (TERM, the first Ctrl+C, `docker compose stop`) waits for running tasks, and a
# training run can take hours. So the worker marks itself as stopping (worker/celery.py); a run
# reads the mark at every step, stops there with a checkpoint and goes back to the queue
# (webapp/experiments/tasks.py). The mark is a Redis key rather than a variable because with the
# prefork pool the signal reaches the main process while the task runs in a child.
def stopping_key(hostname: str) -> str:
    return f"{prefix}:worker-stopping:{hostname}"


def new_redis() -> Any:
    """A new client: the signal handler may interrupt the task while it holds the shared client's
    connection-pool lock, so it must not take that lock itself."""
    import redis

    return redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)


@functools.cache
def _shared_redis() -> Any:
    """The client ``worker_stopping`` reuses at every training step (one connection, not one a step)."""
    return new_redis()


def worker_stopping(hostname: str) -> bool:
    """Whether the worker called ``hostname`` is shutting down (read by a run at every step)."""
    import redis

    try:
        return bool(_shared_redis().exists(stopping_key(hostname)))
    except redis.RedisError:  # no answer is no news: the run goes on
        return False


# --- what a worker can run: how many ranks one training run may have there --------------------------
# Each worker advertises its GPUs in Redis (worker/celery.py, refreshed with every reaper sweep); the
# web form refuses a run with more "GPUs per run" than any live worker of its queue has, and a worker
# given one anyway fails it with the reason. A worker without a GPU runs a run's ranks as CPU
# processes (gloo), up to VPO_CPU_RANKS (default 2: CPU ranks are for trying the distributed path;
# they share the cores, docs/distributed.md).
CAPACITY_TTL_S = 120


def capacity_key(hostname: str) -> str:
    return f"{prefix}:worker-capacity:{hostname}"


def local_gpus() -> int:
    """This host's GPUs, without importing torch (the worker's main process forks its pool):
    ``VPO_WORKER_GPUS`` if set, else the devices ``CUDA_VISIBLE_DEVICES`` names, else ``nvidia-smi -L``."""
    import shutil
    import subprocess

    if os.environ.get("VPO_WORKER_GPUS", "").strip():
        return int(os.environ["VPO_WORKER_GPUS"])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listed.splitlines() if line.startswith("GPU "))


def worker_capacity() -> dict[str, int]:
    """This worker's GPUs and the ranks a run may have on it: one per GPU, else VPO_CPU_RANKS."""
    gpus = local_gpus()
    return {"gpus": gpus, "ranks": gpus or int(os.environ.get("VPO_CPU_RANKS", 2))}


def advertise(hostname: str, queues: list[str]) -> None:
    import json

    value = json.dumps({**worker_capacity(), "queues": queues, "hostname": hostname})
    new_redis().set(capacity_key(hostname), value, ex=CAPACITY_TTL_S)


def capacities() -> list[dict[str, Any]]:
    """What every live worker advertised (it expires CAPACITY_TTL_S after the worker stops)."""
    import json

    r = new_redis()
    found = []
    for key in r.scan_iter(capacity_key("*"), count=1000):
        value = r.get(key)
        if value:
            found.append(json.loads(value))
    return found


def ranks_refused(nproc: int, queue: str, workers: list[dict[str, Any]]) -> str | None:
    """Why a run of ``nproc`` ranks cannot run on any of ``workers`` of ``queue``; None if one can."""
    on_queue = [w for w in workers if queue in w.get("queues", [queue])]
    if any(w["ranks"] >= nproc for w in on_queue):
        return None
    if not on_queue:
        return (
            f"{nproc} GPUs per run needs a worker of queue {queue!r} with that many, and none is "
            "running now to say how many it has (start one, or ask for 1)"
        )
    best = max(on_queue, key=lambda w: w["ranks"])
    has = (
        f"{best['gpus']} GPU(s)" if best["gpus"] else f"no GPU and runs up to {best['ranks']} CPU ranks (VPO_CPU_RANKS)"
    )
    return (
        f"{nproc} GPUs per run is more than any worker of queue {queue!r} has: "
        f"the largest, {best['hostname']}, has {has}"
    )


def queued_task_args(task: str, queues: set[str]) -> set[tuple]:
    """The arguments of every ``task`` message Redis still holds: waiting in one of ``queues`` (any
    priority) or delivered to a worker and not yet acknowledged. A row whose id is in none has lost
    its message (a Redis restart without persistence). Reads the kombu Redis transport's layout:
    a list per queue of JSON messages, and the ``unacked`` hash of ``[message, exchange, key]``."""
    import ast
    import json

    r = new_redis()
    key = f"{prefix}:celery:"
    messages = [m for _, m in r.hscan_iter(key + "unacked")]
    raw = [json.loads(m)[0] for m in messages]
    for q in queues:  # kombu's priority steps 0, 3, 6, 9: queue, queue\x06\x163, ...
        for name in (q, *(f"{q}\x06\x16{p}" for p in (3, 6, 9))):
            raw += [json.loads(m) for m in r.lrange(key + name, 0, -1)]
    found = set()
    for m in raw:
        headers = m.get("headers") or {}
        if headers.get("task") == task:
            found.add(tuple(ast.literal_eval(headers.get("argsrepr") or "()")))
    return found
