"""The Celery app. Tasks (``worker/tasks.py``) stay thin: ids in, re-fetch, call the model's run."""

import os

from celery import Celery

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
    task_routes={name: {"queue": "gpu"} for name in
                 ("worker.tasks.train_experiment", "worker.tasks.evaluate_checkpoint", "worker.tasks.render_study")},
    task_soft_time_limit=LONGEST_RUN_S,
    task_time_limit=LONGEST_RUN_S + 600,
)
