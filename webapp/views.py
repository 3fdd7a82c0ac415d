import redis
from django.conf import settings
from django.db import connection
from django.http import JsonResponse


def healthz(request):
    """200 when the database and Redis answer, 503 naming what does not (compose health checks)."""
    checks = {}
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as e:  # report any driver error: this endpoint exists to say what is down
        checks["database"] = f"error: {e}"
    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2).ping()
        checks["redis"] = "ok"
    except redis.RedisError as e:
        checks["redis"] = f"error: {e}"
    ok = all(v == "ok" for v in checks.values())
    return JsonResponse(
        {"status": "ok" if ok else "error", **checks, "database_vendor": connection.vendor}, status=200 if ok else 503
    )
