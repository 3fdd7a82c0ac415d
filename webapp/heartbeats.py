"""Heartbeats for the worker's shorter jobs: evaluations, study renders, reward-model training and
guided sampling. Training runs have their own (``webapp/experiments/jobs.py``: ``Heartbeat``), because
a lost run is queued again and resumes from its checkpoint. These jobs have no checkpoint to resume
from, so a worker killed under one of them (SIGKILL, out of memory, the machine gone) would leave
its row "running" for good: Celery redelivers an unacknowledged task only after the broker's
visibility timeout (hours), and the job functions refuse a row that is no longer queued. While a job
runs, ``Beating`` writes ``heartbeat = now`` on its row every HEARTBEAT_S; the reaper
(``worker/celery.py``) calls ``fail_stalled`` on each kind of job, which marks failed, with a reason
the page shows, every running row whose heartbeat is older than HEARTBEAT_TIMEOUT_S."""

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
    """``with Beating(rows):`` writes ``heartbeat = now`` on ``rows`` (the job's row, filtered to the
    state it is running in) at once and then every HEARTBEAT_S, from its own thread and so its own
    database connection, until the block ends."""

    def __init__(self, rows: QuerySet):
        super().__init__(name=f"heartbeat-{rows.model.__name__}", daemon=True)
        self.rows, self.done = rows, threading.Event()

    def beat(self) -> int:
        return self.rows.update(heartbeat=timezone.now())

    def run(self) -> None:
        try:
            while not self.done.wait(HEARTBEAT_S):
                try:
                    retry_once(self.beat)
                except DatabaseError as e:  # the database is down: the job's own writes will say so
                    log.warning("heartbeat of %s not written: %s", self.rows.model.__name__, e)
        finally:
            connection.close()  # this thread's connection

    def __enter__(self) -> Beating:
        retry_once(self.beat)
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done.set()
        self.join(5)


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
