"""Heartbeats of the worker's jobs. While a job runs, ``Beating`` writes ``heartbeat = now`` on its
row every HEARTBEAT_S, from a thread of its own. A worker killed under a job (SIGKILL, out of memory,
the machine gone) stops beating; Celery would redeliver its unacknowledged task only after the
broker's visibility timeout (hours). So the reaper (``worker/celery.py``) looks for running rows
whose heartbeat is older than HEARTBEAT_TIMEOUT_S: a training run is queued again and resumes from
its checkpoint (``webapp/experiments/jobs.py``); evaluations, study renders, reward-model training
and guided sampling have no checkpoint to resume from, and ``fail_stalled`` marks them failed with
a reason the page shows (before, they stayed "running" for good)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from django.db import DatabaseError, connection
from django.db.models import QuerySet
from django.utils import timezone

from webapp.db import retry_once
from webapp.experiments.models import HEARTBEAT_S, stale_heartbeat

log = logging.getLogger(__name__)


def stalled_reason(heartbeat) -> str:
    """The error a stalled job's row gets: what happened and what to do."""
    when = timezone.localtime(heartbeat).strftime("%Y-%m-%d %H:%M:%S %Z") if heartbeat else "its start"
    return (
        "WorkerLost: the worker running this job stopped (killed, out of memory, or its machine gone); "
        f"no heartbeat since {when}. Nothing was kept: start it again."
    )


class Beating(threading.Thread):
    """Writes ``heartbeat = now`` on ``rows`` (the job's row, filtered to the state it runs in) every
    HEARTBEAT_S, from its own thread and so its own database connection, until ``stop()``; ``with
    Beating(rows):`` beats at once, then until the block ends. When the row has left that state
    under it (the reaper took it, or it ended), ``lost`` is set and the beating stops."""

    def __init__(self, rows: QuerySet):
        super().__init__(name=f"heartbeat-{rows.model.__name__}", daemon=True)
        self.rows = rows
        self.done, self.lost = threading.Event(), threading.Event()

    def beat(self) -> int:
        return self.rows.update(heartbeat=timezone.now())

    def run(self) -> None:
        try:
            while not self.done.wait(HEARTBEAT_S):
                try:
                    if not retry_once(self.beat) and not self.done.is_set():
                        self.lost.set()
                        return
                except DatabaseError as e:  # the database is down: the job's own writes will say so
                    log.warning("heartbeat of %s not written: %s", self.rows.model.__name__, e)
        finally:
            connection.close()  # this thread's connection

    def stop(self) -> None:
        self.done.set()
        self.join(5)

    def __enter__(self) -> Beating:
        retry_once(self.beat)
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def fail_stalled(running: QuerySet, **failed: Any) -> list[int]:
    """Marks failed (``failed``: the fields to set, the reason added as ``error``) every row of
    ``running`` whose heartbeat is stale, unless it beat meanwhile; returns their ids. ``running``
    must leave out rows that never started (a queued row has no heartbeat yet)."""
    ids = []
    for pk, beat in retry_once(lambda: list(running.filter(stale_heartbeat()).values_list("pk", "heartbeat"))):
        if running.filter(pk=pk, heartbeat=beat).update(**failed, error=stalled_reason(beat)):
            log.warning("%s %s lost its worker: marked failed", running.model.__name__, pk)
            ids.append(pk)
    return ids
