"""What the apps share for live pages: announcing an event on the channel layer, and making a value
storable in JSON. Every app's worker jobs write to the database first and then ``push``, so the
database stays the source of truth and a websocket client that misses an event catches up from it."""

from __future__ import annotations

import logging
import math
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)


def push(group: str, event: dict[str, Any]) -> None:
    """Announce an event (at-most-once: the layer drops group messages when full); a failure is
    logged, never raised: the data is already in the database."""
    try:
        async_to_sync(get_channel_layer().group_send)(group, event)
    except Exception:  # Redis down or the layer full: clients catch up from the database
        log.warning("could not push %s to %s", event.get("type"), group, exc_info=True)


def finite_or_none(value: Any) -> float | None:
    """JSON (and PostgreSQL's jsonb) has no NaN: an unavailable value is stored as null, not dropped."""
    value = float(value)
    return value if math.isfinite(value) else None
