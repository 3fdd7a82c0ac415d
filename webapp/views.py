from concurrent.futures import ThreadPoolExecutor, wait

import redis
from django.conf import settings
from django.db import connection
from django.http import JsonResponse

TIMEOUT = 1.5  # seconds: a health check must answer before the orchestrator gives up on it (2 s)
_checks = ThreadPoolExecutor(max_workers=4, thread_name_prefix="healthz")


def database_check() -> str:
    """A fresh connection (not one from the pool, which waits 30 s for a free or new one)."""
    s = connection.settings_dict
    if connection.vendor != "postgresql":
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
        connection.close()  # this thread's own connection
        return "ok"
    import psycopg

    with psycopg.connect(
        host=s["HOST"] or None,
        port=s["PORT"] or None,
        dbname=s["NAME"],
        user=s["USER"] or None,
        password=s["PASSWORD"] or None,
        connect_timeout=2,
    ) as conn:
        conn.execute("SELECT 1")
    return "ok"


def redis_check() -> str:
    redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1).ping()
    return "ok"


def healthz(request):
    """200 when the database and Redis answer, 503 when one does not, within TIMEOUT either way
    (both are checked at once, each in a thread; one still trying then counts as down). What is
    down, and why, only to staff: the error names hosts and ports."""
    futures = {name: _checks.submit(check) for name, check in (("database", database_check), ("redis", redis_check))}
    wait(futures.values(), timeout=TIMEOUT)
    checks = {}
    for name, future in futures.items():
        if not future.done():
            checks[name] = f"error: no answer within {TIMEOUT} s"
        elif future.exception() is not None:
            checks[name] = f"error: {future.exception()}"
        else:
            checks[name] = "ok"
    ok = all(v == "ok" for v in checks.values())
    body = {"status": "ok" if ok else "error"}
    if request.user.is_authenticated and request.user.is_staff:
        body.update(checks, database_vendor=connection.vendor)
    return JsonResponse(body, status=200 if ok else 503)
