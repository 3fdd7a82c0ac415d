"""Fixed-window rate limits in Redis: one round trip per request whatever the number of rules.

Fails open: if Redis does not answer, the request goes through (a vote must never be lost
because the limiter is down) and a warning is logged."""

from __future__ import annotations

import logging
import time
from functools import cache

import redis
from django.conf import settings

log = logging.getLogger(__name__)


@cache
def client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)


def exceeded(rules: list[tuple[str, int, int]]) -> str | None:
    """``rules``: (key, limit, window seconds). Counts this request against every rule; returns the
    key of the first rule now over its limit, or None."""
    now = int(time.time())
    try:
        pipe = client().pipeline(transaction=False)
        for key, _, window in rules:
            bucket = f"{settings.REDIS_PREFIX}:rl:{key}:{now // window}"
            pipe.incr(bucket)
            pipe.expire(bucket, window, nx=True)
        counts = pipe.execute()[::2]
    except redis.RedisError:
        log.warning("rate limiter unavailable; letting the request through", exc_info=True)
        return None
    for (key, limit, _), count in zip(rules, counts):
        if count > limit:
            return key
    return None


def over(rules: list[tuple[str, int, int]]) -> str | None:
    """Like ``exceeded`` without counting this request: the key of the first rule already at its
    limit in the current window, or None (also when Redis is down)."""
    now = int(time.time())
    try:
        counts = client().mget([f"{settings.REDIS_PREFIX}:rl:{key}:{now // window}" for key, _, window in rules])
    except redis.RedisError:
        log.warning("rate limiter unavailable; letting the request through", exc_info=True)
        return None
    for (key, limit, _), count in zip(rules, counts):
        if count is not None and int(count) >= limit:
            return key
    return None


def first_in_window(key: str, seconds: float) -> bool:
    """True for the first call with ``key`` in a window of ``seconds`` (and when Redis is down)."""
    try:
        return bool(client().set(f"{settings.REDIS_PREFIX}:once:{key}", 1, nx=True, px=int(seconds * 1000)))
    except redis.RedisError:
        return True
