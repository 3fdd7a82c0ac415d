"""Database writes that survive a dropped connection (a PostgreSQL restart, a failover, an
administrator's ``pg_terminate_backend``). A long-lived worker process holds one connection for
hours: when the server drops it, the next query fails once with ``OperationalError`` or
``InterfaceError``. ``retry_once`` then closes the broken connection, so that Django opens a fresh
one (or takes a checked one from the pool), and runs the same function again. The function must be
safe to run twice (an ``update_or_create``, an ``update`` of absolute values, a whole
``transaction.atomic`` block): the first try may or may not have been committed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connection

T = TypeVar("T")
log = logging.getLogger(__name__)


def reconnect() -> None:
    """Drop this thread's connection, broken or not; the next query opens a fresh one."""
    try:
        connection.close()
    except Exception:  # closing a connection the server already dropped may itself fail
        log.debug("closing a dropped database connection failed", exc_info=True)


def retry_once(fn: Callable[[], T]) -> T:
    """``fn()``; if the database connection was lost, ``fn()`` again on a fresh connection. Must be
    called outside any ``transaction.atomic`` block (a broken transaction cannot be retried inside)."""
    try:
        return fn()
    except (OperationalError, InterfaceError) as e:
        log.warning("database connection lost (%s); retrying on a fresh connection", e)
        reconnect()
        return fn()
